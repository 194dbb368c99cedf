"""A Docker engine for the deploy tier, and the local images the compose stack needs without a registry.

``Engine`` uses a running engine if there is one; otherwise, as root on Debian, it installs Debian's
``docker.io``/``docker-compose``/``debootstrap``, starts ``dockerd`` and, when done, stops it and puts
the host's network back as it found it (iptables rules, ip_forward, bridges and veths).
``make_base_images`` builds the test-only base images from a debootstrap'd Debian (tests/deploy/stack);
``build_app_images`` builds the real docker/Dockerfile.api and Dockerfile.cpu-worker on them.

Debian's client (/usr/bin/docker) is called explicitly: another ``docker`` on PATH may be newer than the
daemon and lack buildx, and BuildKit (secret mounts) is needed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

STACK = Path(__file__).resolve().parent / "stack"
PACKAGES = {"dockerd": "docker.io", "docker-compose": "docker-compose", "debootstrap": "debootstrap"}
DEBIAN_IMAGE = "voxbatch-test/debian:bookworm"
PYTHON_IMAGE = "voxbatch-test/python:3.11"
BASES = {
    # tag: (Dockerfile under tests/deploy/stack, needs pip)
    PYTHON_IMAGE: ("Dockerfile.python", False),
    "voxbatch-test/redis:local": ("Dockerfile.redis", False),
    "voxbatch-test/postgres:local": ("Dockerfile.postgres", False),
    "voxbatch-test/s3:local": ("Dockerfile.s3", True),
}
APP_IMAGES = {
    "voxbatch-api:latest": "docker/Dockerfile.api",
    "voxbatch-cpu-worker:latest": "docker/Dockerfile.cpu-worker",
}
NAT_TABLES = ("filter", "nat")
LOCK = Path(tempfile.gettempdir()) / "voxbatch-deploy-test.lock"
LOCK_WAIT_S = 1800.0
BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}


def docker_cli() -> str:
    if Path("/usr/bin/docker").exists():
        return "/usr/bin/docker"
    found = shutil.which("docker")
    return found or "/usr/bin/docker"


def compose_cli() -> list[str]:
    found = shutil.which("docker-compose")
    return [found] if found else [docker_cli(), "compose"]


def docker(
    *args: str, check: bool = True, timeout: float = 900, input: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    done = subprocess.run(
        [docker_cli(), *args],
        capture_output=True,
        text=input is None,
        input=input,
        timeout=timeout,
        env=env,
        check=False,
    )
    if check and done.returncode != 0:
        err = done.stderr if isinstance(done.stderr, str) else done.stderr.decode(errors="replace")
        raise AssertionError(f"docker {' '.join(args[:3])} … failed ({done.returncode}):\n{err[-3000:]}")
    return done  # type: ignore[return-value]


def engine_answers() -> bool:
    if not Path(docker_cli()).exists():
        return False
    try:
        return docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def host_ca_bundle() -> Path | None:
    """The CA bundle this host's pip trusts (passed to builds as a secret, never copied)."""
    for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(name)
        if value and Path(value).is_file():
            return Path(value)
    default = Path("/etc/ssl/certs/ca-certificates.crt")
    return default if default.is_file() else None


