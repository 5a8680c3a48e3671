"""Load and faults against a running server (``scripts.local.server.LocalServer``): what the tests
assert and what ``make bench-serve`` reports in its soak.

Every driver is bounded in requests and time, talks to 127.0.0.1 only and stops by itself:

- :func:`run_load`: requests from many threads, each of a kind whose answer is known (good images,
  and bad inputs that must get their 4xx); every other answer, and every exception, is unexpected;
- :func:`slow_body`: a request whose body trickles in a few bytes a second, and :func:`idle_close`:
  a connection that sends nothing, until the server gives up on them;
- :func:`kill_worker_under_load`: SIGKILL to a model worker while requests run, /ping watched
  until every worker is back.

Standard library and psutil only.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import psutil

from classifier import protocol
from scripts.local.server import LocalServer

REQUEST_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Probe:
    """One kind of request and the status it must get."""

    name: str
    body: bytes
    content_type: str | None
    expected: int


def probes(good_image: bytes, max_payload_bytes: int = 6 * 1024 * 1024) -> list[Probe]:
    """Good requests (an image, the same in JSON) and bad ones, each with its status."""
    return [
        Probe("jpeg", good_image, "image/jpeg", 200),
        Probe("json", protocol.json_request([good_image]), protocol.JSON, 200),
        Probe("empty body", b"", "image/jpeg", 400),
        Probe("not an image", b"this is not an image", "image/jpeg", 400),
        Probe("truncated image", good_image[: len(good_image) // 2], "image/jpeg", 400),
        Probe("malformed json", b'{"image": ', protocol.JSON, 400),
        Probe("bad base64", b'{"image": "not base64!"}', protocol.JSON, 400),
        Probe("unsupported type", b"a,b\n1,2\n", "text/csv", 415),
        Probe("no content type", good_image, None, 415),
        Probe("over the payload limit", b"\0" * (max_payload_bytes + 1), "image/jpeg", 413),
    ]


@dataclass(frozen=True)
class Outcome:
    probe: str
    expected: int
    status: int | None  # None: no HTTP answer (the error says why)
    seconds: float
    json_error: bool  # an error answer was a JSON document with a message
    error: str = ""

    @property
    def as_expected(self) -> bool:
        return self.status == self.expected and (self.status == 200 or self.json_error)


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def unexpected(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if not outcome.as_expected]

    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for outcome in self.outcomes:
            key = str(outcome.status) if outcome.status is not None else "no answer"
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def latencies(self, status: int = 200) -> list[float]:
        return sorted(outcome.seconds for outcome in self.outcomes if outcome.status == status)


def send(connection: http.client.HTTPConnection, probe: Probe) -> Outcome:
    """POSTs one probe to /invocations on a kept-alive connection (reopened if the server closed it)."""
    headers = {"Content-Type": probe.content_type} if probe.content_type else {}
    started = time.monotonic()
    try:
        connection.request("POST", "/invocations", body=probe.body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        if response.getheader("Connection", "").lower() == "close":
            connection.close()
    except (OSError, http.client.HTTPException) as error:
        connection.close()
        return Outcome(probe.name, probe.expected, None, time.monotonic() - started, False, repr(error))
    seconds = time.monotonic() - started
    json_error = False
    if response.status != 200:
        try:
            json_error = bool(json.loads(payload).get("message"))
        except (ValueError, AttributeError):
            json_error = False
    return Outcome(probe.name, probe.expected, response.status, seconds, json_error,
                   "" if response.status == 200 else payload[:200].decode(errors="replace"))


def run_load(
    port: int, kinds: Sequence[Probe], total: int, threads: int, timeout: float = REQUEST_TIMEOUT_S,
    on_progress: Callable[[int], None] | None = None,
) -> LoadResult:
    """``total`` requests from ``threads`` threads, kinds in turn, each thread on its own connection."""
    result = LoadResult()
    lock = threading.Lock()
    next_index = iter(range(total))

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                outcome = send(connection, kinds[index % len(kinds)])
                with lock:
                    result.outcomes.append(outcome)
                    done = len(result.outcomes)
                if on_progress is not None:
                    on_progress(done)
        finally:
            connection.close()

    started = time.monotonic()
    workers = [threading.Thread(target=client, name=f"load-{n}") for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    result.seconds = time.monotonic() - started
    return result


# ---------------------------------------------------------------- slow and idle clients


@dataclass(frozen=True)
class SlowClientResult:
    status: int | None  # what the server answered the slow request (None: it just closed)
    seconds: float  # from the first byte to the answer or the close
    bytes_sent: int


def slow_body(
    port: int, bytes_per_second: float = 4, declared: int = 10_000, limit_s: float = 120
) -> SlowClientResult:
    """A POST whose body trickles in at ``bytes_per_second`` until the server answers or closes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=limit_s)
    started, sent = time.monotonic(), 0
    try:
        head = (f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {declared}\r\n\r\n").encode()
        sock.sendall(head)
        sock.settimeout(1 / bytes_per_second)
        while time.monotonic() - started < limit_s and sent < declared:
            try:
                answer = sock.recv(65536)  # the server spoke (or closed): stop sending
            except TimeoutError:
                try:
                    sock.sendall(b"\xff")
                    sent += 1
                except OSError:
                    return SlowClientResult(None, time.monotonic() - started, sent)
                continue
            except OSError:
                return SlowClientResult(None, time.monotonic() - started, sent)
            return SlowClientResult(_status_of(answer), time.monotonic() - started, sent)
        return SlowClientResult(None, time.monotonic() - started, sent)
    finally:
        sock.close()


def _status_of(answer: bytes) -> int | None:
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else None


def idle_close(port: int, limit_s: float = 300) -> float | None:
    """Seconds until the server closes a connection that sends nothing (None: not within ``limit_s``)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=limit_s)
    started = time.monotonic()
    try:
        return time.monotonic() - started if sock.recv(1) == b"" else None
    except TimeoutError:
        return None
    except OSError:  # reset: closed as well
        return time.monotonic() - started
    finally:
        sock.close()


# ---------------------------------------------------------------- a worker killed under load


@dataclass
class KillResult:
    during: LoadResult  # the requests that ran while the worker was killed
    killed_pid: int
    pings: list[tuple[float, int, int]]  # (seconds after the kill, status, ready workers) while recovering
    recovered_s: float | None  # seconds from the kill until every worker was ready again
    after: LoadResult  # requests sent once every worker was back


def ready_workers(server: LocalServer) -> tuple[int, int]:
    """/ping's status and its count of ready workers (0 when none or no answer)."""
    answer = server.ping()
    if answer is None:
        return 0, 0
    return answer[0], int(answer[1].get("workers_ready", 0))


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_worker_under_load(server: LocalServer, port: int, kinds: Sequence[Probe], workers: int,
                           total: int = 120, threads: int = 8, recovery_limit_s: float = 300,
                           after_total: int = 40) -> KillResult:
    """Runs ``total`` requests, SIGKILLs one model worker once a quarter of them are answered, watches
    /ping until ``workers`` are ready again, then sends ``after_total`` more requests."""
    kill_at = max(1, total // 4)
    killed: dict[str, float | int] = {}
    kill_now = threading.Event()

    def on_progress(done: int) -> None:
        if done >= kill_at:
            kill_now.set()

    load = threading.Thread(target=lambda: killed.update(result=run_load(port, kinds, total, threads,
                                                                         on_progress=on_progress)))
    load.start()
    kill_now.wait(timeout=recovery_limit_s)
    victim = server.model_worker_processes()[0]
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    while _running(victim) and time.monotonic() - killed_at < recovery_limit_s:
        time.sleep(0.01)  # SIGKILL lands asynchronously
    pings: list[tuple[float, int, int]] = []
    recovered_s = None
    while time.monotonic() - killed_at < recovery_limit_s:
        status, ready = ready_workers(server)
        pings.append((time.monotonic() - killed_at, status, ready))
        if ready >= workers:
            recovered_s = time.monotonic() - killed_at
            break
        time.sleep(0.1)
    load.join()
    after = run_load(port, kinds, after_total, threads) if recovered_s is not None else LoadResult()
    return KillResult(killed["result"], victim.pid, pings, recovered_s, after)
