"""The engines that run an artifact's network, and which one serves it (``SERVE_ENGINE``).

- ``auto`` (default): ``int8`` when the artifact's recorded int8 test top-1 is at most
  ``SERVE_INT8_MAX_DROP`` points (default 0.5) below fp32, else ``fp32``; ``torch`` for an
  artifact without OpenVINO models (an older trainer, or ``quantize=false``);
- ``int8``: the OpenVINO int8 model (``artifact.OPENVINO_INT8_FILE``), needs openvino;
- ``fp32``: the OpenVINO fp32 model (``artifact.OPENVINO_FP32_FILE``), needs openvino;
- ``torch``: the ``torch.export`` model (``artifact.MODEL_FILE``) as before the OpenVINO models
  existed, needs torch (the serving image's torch variant).

Every engine maps a batch of evaluation-transformed images (``preprocessing.eval_array``, NCHW
float32) to class probabilities (NC float32). The trainer evaluates the OpenVINO models through
these same classes (``classifier.quantize``), so the served probabilities are the trainer's
evaluation of the same engine. An engine runs on ``OMP_NUM_THREADS`` threads (the server sets it
per worker from ``SERVE_TORCH_THREADS``), else on every core. Standard library at import (the
server's start chooses with it); numpy, torch and openvino are imported where needed, so an image
may lack torch or openvino.
"""

from __future__ import annotations

import importlib.util
import json
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from classifier import artifact

if TYPE_CHECKING:
    import numpy as np  # imported where used: serve.py only chooses, and starts faster without it

ENGINE_ENV = "SERVE_ENGINE"
MAX_DROP_ENV = "SERVE_INT8_MAX_DROP"
DEFAULT_MAX_DROP_POINTS = 0.5
AUTO, INT8, FP32, TORCH = "auto", "int8", "fp32", "torch"
CHOICES = (AUTO, INT8, FP32, TORCH)
# The model file each engine loads.
ENGINE_FILES = {
    INT8: artifact.OPENVINO_INT8_FILE, FP32: artifact.OPENVINO_FP32_FILE, TORCH: artifact.MODEL_FILE
}
# The serving log line that names the engine and why it was chosen (the demo looks for it).
CHOICE_LOG_PREFIX = "serving engine:"
# metrics.json: the trainer's record of the OpenVINO models (classifier.quantize).
QUANTIZATION_KEY = "quantization"
DIFFERENCE_KEY = "int8_minus_fp32_points"


@dataclass(frozen=True)
class EngineChoice:
    engine: str  # INT8, FP32 or TORCH
    reason: str

    def log_line(self) -> str:
        return f"{CHOICE_LOG_PREFIX} {self.engine} ({self.reason})"


class EngineSettingError(ValueError):
    """``SERVE_ENGINE`` or ``SERVE_INT8_MAX_DROP`` has a value that means nothing."""


class EngineUnavailable(RuntimeError):
    """The engine asked for cannot serve this artifact here (its model file, or torch, is missing)."""


# ---------------------------------------------------------------- the choice (pure)


def choose_engine(
    requested: str,
    available: set[str],
    quantization: Mapping[str, Any] | None,
    max_drop_points: float = DEFAULT_MAX_DROP_POINTS,
) -> EngineChoice:
    """The engine for ``SERVE_ENGINE=requested``, given the engines whose model files the artifact
    holds (``available``) and the trainer's quantization record from ``metrics.json``."""
    check_requested(requested)
    if requested != AUTO:
        if requested not in available:
            raise EngineUnavailable(
                f"{ENGINE_ENV}={requested} but the artifact has no {ENGINE_FILES[requested]} (trained "
                f"by an older trainer, or with quantize=false): use {ENGINE_ENV}=auto or {TORCH}"
            )
        return EngineChoice(requested, f"{ENGINE_ENV}={requested}")
    if FP32 not in available:
        return EngineChoice(
            TORCH, f"the artifact has no OpenVINO model ({artifact.OPENVINO_FP32_FILE}): served with torch"
        )
    difference = (quantization or {}).get(DIFFERENCE_KEY)
    if INT8 not in available or not isinstance(difference, int | float) or not math.isfinite(difference):
        return EngineChoice(FP32, "the artifact has no int8 model with a recorded test accuracy")
    drop = 0.0 - float(difference)  # points of top-1 that int8 loses (negative: it gains)
    accuracies = (
        f"int8 test top-1 {100 * quantization['int8']['test_accuracy']:.2f}% vs fp32 "
        f"{100 * quantization['fp32']['test_accuracy']:.2f}%"
        if "int8" in quantization and "fp32" in quantization else "int8 vs fp32 test top-1"
    )
    if drop <= max_drop_points:
        return EngineChoice(
            INT8, f"{accuracies}, a drop of {drop:.2f} points, within the bound of {max_drop_points:g} "
            f"({MAX_DROP_ENV})"
        )
    return EngineChoice(
        FP32, f"{accuracies}, a drop of {drop:.2f} points, more than the bound of {max_drop_points:g} "
        f"({MAX_DROP_ENV})"
    )


