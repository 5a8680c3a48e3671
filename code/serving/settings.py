"""The server's settings, read once from the environment (SageMaker's variables where there is one).

| variable | default | meaning |
| --- | --- | --- |
| ``SAGEMAKER_BIND_TO_PORT`` | 8080 | the port SageMaker sends ``/ping`` and ``/invocations`` to |
| ``SERVE_BIND_HOST`` | 0.0.0.0 | the address to listen on (``make serve-local``: 127.0.0.1) |
| ``SAGEMAKER_MODEL_SERVER_WORKERS`` | cores // 2, within memory (at least 1) | workers (processes) |
| ``SERVE_WORKER_MEMORY_MB`` | the engine's | the memory one worker may take (its own model copy) |
| ``SERVE_TORCH_THREADS`` | cores // workers (at least 1) | threads in each worker (torch or OpenVINO) |
| ``SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS`` | 60 | a request's time limit in a worker |
| ``SAGEMAKER_MODEL_SERVER_TIMEOUT`` | | the same in minutes, as sagemaker-inference reads it |
| ``SAGEMAKER_MAX_PAYLOAD_IN_MB`` | 6 | the largest request body (SageMaker real-time: 6 MB) |
| ``SAGEMAKER_STARTUP_TIMEOUT`` | 600 | seconds the model server may take to start |
| ``SERVE_IDLE_TIMEOUT_SECONDS`` | 60 | a kept-alive connection with no request for this long is closed |
| ``SERVE_REQUEST_READ_TIMEOUT_SECONDS`` | 30 | a begun request (headers, body) must arrive within this |
| ``SERVE_MAX_CONNECTIONS`` | 256 | open client connections; more are answered 503 at once |

Workers x threads stays within the cores unless you ask for more workers than cores, and the
default worker count within the memory (the container's limit, else the machine's) at
``SERVE_WORKER_MEMORY_MB`` each (by default the served engine's ``WORKER_MEMORY_MB``), next to
``RESERVED_MEMORY_MB`` for the rest of the stack.
The request limits of the model itself (pixels, batch size) are read by ``inference.py``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from classifier import engines

DEFAULT_PORT = 8080
DEFAULT_BIND_HOST = "0.0.0.0"
DEFAULT_TIMEOUT_SECONDS = 60
DEFAULT_MAX_PAYLOAD_MB = 6
DEFAULT_STARTUP_TIMEOUT_SECONDS = 600
DEFAULT_IDLE_TIMEOUT_SECONDS = 60
DEFAULT_REQUEST_READ_TIMEOUT_SECONDS = 30
DEFAULT_MAX_CONNECTIONS = 256
# One worker's resident memory by engine (SERVE_ENGINE): its peak RSS serving a ResNet50 (133
# classes, 224 px) after batches of SERVE_MAX_BATCH_IMAGES (32) 500x375 JPEGs, measured by the soak
# of `make bench-serve` (scripts/bench/soak.py, benchmarks/serve.md), plus a margin. Measured:
# torch 683-1010 MB, OpenVINO fp32 518 MB, OpenVINO int8 260 MB. Another model changes them.
WORKER_MEMORY_MB = {engines.TORCH: 1100, engines.FP32: 700, engines.INT8: 400}
# The budget when the engine is not known: the largest.
DEFAULT_WORKER_MEMORY_MB = max(WORKER_MEMORY_MB.values())
# The rest of the stack: MMS's Java frontend (about 180 MB under load), the gateway, the launcher,
# MMS's worker parent (together about 110 MB), and room for the system.
RESERVED_MEMORY_MB = 600
MB = 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    model_dir: Path
    port: int
    bind_host: str
    workers: int
    torch_threads: int
    timeout_seconds: int
    max_payload_bytes: int
    startup_timeout_seconds: int
    idle_timeout_seconds: int = DEFAULT_IDLE_TIMEOUT_SECONDS
    request_read_timeout_seconds: int = DEFAULT_REQUEST_READ_TIMEOUT_SECONDS
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str], model_dir: Path, cpu_count: int, memory_mb: int | None = None,
        engine: str | None = None,
    ) -> ServeSettings:
        """Reads the variables above; a bad value raises ValueError naming the variable.

        ``memory_mb``: the memory the server may use (default: :func:`available_memory_mb`);
        ``engine``: the engine the workers load (``classifier.engines``), whose memory budgets them.
        """
        worker_memory_mb = _positive_int(
            environ, "SERVE_WORKER_MEMORY_MB", WORKER_MEMORY_MB.get(engine or "", DEFAULT_WORKER_MEMORY_MB)
        )
        if memory_mb is None:
            memory_mb = available_memory_mb()
        workers = _positive_int(
            environ, "SAGEMAKER_MODEL_SERVER_WORKERS", default_workers(cpu_count, memory_mb, worker_memory_mb)
        )
        # sagemaker-inference's older variable counts minutes, the newer one seconds
        minutes = _positive_int(environ, "SAGEMAKER_MODEL_SERVER_TIMEOUT", 0)
        timeout = _positive_int(
            environ, "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS", 60 * minutes or DEFAULT_TIMEOUT_SECONDS
        )
        payload_mb = _positive_int(environ, "SAGEMAKER_MAX_PAYLOAD_IN_MB", DEFAULT_MAX_PAYLOAD_MB)
        return cls(
            model_dir=Path(model_dir),
            port=_positive_int(environ, "SAGEMAKER_BIND_TO_PORT", DEFAULT_PORT),
            bind_host=environ.get("SERVE_BIND_HOST", "").strip() or DEFAULT_BIND_HOST,
            workers=workers,
            torch_threads=_positive_int(environ, "SERVE_TORCH_THREADS", max(1, cpu_count // workers)),
            timeout_seconds=timeout,
            max_payload_bytes=MB * payload_mb,
            startup_timeout_seconds=_positive_int(
                environ, "SAGEMAKER_STARTUP_TIMEOUT", DEFAULT_STARTUP_TIMEOUT_SECONDS
            ),
            idle_timeout_seconds=_positive_int(
                environ, "SERVE_IDLE_TIMEOUT_SECONDS", DEFAULT_IDLE_TIMEOUT_SECONDS
            ),
            request_read_timeout_seconds=_positive_int(
                environ, "SERVE_REQUEST_READ_TIMEOUT_SECONDS", DEFAULT_REQUEST_READ_TIMEOUT_SECONDS
            ),
            max_connections=_positive_int(environ, "SERVE_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS),
        )


def default_workers(cpu_count: int, memory_mb: int, worker_memory_mb: int = DEFAULT_WORKER_MEMORY_MB) -> int:
    """Half the cores (torch threads take the rest), no more than the memory holds; at least 1."""
    by_memory = (memory_mb - RESERVED_MEMORY_MB) // worker_memory_mb
    return max(1, min(cpu_count // 2, by_memory))


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# Where Linux says how much memory a container may use (cgroup v2, then v1).
CGROUP_MEMORY_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def available_memory_mb(
    limit_files: tuple[str, ...] = CGROUP_MEMORY_LIMITS, meminfo: str = "/proc/meminfo"
) -> int:
    """The memory this server may use, in MB: the container's limit, else the machine's memory."""
    total = None
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) // 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    for path in limit_files:
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value.isdigit():  # "max" (v2) means no limit; v1 writes a huge number instead
            limit = int(value) // MB
            return min(limit, total) if total else limit
    return total if total else DEFAULT_WORKER_MEMORY_MB + RESERVED_MEMORY_MB


def available_cpus() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
