"""Building and running the generated image with Debian's podman, on a machine without Docker Hub.

The Dockerfile's two bases are stood in for, under the names its FROM lines give:
- `python:3.11-slim-bookworm`: Debian bookworm (debootstrap, minbase) with Debian's Python 3.11,
  made once and cached under ~/.cache/ratelimit-template/ (the slow part: about two minutes);
- `ghcr.io/astral-sh/uv:<version>`: an image FROM scratch holding the `uv` binary taken from the
  uv wheel of that version on the package index (the official image holds the same binary).
The build reaches the package index with this machine's CA bundle, mounted into the build (the
stand-in base points SSL_CERT_FILE at it): the Dockerfile is built as it is.
"""

import fcntl
import os
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import pytest

# crun, podman's default, fails on this machine kind's cgroup setup; runc works.
RUNTIME = "/usr/sbin/runc"


def _ulimit(name: str, resource_id: int, wanted: int) -> list[str]:
    """Explicit, since podman's defaults for these exceed what this session may grant."""
    hard = resource.getrlimit(resource_id)[1]
    value = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    return ["--ulimit", f"{name}={value}:{value}"]


ULIMITS = _ulimit("nofile", resource.RLIMIT_NOFILE, 65536) + _ulimit(
    "nproc", resource.RLIMIT_NPROC, 4096
)
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ratelimit-template"
# The packages the stand-in base adds to minbase: Python, and `python` as the official image has it.
BASE_PACKAGES = "python3.11,python-is-python3"


def podman(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["podman", "--runtime", RUNTIME, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {done.stderr.strip()[-2000:]}")
    return done


def require_podman() -> None:
    """Fail in one line naming what is missing when podman cannot run a container here."""
    missing = [
        name
        for name, found in [
            ("podman", shutil.which("podman")),
            ("runc", Path(RUNTIME).exists()),
            ("debootstrap", shutil.which("debootstrap")),
        ]
        if not found
    ]
    if missing:
        pytest.fail(
            f"the image tests need {', '.join(missing)}: "
            f"`apt-get install --no-install-recommends {' '.join(missing)}` (.ci/run does)",
            pytrace=False,
        )
    probe = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", timeout=60, check=False)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.fail(f"podman cannot run here (user namespaces, storage?): {last}", pytrace=False)


def dockerfile_bases(dockerfile: Path) -> list[str]:
    """The images the Dockerfile's FROM lines name (stage names left out)."""
    stages: set[str] = set()
    bases = []
    for line in dockerfile.read_text().splitlines():
        found = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if found:
            if found[1] not in stages and found[1] not in bases:
                bases.append(found[1])
            if found[2]:
                stages.add(found[2])
    return bases


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def debian_mirror() -> str:
    """This machine's Debian mirror, from apt's sources (deb822 or one-line form)."""
    sources = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
    for source in sources:
        if not source.is_file() or source.suffix not in {".list", ".sources", ""}:
            continue
        for url in re.findall(r"(https?://\S+/debian)/?(?:\s|$)", source.read_text()):
            return url
    return "http://deb.debian.org/debian"


def make_base_tarball(tarball: Path) -> None:
    """Debian bookworm (minbase) with Python 3.11 as a root filesystem tarball, apt's caches
    left out; written under a temporary name first, so an interrupted run leaves no tarball."""
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=tarball.parent) as rootfs:
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}",
             "bookworm", rootfs, debian_mirror()],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert done.returncode == 0, f"debootstrap: {done.stdout[-1500:]}{done.stderr[-1500:]}"
        for cache in ["var/cache/apt/archives", "var/lib/apt/lists"]:
            for path in Path(rootfs, cache).glob("*"):
                if path.is_file():
                    path.unlink()
        partial = tarball.with_suffix(f".partial-{os.getpid()}")
        with tarfile.open(partial, "w") as tar:
            tar.add(rootfs, arcname=".")
        partial.rename(tarball)


