"""A Docker engine and a Python base image for the builds, the local runs and the tests.

    python -m scripts.docker_engine status   # which engine and client would be used
    python -m scripts.docker_engine start    # start the private engine (when none answers) and leave it up
    python -m scripts.docker_engine stop     # stop the private engine by its pid
    python -m scripts.docker_engine base     # print a Python 3.11 base image, making one offline if needed

The engine is the one the client already reaches (``DOCKER_HOST`` or the default socket). When none
answers and we are root (as in CI), a private ``dockerd`` is started from Debian's ``docker.io``
(installed with apt-get if missing), with host networking only and its socket, data-root,
exec-root, pidfile and log under ``~/.cache/sagemaker-classifier/docker``, outside the repository;
:func:`engine_session` stops it by its pid afterwards. Images and BuildKit's caches live in that
data-root, so a second build is fast.

The base image is the public ``python:3.11-slim-bookworm`` when it is present or can be pulled;
otherwise a Debian bookworm root filesystem with Python 3.11 is made with debootstrap and imported
(the tarball is cached, so this happens once per machine).

Standard library only: ``make build`` needs no Python environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sagemaker-classifier"
ENGINE_DIR = CACHE_DIR / "docker"
BASE_CACHE_DIR = CACHE_DIR / "base"

PUBLIC_BASE_IMAGE = "python:3.11-slim-bookworm"
OFFLINE_BASE_REPOSITORY = "sagemaker-classifier-base"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBIAN_SECURITY_MIRROR = os.environ.get("DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
# What the offline base holds: Debian's Python 3.11 with venv (the Dockerfiles make /opt/venv).
DEBOOTSTRAP_PACKAGES = ("python3", "python3-venv", "ca-certificates")

ENGINE_START_TIMEOUT_S = 60
ENGINE_STOP_TIMEOUT_S = 30


class EngineUnavailable(RuntimeError):
    """No Docker engine answers and none can be started here; the message says why."""


@dataclass(frozen=True)
class PrivateEngine:
    """The paths of the project's own dockerd."""

    root: Path = ENGINE_DIR

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pidfile(self) -> Path:
        return self.root / "docker.pid"

    @property
    def log(self) -> Path:
        return self.root / "dockerd.log"

    def dockerd_command(self, dockerd: str) -> list[str]:
        """Host networking only: no bridge and no iptables rules, so nothing on the host changes."""
        return [
            dockerd,
            "--host",
            self.host,
            "--data-root",
            str(self.root / "data"),
            "--exec-root",
            str(self.root / "exec"),
            "--pidfile",
            str(self.pidfile),
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
        ]


@dataclass
class Engine:
    """A Docker client binary and the engine it talks to; ``started_pid`` when we started it."""

    docker: str
    host: str | None = None
    started_pid: int | None = None
    private: PrivateEngine | None = None  # the private engine's paths, when we started it
    env: dict[str, str] = field(init=False)  # the client's environment, read when the Engine is made

    def __post_init__(self) -> None:
        self.env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        if self.host:
            self.env["DOCKER_HOST"] = self.host

    def command(self, *args: str) -> list[str]:
        return [self.docker, *args]

    def run(
        self, *args: str, check: bool = True, capture: bool = True, timeout: float | None = None, **kwargs
    ) -> subprocess.CompletedProcess:
        """``docker ARGS`` against this engine (output captured as text unless ``capture=False``)."""
        return subprocess.run(
            self.command(*args),
            env=self.env,
            check=check,
            text=True,
            timeout=timeout,
            capture_output=capture,
            **kwargs,
        )

    def image_exists(self, image: str) -> bool:
        return self.run("image", "inspect", image, check=False).returncode == 0


# ---------------------------------------------------------------- the client


def parse_client_version(text: str) -> tuple[int, int]:
    """``Docker version 20.10.24+dfsg1, build 297e128`` -> ``(20, 10)``."""
    match = re.search(r"version (\d+)\.(\d+)", text)
    if not match:
        raise ValueError(f"cannot read a Docker client version from {text!r}")
    return int(match.group(1)), int(match.group(2))


def has_builtin_buildkit(version: tuple[int, int]) -> bool:
    """Clients 18.09 to 22.x carry BuildKit; 23+ need the buildx plugin for it."""
    return (18, 9) <= version < (23, 0)


def _client_has_buildkit(docker: str) -> bool:
    try:
        if subprocess.run([docker, "buildx", "version"], capture_output=True, timeout=30).returncode == 0:
            return True
        out = subprocess.run([docker, "--version"], capture_output=True, text=True, timeout=30).stdout
        return has_builtin_buildkit(parse_client_version(out))
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return False


