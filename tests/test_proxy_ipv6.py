"""nginx's flood guard counts an IPv6 client by its /64, as the app does: proven with real
nginx in a network namespace of the test's own, where the test may add IPv6 addresses."""

import shutil
import subprocess
from pathlib import Path

import pytest

from . import nginx
from .conftest import bake_ok

# Inside the namespace: loopback up, three addresses (two in one /64), nginx in front of a
# stand-in upstream, then one request from each source address, in order.
SCRIPT = """
set -eu
ip link set lo up
for address in 2001:db8:0:7::1 2001:db8:0:7::2 2001:db8:0:8::1; do
    ip -6 addr add "$address/64" dev lo nodad
done
{nginx} -p {workdir} -c {config} -g 'daemon off;' &
trap 'kill $!' EXIT
for _ in $(seq 50); do
    curl -s -o /dev/null "http://[::1]:8080/health/live" && break
    sleep 0.1
done
for source in 2001:db8:0:7::1 2001:db8:0:7::1 2001:db8:0:7::1 2001:db8:0:7::2 2001:db8:0:8::1; do
    printf '%s ' "$(curl -s -o /dev/null -w '%{{http_code}}' --interface "$source" \\
        "http://[2001:db8:0:8::1]:8080/v1/items")"
done
"""


def test_nginx_counts_an_ipv6_client_by_its_64_network(cookies, tmp_path: Path):
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("needs unshare (util-linux) and ip (iproute2) to make a network namespace")
    project = bake_ok(cookies, {})
    values = {
        "NGINX_PORT": "[::]:8080",
        "NGINX_UPSTREAM_SERVERS": "server [::1]:8081;",
        "NGINX_RATE_PER_IP": "1r/m",  # one request, and a burst of two: three admitted
        "NGINX_BURST_PER_IP": "2",
        "NGINX_CONNECTIONS_PER_IP": "50",
    }
    config = nginx.write_config(tmp_path, project, values)
    (tmp_path / "conf.d" / "upstream.conf").write_text(
        'server { listen [::1]:8081; location / { return 200 "ok\\n"; } }\n'
    )
    script = SCRIPT.format(nginx=nginx.nginx_binary(), workdir=tmp_path, config=config)
    done = subprocess.run(
        ["unshare", "--net", "bash", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # Three from one address, then its /64 neighbour is refused, another /64 is not.
    assert done.stdout.split() == ["200", "200", "200", "429", "200"]