def debian_mirror() -> str:
    """The Debian mirror apt uses for bookworm (not the security archive), from sources.list*."""
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.is_file():
            texts.append(path.read_text(errors="replace"))
    for text in texts:
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.findall(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.findall(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and "bookworm" in suites[0].split() and "security" not in uris[0]:
                return uris[0]
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "bookworm" in parts[2:3]:
                url = next((p for p in parts[1:] if "://" in p), "")
                if url and "security" not in url:
                    return url
    return "http://deb.debian.org/debian"


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


class Engine:
    """A usable engine for the duration of a ``with`` block; started (and undone) only if needed."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.saved_rules: dict[str, str] = {}
        self.saved_forward: str | None = None
        self.saved_links: set[str] = set()

    def __enter__(self) -> Engine:
        self._lock()
        if shutil.which("debootstrap") is None or shutil.which("docker-compose") is None:
            self._install(["debootstrap", "docker-compose"])
        if engine_answers():
            return self
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("no Docker engine answers, and this machine cannot install one (needs root and apt)")
        self._install([pkg for exe, pkg in PACKAGES.items() if shutil.which(exe) is None] + ["iptables"])
        self._save_network()
        log = (self.workdir / "dockerd.log").open("wb")
        self.proc = subprocess.Popen(
            ["dockerd", "--pidfile", str(self.workdir / "dockerd.pid")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started = True
        deadline = time.monotonic() + 90
        while not engine_answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._stop()
                tail = (self.workdir / "dockerd.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"dockerd did not start:\n{tail}")
            time.sleep(0.5)
        return self

    def _lock(self) -> None:
        """One deploy run per machine at a time: they share the engine, the project name and the ports."""
        import fcntl

        self.lock_file = LOCK.open("a")
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.lock_file.close()
                    pytest.skip(f"another deploy test held {LOCK} for {LOCK_WAIT_S:.0f} s")
                time.sleep(2)

    def __exit__(self, *exc: object) -> None:
        try:
            self._stop()
        finally:
            self.lock_file.close()  # releases the lock

    def _stop(self) -> None:
        if not self.started or self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # containerd, if dockerd started its own, goes with dockerd's process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        self._restore_network()
        self.started = False

    @staticmethod
    def _install(packages: Sequence[str]) -> None:
        packages = [p for p in packages if p]
        if not packages or os.geteuid() != 0 or shutil.which("apt-get") is None:
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            env=env,
            check=True,
            capture_output=True,
            timeout=900,
        )

    def _save_network(self) -> None:
        for table in NAT_TABLES:
            done = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, check=False)
            if done.returncode == 0:
                self.saved_rules[table] = done.stdout
        forward = Path("/proc/sys/net/ipv4/ip_forward")
        self.saved_forward = forward.read_text().strip() if forward.exists() else None
        self.saved_links = _links()

    def _restore_network(self) -> None:
        for link in sorted(_links() - self.saved_links):
            if link == "docker0" or link.startswith(("br-", "veth")):
                subprocess.run(["ip", "link", "delete", link], capture_output=True, check=False)
        for table in NAT_TABLES:
            saved = self.saved_rules.get(table)
            if saved and "*" + table in saved:
                subprocess.run(["iptables-restore", "-T", table], input=saved, text=True, check=False)
            else:  # the table had no rules: empty it again, built-in chains back to ACCEPT
                subprocess.run(["iptables", "-t", table, "-F"], capture_output=True, check=False)
                subprocess.run(["iptables", "-t", table, "-X"], capture_output=True, check=False)
                for chain in BUILTIN_CHAINS[table]:
                    subprocess.run(["iptables", "-t", table, "-P", chain, "ACCEPT"], capture_output=True)
        if self.saved_forward is not None:
            with contextlib.suppress(OSError):
                Path("/proc/sys/net/ipv4/ip_forward").write_text(self.saved_forward + "\n")

    def network_restored(self) -> list[str]:
        """What differs from before the engine started (empty when all is back, or not ours)."""
        problems: list[str] = []
        if self.proc is None:
            return problems
        extra = {n for n in _links() - self.saved_links if n == "docker0" or n.startswith(("br-", "veth"))}
        if extra:
            problems.append(f"links left: {sorted(extra)}")
        for table in NAT_TABLES:
            before = self.saved_rules.get(table, "")
            now = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True).stdout
            for mark in ("DOCKER", "docker0", ":FORWARD DROP"):
                if mark in now and mark not in before:
                    problems.append(f"{mark} left in iptables {table}")
        return problems


def build(tag: str, dockerfile: Path, context: Path, args: dict[str, str], secret: bool) -> None:
    cmd = ["build", "-q", "-t", tag, "-f", str(dockerfile)]
    for name, value in args.items():
        cmd += ["--build-arg", f"{name}={value}"]
    ca = host_ca_bundle()
    if secret and ca is not None:
        cmd += ["--secret", f"id=pip_ca,src={ca}"]
    docker(*cmd, str(context), timeout=1200)


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False, timeout=30).returncode == 0


def make_debian_image() -> None:
    if image_exists(DEBIAN_IMAGE):
        return
    with tempfile.TemporaryDirectory(prefix="voxbatch-debootstrap-", dir="/var/tmp") as tmp:
        root = Path(tmp) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(root), debian_mirror()],
            check=True,
            capture_output=True,
            timeout=900,
        )
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (root / junk).glob("*"):
                if item.is_file():
                    item.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        imported = subprocess.run(
            [docker_cli(), "import", "-", DEBIAN_IMAGE], stdin=tar.stdout, capture_output=True, check=False
        )
        tar.stdout.close()
        tar.wait()
        assert imported.returncode == 0, imported.stderr


def make_base_images() -> None:
    make_debian_image()
    for tag, (dockerfile, needs_pip) in BASES.items():
        build(tag, STACK / dockerfile, STACK, {}, secret=needs_pip)


def build_app_images(source: Path) -> None:
    for tag, dockerfile in APP_IMAGES.items():
        build(tag, source / dockerfile, source, {"PYTHON_IMAGE": PYTHON_IMAGE}, secret=True)


def image_size_mb(tag: str) -> float:
    return int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout.strip()) / 1e6


def exported_files(tag: str) -> Iterator[tuple[str, bytes]]:
    """(path, content) of every small regular file in the image's filesystem."""
    import tarfile

    cid = docker("create", tag).stdout.strip()
    try:
        proc = subprocess.Popen([docker_cli(), "export", cid], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if member.isfile() and member.size <= 4_000_000:
                    handle = tar.extractfile(member)
                    if handle is not None:
                        yield member.name, handle.read()
        proc.wait()
    finally:
        docker("rm", "-f", cid, check=False)