def find_client() -> str:
    """A Docker client that can build with BuildKit (``$DOCKER``, then ``docker`` on PATH, then Debian's).

    BuildKit is needed for ``RUN --mount`` (the pip CA secret, the pip cache, the wheelhouse).
    """
    if os.environ.get("DOCKER"):
        if not os.access(os.environ["DOCKER"], os.X_OK):
            raise EngineUnavailable(f"DOCKER={os.environ['DOCKER']} is not an executable Docker client")
        return os.environ["DOCKER"]
    candidates = [
        path for path in (shutil.which("docker"), "/usr/bin/docker") if path and os.path.exists(path)
    ]
    for docker in dict.fromkeys(candidates):
        if _client_has_buildkit(docker):
            return docker
    if candidates:
        raise EngineUnavailable(
            f"no Docker client with BuildKit among {candidates}: install the buildx plugin, "
            "or Debian's docker.io (its 20.10 client has BuildKit built in), or set DOCKER=/path/to/docker"
        )
    raise EngineUnavailable("no Docker client found (install docker, or Debian's docker.io)")


# ---------------------------------------------------------------- the engine


def engine_answers(docker: str, host: str | None) -> bool:
    env = {**os.environ, **({"DOCKER_HOST": host} if host else {})}
    try:
        result = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"], env=env, capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def install_debian_packages(*packages: str) -> None:
    """apt-get install, as root; used only where the engine or debootstrap is missing."""
    print(f"[docker-engine] installing {' '.join(packages)} with apt-get", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], check=True, env=env
    )


def _find_dockerd() -> str:
    dockerd = shutil.which("dockerd") or (
        "/usr/sbin/dockerd" if os.path.exists("/usr/sbin/dockerd") else None
    )
    if dockerd:
        return dockerd
    if shutil.which("apt-get"):
        install_debian_packages("docker.io")
        if shutil.which("dockerd"):
            return shutil.which("dockerd")
    raise EngineUnavailable(
        "no Docker engine answers and dockerd is not installed (apt-get install docker.io)"
    )