# ---------------------------------------------------------------- the choice for an artifact (edge)


def available_engines(model_dir: Path) -> set[str]:
    """The engines whose model files (an OpenVINO graph with its weights) are in the artifact."""
    root = Path(model_dir)
    present = set()
    for engine, name in ENGINE_FILES.items():
        files = [name] if engine == TORCH else [name, artifact.weights_file(name)]
        if all((root / file).is_file() for file in files):
            present.add(engine)
    return present


def quantization_record(model_dir: Path) -> dict[str, Any] | None:
    """The trainer's quantization record in ``metrics.json``, or None (absent or unreadable)."""
    try:
        metrics = json.loads((Path(model_dir) / artifact.METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    record = metrics.get(QUANTIZATION_KEY) if isinstance(metrics, dict) else None
    return record if isinstance(record, dict) else None


def check_requested(requested: str) -> None:
    if requested not in CHOICES:
        raise EngineSettingError(f"{ENGINE_ENV}={requested!r}: expected one of {', '.join(CHOICES)}")


def requested_engine(environ: Mapping[str, str]) -> str:
    """``SERVE_ENGINE`` (``auto`` when unset); EngineSettingError for a value that is not an engine."""
    requested = environ.get(ENGINE_ENV, "").strip().lower() or AUTO
    check_requested(requested)
    return requested


def max_drop_points(environ: Mapping[str, str]) -> float:
    value = environ.get(MAX_DROP_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_DROP_POINTS
    try:
        points = float(value)
    except ValueError:
        points = math.nan
    if not (math.isfinite(points) and points >= 0):
        raise EngineSettingError(f"{MAX_DROP_ENV} must be a number of points >= 0, got {value!r}")
    return points


def engine_choice(model_dir: Path, environ: Mapping[str, str]) -> EngineChoice:
    """The engine that serves the artifact in ``model_dir`` under the settings in ``environ``."""
    return choose_engine(
        requested_engine(environ), available_engines(model_dir), quantization_record(model_dir),
        max_drop_points(environ),
    )


def worker_threads(environ: Mapping[str, str]) -> int | None:
    """The threads an engine may use: ``OMP_NUM_THREADS`` when set, else None (every core)."""
    value = environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


# ---------------------------------------------------------------- the engines


class Engine(Protocol):
    name: str

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) float32 of a float32 NCHW batch."""
        ...


def softmax(logits: np.ndarray) -> np.ndarray:
    import numpy as np

    shifted = logits.astype(np.float32) - logits.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


class TorchEngine:
    """The ``torch.export`` program: the trainer's fp32 network, exactly as exported."""

    name = TORCH

    def __init__(self, path: Path):
        import torch  # its threads: OMP_NUM_THREADS, read by torch itself

        self.module = torch.export.load(path).module()

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return torch.softmax(self.module(torch.from_numpy(batch)).float(), dim=1).numpy()


class OpenVINOEngine:
    """An OpenVINO IR model on the CPU, tuned for latency: one stream, ``threads`` threads."""

    def __init__(self, path: Path, name: str, threads: int | None = None):
        import openvino as ov

        self.name = name
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            # fp32 stays fp32 on CPUs with bf16 units (OpenVINO would pick bf16 there by itself),
            # so that every CPU serves what the trainer evaluated.
            "INFERENCE_PRECISION_HINT": "f32",
            # Several workers share the cores: the OS places their threads, no pinning.
            "ENABLE_CPU_PINNING": False,
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(path), "CPU", config)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one inference request, one batch at a time

    def logits(self, batch: np.ndarray) -> np.ndarray:
        import numpy as np

        with self._lock:
            result = self._request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
            return np.array(result[0], dtype=np.float32)  # a copy: the request reuses its buffer

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return softmax(self.logits(batch))


def load_engine(model_dir: Path, engine: str, threads: int | None = None) -> Engine:
    """Loads the artifact's model for ``engine`` (``INT8``, ``FP32`` or ``TORCH``)."""
    path = Path(model_dir) / ENGINE_FILES[engine]
    if engine == TORCH:
        if importlib.util.find_spec("torch") is None:
            raise EngineUnavailable(
                "the torch engine needs torch, which this serving image leaves out: serve the artifact "
                "with the image's torch variant (tag suffix -torch), or retrain it with this trainer "
                "(it adds OpenVINO models)"
            )
        return TorchEngine(path)
    return OpenVINOEngine(path, engine, threads)
