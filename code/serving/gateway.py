"""The HTTP server SageMaker talks to: ``/ping``, ``/invocations``, ``/execution-parameters``.

MMS's own ``/ping`` answers 200 while its workers die on a broken model, so a gateway in front
of it answers instead:

- ``GET /ping``: 200 only while at least one live worker holds a loaded, warmed-up model
  (``serving.worker_state``); else 503 with the reason (loading, or why the model failed to load).
- ``POST /invocations``: the body, within the payload limit (413 beyond it), is passed to MMS
  and MMS's answer comes back as it is (503 at once when the model failed to load).
- ``GET /execution-parameters``: what SageMaker batch transform asks of a container.

Every error is JSON ``{"code", "type", "message"}``, as the model's and MMS's own errors are.

Clients cannot hold it up: each connection has a thread of its own, and the whole body is read
before MMS is asked, so a slow client holds only its own thread. A kept-alive connection that sends
no request for ``idle_timeout`` seconds is closed; a request, once its first byte has come, must
arrive whole within ``read_timeout`` seconds (408 otherwise, so a body trickling in a few bytes a
second cannot keep a thread forever); beyond ``max_connections`` open connections, new ones get a
503 at once (``ClientLimits``).
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from serving import worker_state
from serving.errors import error_body

logger = logging.getLogger(__name__)

JSON = "application/json"
# Headers that belong to one connection, not to the request (RFC 9110, 7.6.1).
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "host", "content-length", "expect",
}
# An over-limit body is read and dropped (keeping the connection) up to this many times the limit.
DRAIN_FACTOR = 4


class PayloadTooLarge(Exception):
    pass


class RequestTimeout(TimeoutError):
    """The request did not arrive whole within the read timeout."""


@dataclass(frozen=True)
class ClientLimits:
    """How long and how many clients may hold the gateway (``serving.settings``)."""

    idle_timeout: float = 60.0  # seconds a kept-alive connection may wait for its next request
    read_timeout: float = 30.0  # seconds a request may take to arrive, from its first byte
    max_connections: int = 256


class RequestClock:
    """The deadline of the request being read on one connection: none while the connection is idle."""

    def __init__(self, limits: ClientLimits):
        self.limits = limits
        self.deadline: float | None = None

    def between_requests(self) -> None:
        self.deadline = None

    def next_read_timeout(self) -> float:
        """How long the next read may wait; raises RequestTimeout once the request is late."""
        if self.deadline is None:
            return self.limits.idle_timeout
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise RequestTimeout(f"the request did not arrive within {self.limits.read_timeout:g} s")
        return remaining

    def data_arrived(self) -> None:
        if self.deadline is None:
            self.deadline = time.monotonic() + self.limits.read_timeout


class DeadlineSocketReader(io.RawIOBase):
    """A socket's input whose every read waits no longer than the connection's clock allows."""

    def __init__(self, sock: socket.socket, clock: RequestClock):
        super().__init__()
        self.sock = sock
        self.clock = clock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self.sock.settimeout(self.clock.next_read_timeout())
        count = self.sock.recv_into(buffer)
        if count:
            self.clock.data_arrived()
        return count


@dataclass(frozen=True)
class Upstream:
    """Where MMS listens, and what the gateway knows about it."""

    inference_port: int
    timeout_seconds: float
    state_dir: Path  # where the workers report (serving.worker_state)
    is_running: Callable[[], bool]  # whether the model-server process is still alive


def health(upstream: Upstream) -> tuple[HTTPStatus, dict]:
    """The answer to ``/ping``: 200 only with a worker ready to serve."""
    if not upstream.is_running():
        return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "Unhealthy", "reason": "the model server exited"}
    lost = worker_state.lost_worker_parent(upstream.state_dir)
    if lost:
        return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "Unhealthy", "reason": lost}
    ready = worker_state.ready_workers(upstream.state_dir)
    if ready:
        return HTTPStatus.OK, {"status": "Healthy", "workers_ready": len(ready)}
    failure = worker_state.model_failure(upstream.state_dir)
    if failure:
        return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "Unhealthy", "reason": failure}
    return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "Loading", "reason": "the model is loading"}


class NoDelayConnection(http.client.HTTPConnection):
    """An HTTP connection whose small writes leave at once (no Nagle delay)."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Gateway(ThreadingHTTPServer):
    """A threaded HTTP/1.1 server (one thread per client connection) in front of MMS."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], upstream: Upstream, max_payload_bytes: int, workers: int,
                 limits: ClientLimits | None = None):
        self.upstream = upstream
        self.max_payload_bytes = max_payload_bytes
        self.workers = workers
        self.limits = limits or ClientLimits()
        self._connections = threading.local()  # one kept-alive connection to MMS per thread
        self._slots = threading.BoundedSemaphore(self.limits.max_connections)
        super().__init__(address, GatewayHandler)

    def process_request(self, request: socket.socket, client_address) -> None:
        """A thread for the connection, or an immediate 503 when ``max_connections`` are open."""
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        message = (f"the server already holds {self.limits.max_connections} connections "
                   "(SERVE_MAX_CONNECTIONS); retry shortly")
        body = error_body(HTTPStatus.SERVICE_UNAVAILABLE, message).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {JSON}\r\nContent-Length: {len(body)}\r\n"
                "Retry-After: 1\r\nConnection: close\r\n\r\n").encode()
        try:
            request.setblocking(False)  # the accepting thread never waits on a client
            request.send(head + body)
        except OSError:
            pass
        logger.warning("refused a connection: %d are open (SERVE_MAX_CONNECTIONS)",
                       self.limits.max_connections)
        self.shutdown_request(request)

    def upstream_connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        connection = getattr(self._connections, "mms", None)
        if connection is None or fresh:
            if connection is not None:
                connection.close()
            connection = NoDelayConnection(
                "127.0.0.1", self.upstream.inference_port, timeout=self.upstream.timeout_seconds
            )
            self._connections.mms = connection
        return connection


class GatewayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm the body would wait for
    # the client's delayed ACK of the headers (40 ms on Linux) on every response.
    disable_nagle_algorithm = True
    server: Gateway

    def setup(self) -> None:
        super().setup()
        self.clock = RequestClock(self.server.limits)
        self.rfile.close()  # the plain socket file the base class made (the socket stays open)
        self.rfile = io.BufferedReader(DeadlineSocketReader(self.connection, self.clock))

    def handle_one_request(self) -> None:
        # An idle connection times out (TimeoutError, caught by the base class: the connection closes).
        self.clock.between_requests()
        super().handle_one_request()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/ping":
            status, document = health(self.server.upstream)
            self._send(status, json.dumps(document).encode(), JSON)
        elif path == "/execution-parameters":
            document = {
                "MaxConcurrentTransforms": self.server.workers,
                "BatchStrategy": "SINGLE_RECORD",
                "MaxPayloadInMB": self.server.max_payload_bytes // (1024 * 1024),
            }
            self._send(HTTPStatus.OK, json.dumps(document).encode(), JSON)
        else:
            self._send_error(HTTPStatus.NOT_FOUND, f"no such resource: GET {path}; try /ping or /invocations")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            body = self._read_body()
        except PayloadTooLarge as error:
            self._send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(error))
            return
        except TimeoutError:
            self.close_connection = True
            message = (f"the request body did not arrive within {self.server.limits.read_timeout:g} s "
                       "(SERVE_REQUEST_READ_TIMEOUT_SECONDS)")
            logger.info("slow client %s: %s", self.address_string(), message)
            self._send_error(HTTPStatus.REQUEST_TIMEOUT, message)
            return
        except ValueError as error:
            self.close_connection = True
            self._send_error(HTTPStatus.BAD_REQUEST, str(error))
            return
        if path != "/invocations":
            self._send_error(HTTPStatus.NOT_FOUND, f"no such resource: POST {path}; try /invocations")
            return
        status, document = health(self.server.upstream)
        if document["status"] == "Unhealthy":  # no worker will ever answer: say why now
            self._send_error(status, f"the model cannot serve: {document['reason']}")
            return
        self._forward(body)

    def _read_body(self) -> bytes:
        limit = self.server.max_payload_bytes
        too_large = (
            f"request body exceeds the limit of {limit} bytes "
            f"({limit // (1024 * 1024)} MB, SAGEMAKER_MAX_PAYLOAD_IN_MB)"
        )
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = self._read_chunked(limit)
            if body is None:
                raise PayloadTooLarge(too_large)
            return body
        length_header = self.headers.get("Content-Length", "0").strip() or "0"
        if not length_header.isdigit():
            raise ValueError(f"invalid Content-Length {length_header!r}")
        length = int(length_header)
        if length > limit:
            if length <= DRAIN_FACTOR * limit:
                self._drain(length)
            else:
                self.close_connection = True
            raise PayloadTooLarge(f"{too_large}: got {length} bytes")
        return self.rfile.read(length)

    def _read_chunked(self, limit: int) -> bytes | None:
        """The chunked body, or None when it is over ``limit`` (read to its end all the same)."""
        parts, size = [], 0
        while True:
            line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                chunk_size = int(line, 16)
            except ValueError:
                raise ValueError(f"malformed chunked body (chunk size {line[:20]!r})") from None
            if chunk_size == 0:
                while self.rfile.readline(1024).strip():  # trailers
                    pass
                return b"".join(parts) if size <= limit else None
            size += chunk_size
            if size > DRAIN_FACTOR * limit:
                self.close_connection = True
                return None
            chunk = self.rfile.read(chunk_size)
            self.rfile.readline(8)  # the CRLF after each chunk
            if size <= limit:
                parts.append(chunk)

    def _drain(self, length: int) -> None:
        while length > 0:
            read = len(self.rfile.read(min(length, 1 << 20)))
            if not read:
                break
            length -= read

    def _forward(self, body: bytes) -> None:
        headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP}
        for attempt in (1, 2):
            connection = self.server.upstream_connection(fresh=attempt == 2)
            try:
                connection.request("POST", "/invocations", body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                break
            except TimeoutError:
                connection.close()
                self._send_error(
                    HTTPStatus.GATEWAY_TIMEOUT,
                    f"the model did not answer within {self.server.upstream.timeout_seconds:.0f} s",
                )
                return
            except (OSError, http.client.HTTPException) as error:
                # A kept-alive connection MMS closed meanwhile: retry once on a fresh one.
                connection.close()
                if attempt == 2:
                    logger.warning("model server unreachable: %s", error)
                    message = f"the model server is unavailable ({error})"
                    self._send_error(HTTPStatus.SERVICE_UNAVAILABLE, message)
                    return
        content_type = response.getheader("Content-Type", JSON)
        self._send(response.status, payload, content_type, reason=response.reason)

    def _send_error(self, status: HTTPStatus, message: str) -> None:
        self._send(status, error_body(status, message).encode(), JSON)

    def _send(self, status: int, body: bytes, content_type: str, reason: str | None = None) -> None:
        self.connection.settimeout(self.server.limits.read_timeout)  # a client that does not read
        self.send_response(status, reason)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        logger.debug("%s %s", self.address_string(), format % args)