def ensure_python_base(name: str) -> None:
    """`python:3.11-slim-bookworm` made from Debian packages: imported from the cached tarball, or
    debootstrapped first (bookworm's Python is 3.11: other versions cannot be stood in for)."""
    if image_exists(name):
        return
    version = re.fullmatch(r"python:(\d+\.\d+)-slim-bookworm", name)
    if version is None or version[1] != "3.11":
        pytest.fail(f"no stand-in for {name}: Debian bookworm has Python 3.11", pytrace=False)
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"base-{name.replace(':', '-')}.tar"
    # One maker at a time across test runs (two runs on one machine share the cache): the
    # second waits for the first's tarball instead of racing it.
    with open(tarball.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tarball.exists():
            make_base_tarball(tarball)
    podman(
        "import",
        "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change", "ENV LANG=C.UTF-8",
        # Only the build uses it: the test mounts this machine's CA bundle there.
        "--change", f"ENV SSL_CERT_FILE={CA_BUNDLE}",
        "--change", 'CMD ["python3"]',
        str(tarball), name,
        timeout=600,
    )  # fmt: skip


def ensure_uv_image(name: str, workdir: Path) -> None:
    """`ghcr.io/astral-sh/uv:<version>`: the binary of the uv wheel of that version."""
    if image_exists(name):
        return
    version = name.rpartition(":")[2]
    wheels = workdir / "uv-wheel"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         f"uv=={version}", "-d", str(wheels)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, f"pip download uv=={version}: {done.stderr[-1500:]}"
    (wheel,) = wheels.glob("uv-*.whl")
    context = workdir / "uv-image"
    context.mkdir()
    with zipfile.ZipFile(wheel) as archive:
        (member,) = [m for m in archive.namelist() if m.endswith(".data/scripts/uv")]
        (context / "uv").write_bytes(archive.read(member))
    (context / "uv").chmod(0o755)
    (context / "Dockerfile").write_text("FROM scratch\nCOPY uv /uv\n")
    podman("build", "-t", name, str(context), timeout=300)


def ensure_bases(dockerfile: Path, workdir: Path) -> None:
    for base in dockerfile_bases(dockerfile):
        if base.startswith("ghcr.io/astral-sh/uv:"):
            ensure_uv_image(base, workdir)
        else:
            ensure_python_base(base)


def build(project: Path, tag: str) -> tuple[float, str]:
    """Build the project's Dockerfile as it is; the seconds it took and podman's output."""
    started = time.monotonic()
    done = podman(
        "build", "--format", "docker", "--network", "host", *ULIMITS,
        "--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro",
        "-t", tag, str(project),
        timeout=900,
    )  # fmt: skip
    return time.monotonic() - started, done.stdout + done.stderr


def run_detached(image: str, name: str, env: dict[str, str], *args: str) -> None:
    """A container on the host's network (the host's Redis and Postgres on loopback)."""
    environment = [item for key, value in env.items() for item in ("-e", f"{key}={value}")]
    podman(
        "run", "-d", "--name", name, "--network", "host", *ULIMITS, *environment, *args, image,
        timeout=120,
    )  # fmt: skip


def run_once(image: str, env: dict[str, str], *command: str) -> subprocess.CompletedProcess:
    environment = [item for key, value in env.items() for item in ("-e", f"{key}={value}")]
    return podman(
        "run", "--rm", "--network", "host", *ULIMITS, *environment, image, *command,
        timeout=300, check=False,
    )  # fmt: skip


def remove(*names: str) -> None:
    for name in names:
        podman("rm", "-f", "-t", "0", name, timeout=60, check=False)


def dangling_images() -> set[str]:
    """Untagged images: the build's intermediate layers, kept as its cache."""
    listed = podman("images", "-q", "--no-trunc", "--filter", "dangling=true", check=False)
    return set(listed.stdout.split())


def remove_images(ids: set[str]) -> None:
    """Remove these images, children before parents (a parent refuses while it has any)."""
    left = set(ids)
    while left:
        removed = {i for i in left if podman("rmi", i, timeout=60, check=False).returncode == 0}
        if not removed:
            return
        left -= removed
