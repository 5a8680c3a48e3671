"""The HTTP server SageMaker talks to: ``/ping``, ``/invocations``, ``/execution-parameters``.

MMS's own ``/ping`` answers 200 while its workers die on a broken model, so a gateway in front
of it answers instead:

- ``GET /ping``: 200 only while at least one live worker holds a loaded, warmed-up model
  (``serving.worker_state``); else 503 with the reason (loading, or why the model failed to load).
- ``POST /invocations``: the body, within the payload limit (413 beyond it), is passed to MMS
  and MMS's answer comes back as it is (503 at once when the model failed to load).
- ``GET /execution-parameters``: what SageMaker batch transform asks of a container.

Every error is JSON ``{"code", "type", "message"}``, as the model's and MMS's own errors are.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
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
    ready = worker_state.ready_workers(upstream.state_dir)
    if ready:
        return HTTPStatus.OK, {"status": "Healthy", "workers_ready": len(ready)}
    failure = worker_state.model_failure(upstream.state_dir)
    if failure:
        return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "Unhealthy", "reason": failure}
    return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "Loading", "reason": "the model is loading"}


class Gateway(ThreadingHTTPServer):
    """A threaded HTTP/1.1 server (one thread per client connection) in front of MMS."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], upstream: Upstream, max_payload_bytes: int, workers: int):
        self.upstream = upstream
        self.max_payload_bytes = max_payload_bytes
        self.workers = workers
        self._connections = threading.local()  # one kept-alive connection to MMS per thread
        super().__init__(address, GatewayHandler)

    def upstream_connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        connection = getattr(self._connections, "mms", None)
        if connection is None or fresh:
            if connection is not None:
                connection.close()
            connection = http.client.HTTPConnection(
                "127.0.0.1", self.upstream.inference_port, timeout=self.upstream.timeout_seconds
            )
            self._connections.mms = connection
        return connection


class GatewayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Gateway

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
        self.send_response(status, reason)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        logger.debug("%s %s", self.address_string(), format % args)
