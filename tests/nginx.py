"""Running the generated nginx config for real: rendered as the official image renders it."""

import os
import re
import shutil
import subprocess
from pathlib import Path

TEMPLATE = Path("nginx") / "templates" / "default.conf.template"


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        raise RuntimeError("nginx is not installed: `apt-get install nginx` (.ci/run does)")
    return found


# What the official image defines unless told otherwise: NGINX_LOCAL_RESOLVERS (from
# resolv.conf, with NGINX_ENTRYPOINT_LOCAL_RESOLVERS=1) and compose's empty NGINX_TLS (no HTTPS).
DEFAULTS = {"NGINX_LOCAL_RESOLVERS": "127.0.0.1", "NGINX_TLS": ""}


def render(project: Path, values: dict[str, str]) -> str:
    """envsubst as the nginx image runs it: only ${NAME} of defined variables is replaced."""
    text = (project / TEMPLATE).read_text()
    values = DEFAULTS | values
    return re.sub(r"\$\{(\w+)\}", lambda m: values.get(m[1], m[0]), text)


def write_config(workdir: Path, project: Path, values: dict[str, str]) -> Path:
    """A main nginx.conf around the rendered template, everything under `workdir`."""
    conf_d = workdir / "conf.d"
    conf_d.mkdir(parents=True, exist_ok=True)
    (conf_d / "default.conf").write_text(render(project, values))
    user = "user root;" if os.geteuid() == 0 else ""
    main = workdir / "nginx.conf"
    main.write_text(
        f"""
{user}
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    log_format upstreams '$remote_addr $status "$upstream_addr" $request_uri';
    access_log {workdir}/access.log upstreams;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    include {conf_d}/*.conf;
}}
"""
    )
    return main


def check_config(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [nginx_binary(), "-t", "-p", str(config.parent), "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def start(config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [nginx_binary(), "-p", str(config.parent), "-c", str(config), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
