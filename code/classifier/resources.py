"""A background sampler of CPU, memory and GPU use during training.

Every few seconds it appends one JSON line to ``output/data/resource_usage.jsonl`` (SageMaker
uploads ``output/data`` as ``output.tar.gz``)::

    {"elapsed_s": 5.0, "cpu_percent": 187.5, "cpu_count": 4, "iowait_percent": 0.3,
     "memory_used_mb": 2310.4, "memory_percent": 9.6, "process_memory_mb": 1520.2,
     "gpu_percent": null, "gpu_memory_used_mb": null, "gpu_memory_total_mb": null}

``cpu_percent`` is the machine's total (100 per busy core, ``cpu_count`` cores), ``iowait_percent``
the share of CPU time spent waiting for disk I/O (Linux; null elsewhere), ``process_memory_mb``
the trainer process's resident memory; the GPU fields are null without a GPU. ``elapsed_s``
counts from the sampler's start, or from the ``origin`` it is given (the trainer gives the
process start, the clock of ``step_timings.jsonl``).
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

_NVIDIA_SMI_QUERY = ["--query-gpu=utilization.gpu,memory.used,memory.total", "--format=csv,noheader,nounits"]


def gpu_usage() -> tuple[float | None, float | None, float | None]:
    """(utilisation percent averaged over GPUs, memory used in MB summed, memory in MB summed),
    or Nones."""
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi:
        try:
            output = subprocess.run(
                [nvidia_smi, *_NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=10, check=True
            ).stdout
            rows = [[float(value) for value in line.split(",")] for line in output.strip().splitlines()]
            if rows:
                return sum(r[0] for r in rows) / len(rows), sum(r[1] for r in rows), sum(r[2] for r in rows)
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            pass
    if torch.cuda.is_available():
        # Memory this process holds; utilisation needs NVML, which torch may lack.
        devices = range(torch.cuda.device_count())
        memory_mb = sum(torch.cuda.memory_reserved(i) for i in devices) / 2**20
        total_mb = sum(torch.cuda.get_device_properties(i).total_memory for i in devices) / 2**20
        return None, memory_mb, total_mb
    return None, None, None


def _iowait_percent() -> float | None:
    return getattr(psutil.cpu_times_percent(interval=None), "iowait", None)  # Linux only


def sample(started: float) -> dict[str, float | None]:
    """One resource sample, ``started`` being the ``time.monotonic()`` that ``elapsed_s`` counts from."""
    memory = psutil.virtual_memory()
    gpu_percent, gpu_memory_mb, gpu_total_mb = gpu_usage()
    return {
        "elapsed_s": round(time.monotonic() - started, 3),
        "cpu_percent": psutil.cpu_percent(interval=None) * psutil.cpu_count(),
        "cpu_count": psutil.cpu_count(),
        "iowait_percent": _iowait_percent(),
        "memory_used_mb": round((memory.total - memory.available) / 2**20, 1),
        "memory_percent": memory.percent,
        "process_memory_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
        "gpu_percent": gpu_percent,
        "gpu_memory_used_mb": gpu_memory_mb,
        "gpu_memory_total_mb": gpu_total_mb,
    }


class ResourceSampler:
    """Samples every ``interval_s`` seconds on a daemon thread while the ``with`` block runs."""

    def __init__(self, path: Path, interval_s: float, origin: float | None = None):
        self.path = Path(path)
        self.interval_s = interval_s
        self.origin = origin  # the time.monotonic() that elapsed_s counts from (default: the start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)

    def __enter__(self) -> ResourceSampler:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        psutil.cpu_percent(interval=None)  # the first calls only set the reference points
        _iowait_percent()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 15)

    def _run(self) -> None:
        started = time.monotonic() if self.origin is None else self.origin
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
