"""The Docker engine the builds, the local runs and the tests talk to.

It is the one the client already reaches (``DOCKER_HOST`` or the default socket). When none answers
and we are root (as in CI), a private ``dockerd`` is started from Debian's ``docker.io`` (installed
with apt-get if missing), with host networking only and its socket, data-root, exec-root, pidfile
and log under ``~/.cache/sagemaker-classifier/docker``, outside the repository. Images and
BuildKit's caches live in that data-root, so a second build is fast.

The private engine is shared, and reference-counted: every session using it (:func:`connect` ...
:func:`disconnect`, or :func:`engine_session`) holds a shared lock on its ``users.lock``, which the
kernel releases when the process ends, crashed or not. The last session to leave stops an engine
that a session started; a ``make demo`` during a ``make test`` (or two test sessions) never stops
the engine under the other. An engine started by ``python -m scripts.engine start`` (or by hand)
is pinned: sessions never stop it.

Standard library only: ``make build`` needs no Python environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from scripts import CACHE_DIR
from scripts.engine import apt
from scripts.engine.client import default_installer, find_client
from scripts.engine.errors import EngineUnavailable

ENGINE_DIR = CACHE_DIR / "docker"

ENGINE_START_TIMEOUT_S = 60
ENGINE_STOP_TIMEOUT_S = 30

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

    @property
    def users_lock(self) -> Path:
        """Each session using the engine holds a shared lock on this file."""
        return self.root / "users.lock"

    @property
    def session_marker(self) -> Path:
        """Holds the pid of an engine a session started (and the last session stops); absent: pinned."""
        return self.root / "started-by-session"

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
    started_pid: int | None = None  # the private dockerd's pid, when this session started it
    private: PrivateEngine | None = None  # the private engine's paths, when it is the private one
    lease: int | None = None  # the descriptor holding this session's shared lock on the private engine
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


def read_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def _find_dockerd() -> str:
    dockerd = shutil.which("dockerd") or (
        "/usr/sbin/dockerd" if os.path.exists("/usr/sbin/dockerd") else None
    )
    if dockerd:
        return dockerd
    if apt.can_install():
        apt.install_debian_packages(apt.DOCKER_PACKAGE)
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


def _take_lease(private: PrivateEngine) -> int:
    """A shared lock on the engine's users file, held until :func:`disconnect` (or the process ends)."""
    descriptor = os.open(private.users_lock, os.O_RDONLY | os.O_CREAT, 0o644)  # not inherited by children
    fcntl.flock(descriptor, fcntl.LOCK_SH)
    return descriptor


def engine_in_use(private: PrivateEngine) -> bool:
    """Whether any session (this process's included) holds the private engine."""
    if not private.users_lock.exists():
        return False
    descriptor = os.open(private.users_lock, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # also releases the probe's lock
    return False


def started_by_a_session(private: PrivateEngine) -> bool:
    """Whether the running private engine was started by a session (so the last one stops it)."""
    try:
        marked = int(private.session_marker.read_text().strip())
    except (OSError, ValueError):
        return False
    return marked == read_pid(private.pidfile)


def pin(private: PrivateEngine) -> None:
    """Keeps the private engine running after the sessions using it have ended."""
    private.session_marker.unlink(missing_ok=True)


def connect(private: PrivateEngine | None = None) -> Engine:
    """The engine to use: one that answers already, else the private dockerd (started if need be, as root).

    Using the private engine takes a lease on it; give it back with :func:`disconnect`.
    Raises :class:`EngineUnavailable` with the reason when neither is possible.
    """
    private = private or PrivateEngine()
    docker = find_client(install=default_installer())
    if engine_answers(docker, None):
        return Engine(docker)
    if os.geteuid() != 0:
        raise EngineUnavailable(
            "no Docker engine answers (start one, or set DOCKER_HOST); "
            "a private dockerd is started only when running as root"
        )
    with _start_lock(private):
        if read_pid(private.pidfile) and engine_answers(docker, private.host):
            return Engine(docker, private.host, private=private, lease=_take_lease(private))
        pid = start_private_engine(private, docker)
        private.session_marker.write_text(f"{pid}\n")
        return Engine(docker, private.host, started_pid=pid, private=private, lease=_take_lease(private))


def disconnect(engine: Engine) -> None:
    """Gives back this session's lease on the private engine; the last session out stops an engine a
    session started (never a pinned one, nor any other engine)."""
    if engine.lease is None or engine.private is None:
        return
    private = engine.private
    with _start_lock(private):  # no session can join while the last one decides to stop it
        os.close(engine.lease)
        engine.lease = None
        engine.started_pid = None
        pid = read_pid(private.pidfile)
        if pid is None or not started_by_a_session(private):
            return
        if engine_in_use(private):
            print("[docker-engine] the private dockerd is still used by another session: left running",
                  file=sys.stderr, flush=True)
            return
        print(f"[docker-engine] stopping the private dockerd (pid {pid}): no session uses it any more",
              file=sys.stderr, flush=True)
        stop_private_engine(private, pid)
        private.session_marker.unlink(missing_ok=True)


@contextlib.contextmanager
def engine_session(private: PrivateEngine | None = None) -> Iterator[Engine]:
    """An engine for the duration of a block; the private dockerd is stopped after it if this was the
    last session using it and a session started it."""
    engine = connect(private)
    try:
        yield engine
    finally:
        disconnect(engine)