def start_private_engine(private: PrivateEngine, docker: str) -> int:
    """Starts our dockerd in the background and waits until it answers; returns its pid."""
    dockerd = _find_dockerd()
    private.root.mkdir(parents=True, exist_ok=True)
    print(
        f"[docker-engine] starting a private dockerd on {private.host} (log: {private.log})",
        file=sys.stderr,
        flush=True,
    )
    with open(private.log, "ab") as log:
        process = subprocess.Popen(
            private.dockerd_command(dockerd),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = private.log.read_text(errors="replace").splitlines()[-15:]
            raise EngineUnavailable("dockerd exited at start:\n" + "\n".join(tail))
        if engine_answers(docker, private.host):
            return process.pid
        time.sleep(0.5)
    stop_pid(process.pid)
    raise EngineUnavailable(f"dockerd did not answer within {ENGINE_START_TIMEOUT_S}s; see {private.log}")


def stop_pid(pid: int, timeout: float = ENGINE_STOP_TIMEOUT_S) -> None:
    """SIGTERM, wait, then SIGKILL: dockerd stops its containers and containerd on SIGTERM."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        if not _pid_alive(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def mounts_under(proc_mounts: str, root: Path) -> list[str]:
    """The mount points below ``root`` in a /proc/mounts listing, deepest last."""
    prefix = f"{root}/"
    return [
        fields[1]
        for line in proc_mounts.splitlines()
        if len(fields := line.split()) > 1 and fields[1].startswith(prefix)
    ]


def stop_private_engine(private: PrivateEngine, pid: int) -> None:
    """Stops our dockerd and removes what it leaves mounted (its default network namespace)."""
    stop_pid(pid)
    for mount in reversed(mounts_under(Path("/proc/mounts").read_text(), private.root)):
        subprocess.run(["umount", mount], check=False, capture_output=True)


@contextlib.contextmanager
def _start_lock(private: PrivateEngine) -> Iterator[None]:
    """Two processes starting the private engine at once would share one data-root: serialise."""
    private.root.mkdir(parents=True, exist_ok=True)
    with open(private.root / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def connect(private: PrivateEngine | None = None) -> Engine:
    """The engine to use: one that answers already, else a private dockerd we start (root only).

    Raises :class:`EngineUnavailable` with the reason when neither is possible.
    """
    private = private or PrivateEngine()
    docker = find_client()
    if engine_answers(docker, None):
        return Engine(docker)
    if os.geteuid() != 0:
        raise EngineUnavailable(
            "no Docker engine answers (start one, or set DOCKER_HOST); "
            "a private dockerd is started only when running as root"
        )
    with _start_lock(private):
        if _read_pid(private.pidfile) and engine_answers(docker, private.host):
            return Engine(docker, private.host)
        pid = start_private_engine(private, docker)
    return Engine(docker, private.host, started_pid=pid, private=private)


def disconnect(engine: Engine) -> None:
    """Stops the private dockerd if this process started it; leaves any other engine alone."""
    if engine.started_pid is not None:
        print(
            f"[docker-engine] stopping the private dockerd (pid {engine.started_pid})",
            file=sys.stderr,
            flush=True,
        )
        stop_private_engine(engine.private or PrivateEngine(), engine.started_pid)
        engine.started_pid = None


@contextlib.contextmanager
def engine_session() -> Iterator[Engine]:
    """An engine for the duration of a block; a private dockerd started here is stopped after it."""
    engine = connect()
    try:
        yield engine
    finally:
        disconnect(engine)


# ---------------------------------------------------------------- the base image


def debootstrap_command(rootfs: Path, suite: str = DEBIAN_SUITE, mirror: str = DEBIAN_MIRROR) -> list[str]:
    return [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(DEBOOTSTRAP_PACKAGES)}",
        suite,
        str(rootfs),
        mirror,
    ]


def apt_sources(suite: str = DEBIAN_SUITE) -> str:
    """The offline base's sources.list: like the public image's, with updates and security fixes."""
    return (
        f"deb {DEBIAN_MIRROR} {suite} main\n"
        f"deb {DEBIAN_MIRROR} {suite}-updates main\n"
        f"deb {DEBIAN_SECURITY_MIRROR} {suite}-security main\n"
    )


def offline_base_image() -> str:
    """``sagemaker-classifier-base:python3.11-bookworm-<recipe hash>``: a changed recipe is a new image."""
    recipe = json.dumps([debootstrap_command(Path("ROOTFS")), apt_sources(), import_changes()])
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    return f"{OFFLINE_BASE_REPOSITORY}:python3.11-{DEBIAN_SUITE}-{digest}"


def import_changes() -> list[str]:
    """``docker import --change`` options that make the rootfs behave like the public slim image."""
    changes = [
        "ENV LANG=C.UTF-8",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        'CMD ["python3"]',
    ]
    return [option for change in changes for option in ("--change", change)]


def _make_base_tarball(tarball: Path) -> None:
    """debootstrap a minimal bookworm with Python 3.11, trim it and tar it to ``tarball``."""
    if not shutil.which("debootstrap"):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise EngineUnavailable(f"cannot pull {PUBLIC_BASE_IMAGE} and debootstrap is not installed")
        install_debian_packages("debootstrap")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tarball.parent) as scratch:
        rootfs = Path(scratch) / "rootfs"
        print(
            f"[docker-engine] debootstrap {DEBIAN_SUITE} with Python 3.11 (about a minute, once)",
            file=sys.stderr,
            flush=True,
        )
        subprocess.run(debootstrap_command(rootfs), check=True, stdout=subprocess.DEVNULL)
        (rootfs / "etc" / "apt" / "sources.list").write_text(apt_sources())
        for trimmed in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            for child in (rootfs / trimmed).glob("*"):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                elif child.name != "lock":
                    child.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."], check=True)
        partial.rename(tarball)


def _try_pull(engine: Engine, image: str) -> bool:
    try:
        return engine.run("pull", "--quiet", image, check=False, timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def ensure_base_image(engine: Engine, requested: str | None = None) -> str:
    """The base image to build on: ``requested`` if given, else the public slim one, else our own."""
    if requested:
        return requested
    if engine.image_exists(PUBLIC_BASE_IMAGE) or _try_pull(engine, PUBLIC_BASE_IMAGE):
        return PUBLIC_BASE_IMAGE
    image = offline_base_image()
    if engine.image_exists(image):
        return image
    print(
        f"[docker-engine] {PUBLIC_BASE_IMAGE} cannot be pulled: making {image} offline",
        file=sys.stderr,
        flush=True,
    )
    tarball = BASE_CACHE_DIR / f"{image.split(':', 1)[1]}.tar"
    if not tarball.is_file():
        _make_base_tarball(tarball)
    with open(tarball, "rb") as stream:
        subprocess.run(
            engine.command("import", *import_changes(), "-", image),
            stdin=stream,
            env=engine.env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return image


# ---------------------------------------------------------------- command line


def main(argv: list[str]) -> None:
    private = PrivateEngine()
    try:
        match argv:
            case ["status"]:
                docker = find_client()
                if engine_answers(docker, None):
                    where = os.environ.get("DOCKER_HOST", "the default engine")
                elif _read_pid(private.pidfile) and engine_answers(docker, private.host):
                    where = f"the private engine at {private.host} (pid {_read_pid(private.pidfile)})"
                else:
                    where = "none answers"
                print(json.dumps({"client": docker, "engine": where}))
            case ["start"]:
                engine = connect(private)
                print(f"DOCKER={engine.docker}")
                print(f"DOCKER_HOST={engine.host or os.environ.get('DOCKER_HOST', '')}")
            case ["stop"]:
                pid = _read_pid(private.pidfile)
                if pid is None:
                    print("the private engine is not running", file=sys.stderr)
                else:
                    stop_private_engine(private, pid)
                    print(f"stopped the private engine (pid {pid})", file=sys.stderr)
            case ["base"]:
                with engine_session() as engine:
                    print(ensure_base_image(engine, os.environ.get("BASE_IMAGE") or None))
            case _:
                sys.exit("usage: python -m scripts.docker_engine status | start | stop | base")
    except EngineUnavailable as error:
        sys.exit(f"docker engine: {error}")


if __name__ == "__main__":
    main(sys.argv[1:])
