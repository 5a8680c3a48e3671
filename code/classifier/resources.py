"""A background sampler of CPU, memory and GPU use during training.

Every few seconds it appends one JSON line to ``output/data/resource_usage.jsonl`` (SageMaker
uploads ``output/data`` as ``output.tar.gz``)::

    {"elapsed_s": 5.0, "cpu_percent": 187.5, "memory_used_mb": 2310.4, "memory_percent": 9.6,
     "gpu_percent": null, "gpu_memory_used_mb": null}

``cpu_percent`` is the machine's total (100 per busy core); the GPU fields are null without a GPU.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

import psutil
import torch

logger = logging.getLogger(__name__)

_NVIDIA_SMI_QUERY = ["--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]


def gpu_usage() -> tuple[float | None, float | None]:
    """(utilisation percent averaged over GPUs, memory used in MB summed), or (None, None)."""
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi:
        try:
            output = subprocess.run(
                [nvidia_smi, *_NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=10, check=True
            ).stdout
            rows = [[float(value) for value in line.split(",")] for line in output.strip().splitlines()]
            if rows:
                return sum(r[0] for r in rows) / len(rows), sum(r[1] for r in rows)
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    if torch.cuda.is_available():
        # Memory this process holds; utilisation needs NVML, which torch may lack.
        memory_mb = sum(torch.cuda.memory_reserved(i) for i in range(torch.cuda.device_count())) / 2**20
        return None, memory_mb
    return None, None


def sample(started: float) -> dict[str, float | None]:
    """One resource sample, ``started`` being the ``time.monotonic()`` of the first."""
    memory = psutil.virtual_memory()
    gpu_percent, gpu_memory_mb = gpu_usage()
    return {
        "elapsed_s": round(time.monotonic() - started, 3),
        "cpu_percent": psutil.cpu_percent(interval=None) * psutil.cpu_count(),
        "memory_used_mb": round((memory.total - memory.available) / 2**20, 1),
        "memory_percent": memory.percent,
        "gpu_percent": gpu_percent,
        "gpu_memory_used_mb": gpu_memory_mb,
    }


class ResourceSampler:
    """Samples every ``interval_s`` seconds on a daemon thread while the ``with`` block runs."""

    def __init__(self, path: Path, interval_s: float):
        self.path = Path(path)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)

    def __enter__(self) -> ResourceSampler:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        psutil.cpu_percent(interval=None)  # the first call only sets the reference point
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 15)

    def _run(self) -> None:
        started = time.monotonic()
        with self.path.open("w") as out:  # one run per file: a re-run replaces it
            while True:
                stopping = self._stop.wait(self.interval_s)
                try:
                    out.write(json.dumps(sample(started)) + "\n")
                    out.flush()
                except Exception:  # a sampler must never break training
                    logger.exception("resource sampling failed; stopping the sampler")
                    return
                if stopping:
                    return
