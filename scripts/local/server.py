"""The serving stack on this machine, as a child process: started, watched through ``/ping``, stopped.

``LocalServer`` runs ``code/serve.py serve`` (or ``make serve-local``) in ``.venv/serve`` on a
free loopback port, in a session of its own, its output in a log file; ``stop()`` sends SIGTERM
as ``docker stop`` would and waits for every process of it, the model server included. The tests
and the serving benchmark use it. Standard library and psutil only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil

from scripts import REPO_ROOT

CODE_DIR = REPO_ROOT / "code"
SERVE_PYTHON = REPO_ROOT / ".venv" / "serve" / "bin" / "python"
HEALTHY_TIMEOUT_S = 300.0  # workers importing torch on a busy 2-core machine


def _is_mms_backend(process: psutil.Process) -> bool:
    """Whether the process runs MMS's Python backend (its worker parent, or a worker it forked)."""
    try:
        return any("model_service_worker" in part for part in process.cmdline())
    except psutil.Error:
        return False


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    """One running server; ``stop()`` it and read its exit status."""

    def __init__(self, model_dir: Path, log_path: Path, env: Mapping[str, str] | None = None,
                 via_make: bool = False):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path)
        self.leftovers: list[psutil.Process] = []
        environ = {**os.environ, **(env or {})}
        if via_make:  # the target's own default address (127.0.0.1)
            command = ["make", "-s", "serve-local", f"MODEL={model_dir}", f"PORT={self.port}"]
        else:
            environ.setdefault("SERVE_BIND_HOST", "127.0.0.1")
            environ["SAGEMAKER_BIND_TO_PORT"] = str(self.port)
            command = [str(SERVE_PYTHON), str(CODE_DIR / "serve.py"), "serve", "--model-dir", str(model_dir)]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed by stop())
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=environ, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ping(self) -> tuple[int, dict] | None:
        """(status, body) of ``/ping``, or None while nothing listens."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", "/ping")
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        except (OSError, http.client.HTTPException):
            return None
        finally:
            connection.close()

    def watch_ping(self, until: Callable[[int, dict], bool],
                   timeout: float = HEALTHY_TIMEOUT_S) -> list[tuple[int, dict]]:
        """Polls ``/ping`` until ``until(status, body)``; every answer seen, in order."""
        seen: list[tuple[int, dict]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited ({self.process.returncode}):\n{self.log_tail()}")
            answer = self.ping()
            if answer is not None:
                seen.append(answer)
                if until(*answer):
                    return seen
            time.sleep(0.1)
        raise TimeoutError(f"/ping never satisfied the condition; last {seen[-3:]}\n{self.log_tail()}")

    def wait_healthy(self, timeout: float = HEALTHY_TIMEOUT_S) -> float:
        """Waits for ``/ping`` 200; the seconds since the process started."""
        self.watch_ping(lambda status, body: status == 200, timeout)
        return time.monotonic() - self.started

    def listening_addresses(self) -> set[str]:
        """The local addresses the server's processes listen on at its port."""
        pids = {process.pid for process in self.all_processes()}
        return {
            connection.laddr.ip
            for connection in psutil.net_connections(kind="tcp")
            if connection.status == psutil.CONN_LISTEN and connection.pid in pids
            and connection.laddr.port == self.port
        }

    def all_processes(self) -> list[psutil.Process]:
        """Every process of the server: its own, and those of the sessions they lead.

        The model server is not a descendant: ``multi-model-server --start`` starts java and
        exits, but java stays in the session of the process that launched it.
        """
        try:
            root = psutil.Process(self.process.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
        sessions = {process.pid for process in tree}
        members = []
        for process in psutil.process_iter():
            with contextlib.suppress(OSError, psutil.Error):
                if os.getsid(process.pid) in sessions:
                    members.append(process)
        return members

    def model_worker_processes(self) -> list[psutil.Process]:
        """The model workers, each holding its own model copy: MMS's Python backend forks one per
        worker thread of MMS (so they are the children of the backend, itself a child of java)."""
        workers = []
        for process in self.all_processes():
            with contextlib.suppress(psutil.Error):
                parent = process.parent()
                if (process.status() != psutil.STATUS_ZOMBIE and parent is not None
                        and _is_mms_backend(process) and _is_mms_backend(parent)):
                    workers.append(process)
        return sorted(workers, key=lambda process: process.pid)

    def memory_by_role(self) -> dict[str, list[dict[str, float]]]:
        """Resident (RSS) and proportional (PSS: shared pages split between their users) memory in MB
        of each process, by role: gateway, launcher, frontend (java), worker parent, workers."""
        workers = {process.pid for process in self.model_worker_processes()}
        roles: dict[str, list[dict[str, float]]] = {}
        for process in self.all_processes():
            with contextlib.suppress(psutil.Error):
                memory = process.memory_full_info()
                command = " ".join(process.cmdline())
                if process.pid in workers:
                    role = "worker"
                elif _is_mms_backend(process):
                    role = "worker parent"
                elif process.name() == "java":
                    role = "frontend (java)"
                elif "serving.model_server" in command:
                    role = "launcher"
                elif "serve.py" in command:
                    role = "gateway"
                else:
                    continue
                roles.setdefault(role, []).append(
                    {"pid": process.pid, "rss_mb": memory.rss / 2**20, "pss_mb": memory.pss / 2**20}
                )
        return roles

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM to the server's session (as ``docker stop`` or Ctrl-C would); its exit status.

        Waits for every process of the server to end; whatever is still alive after ``timeout``
        is killed (and listed in ``leftovers``), so nothing is left behind.
        """
        processes = self.all_processes()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(processes, timeout=timeout)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        self.leftovers = alive
        self._log.close()
        return self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])
