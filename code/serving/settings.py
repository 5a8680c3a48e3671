"""The server's settings, read once from the environment (SageMaker's variables where there is one).

| variable | default | meaning |
| --- | --- | --- |
| ``SAGEMAKER_BIND_TO_PORT`` | 8080 | the port SageMaker sends ``/ping`` and ``/invocations`` to |
| ``SERVE_BIND_HOST`` | 0.0.0.0 | the address to listen on (``make serve-local``: 127.0.0.1) |
| ``SAGEMAKER_MODEL_SERVER_WORKERS`` | cores // 2 (at least 1) | model-server workers (processes) |
| ``SERVE_TORCH_THREADS`` | cores // workers (at least 1) | threads in each worker (torch or OpenVINO) |
| ``SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS`` | 60 | a request's time limit in a worker |
| ``SAGEMAKER_MODEL_SERVER_TIMEOUT`` | | the same in minutes, as sagemaker-inference reads it |
| ``SAGEMAKER_MAX_PAYLOAD_IN_MB`` | 6 | the largest request body (SageMaker real-time: 6 MB) |
| ``SAGEMAKER_STARTUP_TIMEOUT`` | 600 | seconds the model server may take to start |

Workers x threads stays within the cores unless you ask for more workers than cores.
The request limits of the model itself (pixels, batch size) are read by ``inference.py``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 8080
DEFAULT_BIND_HOST = "0.0.0.0"
DEFAULT_TIMEOUT_SECONDS = 60
DEFAULT_MAX_PAYLOAD_MB = 6
DEFAULT_STARTUP_TIMEOUT_SECONDS = 600
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

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], model_dir: Path, cpu_count: int) -> ServeSettings:
        """Reads the variables above; a bad value raises ValueError naming the variable."""
        workers = _positive_int(environ, "SAGEMAKER_MODEL_SERVER_WORKERS", max(1, cpu_count // 2))
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
        )


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def available_cpus() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
