"""The artifact's fast CPU models: the best weights as OpenVINO fp32 and post-training int8 models.

Called by ``classifier.export`` at the end of training (hyperparameter ``quantize``, default on):

1. the network is converted to OpenVINO IR (fp32 weights, dynamic batch size, the same normalised
   NCHW input as ``model.pt2``) and checked against torch on random batches;
2. NNCF's post-training quantization turns it into int8, calibrated on up to
   ``calibration-images`` images of the training split (never test), spread over the classes and
   sent through the serving preprocessing (``preprocessing.eval_array``);
3. both are evaluated on the test split through ``classifier.engines`` (the classes that serve
   them), and ``metrics.json`` records their top-1, the int8 - fp32 difference in points that
   ``SERVE_ENGINE=auto`` reads, and how often their top-1 agree.

Why OpenVINO rather than ONNX Runtime (measured: benchmarks/serve.md): as fast or faster in int8
on the same CPU, and neither it nor NNCF needs protobuf, while ONNX Runtime's quantization tools
need protobuf >= 4, which smdebug (<= 3.20.3) rules out of the training image.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from classifier import artifact, engines
from classifier.errors import TrainingError
from classifier.preprocessing import PreprocessConfig, eval_array, load_image

logger = logging.getLogger(__name__)

CALIBRATION_SPLIT = "train"
EVALUATION_BATCH = 16
# OpenVINO fp32 logits may differ from torch's by float rounding (other kernels), relative to their scale.
CONVERSION_TOLERANCE = 1e-3


@dataclass(frozen=True)
class QuantizationData:
    """The images quantization needs: calibration images (training split) and the labelled test split."""

    calibration: list[Path]
    test: list[tuple[Path, int]]
    calibration_split: str = CALIBRATION_SPLIT


def calibration_sample(samples: Sequence[tuple[Path, int]], count: int, seed: int = 0) -> list[Path]:
    """Up to ``count`` image paths spread evenly over the classes (round robin), fixed by ``seed``."""
    by_class: dict[int, list[Path]] = {}
    for path, label in samples:
        by_class.setdefault(label, []).append(path)
    generator = random.Random(seed)
    queues = []
    for label in sorted(by_class):
        paths = sorted(by_class[label])
        generator.shuffle(paths)
        queues.append(paths)
    chosen: list[Path] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop())
    return chosen


def quantization_data(
    splits: dict[str, Any], calibration_images: int, seed: int | None = None
) -> QuantizationData:
    """The calibration sample of the training split and the test split's samples (``data.Split``s)."""
    return QuantizationData(
        calibration=calibration_sample(splits[CALIBRATION_SPLIT].samples, calibration_images, seed or 0),
        test=list(splits["test"].samples),
    )


def preprocessed(paths: Iterable[Path], config: PreprocessConfig) -> Iterator[np.ndarray]:
    """Each image as the server sees it: decoded, evaluation-transformed, a batch of one."""
    for path in paths:
        yield eval_array(load_image(path), config)[np.newaxis]


# ---------------------------------------------------------------- conversion and quantization


def convert(model: nn.Module, image_size: int):
    """The network as an OpenVINO model with a dynamic batch size (fp32)."""
    import openvino as ov

    model = model.eval().cpu().float()
    with torch.no_grad():
        converted = ov.convert_model(model, example_input=torch.zeros(1, 3, image_size, image_size))
    converted.reshape([-1, 3, image_size, image_size])
    return converted


def check_conversion(model: nn.Module, path: Path, image_size: int) -> None:
    """The saved fp32 model gives torch's logits on random batches of 1 and 3 images."""
    engine = engines.OpenVINOEngine(path, engines.FP32)
    generator = torch.Generator().manual_seed(0)
    for size in (1, 3):
        images = torch.randn(size, 3, image_size, image_size, generator=generator)
        with torch.no_grad():
            expected = model(images).numpy()
        difference = float(np.abs(engine.logits(images.numpy()) - expected).max())
        scale = max(1.0, float(np.abs(expected).max()))
        if not difference <= CONVERSION_TOLERANCE * scale:
            raise TrainingError(
                f"the OpenVINO fp32 model is off torch's logits by {difference:.3g} on a batch of {size}"
            )


def quantize_int8(converted, calibration: Sequence[np.ndarray]):
    """NNCF post-training quantization of ``converted``, calibrated on ``calibration`` batches."""
    import nncf

    nncf.set_log_level(logging.WARNING)  # no progress bars in the job log
    return nncf.quantize(
        converted,
        nncf.Dataset(list(calibration)),
        subset_size=len(calibration),
        target_device=nncf.TargetDevice.CPU,
    )


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    predictions: np.ndarray  # top-1 class index per test image
    probabilities: np.ndarray  # (images, classes)


def evaluate(
    engine: engines.Engine, test: Sequence[tuple[Path, int]], config: PreprocessConfig
) -> Evaluation:
    """Top-1 accuracy of ``engine`` on the test split, images preprocessed as the server does."""
    probabilities = []
    for start in range(0, len(test), EVALUATION_BATCH):
        paths = [path for path, _ in test[start:start + EVALUATION_BATCH]]
        probabilities.append(engine.probabilities(np.concatenate(list(preprocessed(paths, config)))))
    stacked = np.concatenate(probabilities)
    predictions = stacked.argmax(axis=1)
    labels = np.array([label for _, label in test])
    return Evaluation(float((predictions == labels).mean()), predictions, stacked)


# ---------------------------------------------------------------- the artifact's part


def write_openvino_models(
    model: nn.Module, model_dir: Path, config: PreprocessConfig, data: QuantizationData
) -> dict[str, Any]:
    """Writes the fp32 and int8 OpenVINO models into ``model_dir``; their record for ``metrics.json``."""
    import nncf
    import openvino as ov

    if not data.calibration:
        raise TrainingError(f"no {data.calibration_split} images to calibrate the int8 model with")
    started = time.monotonic()
    fp32_path, int8_path = model_dir / artifact.OPENVINO_FP32_FILE, model_dir / artifact.OPENVINO_INT8_FILE
    fp32_path.parent.mkdir(parents=True, exist_ok=True)
    converted = convert(model, config.image_size)
    ov.save_model(converted, fp32_path, compress_to_fp16=False)
    check_conversion(model, fp32_path, config.image_size)

    calibration = list(preprocessed(data.calibration, config))
    ov.save_model(quantize_int8(converted, calibration), int8_path, compress_to_fp16=False)
    quantized_s = time.monotonic() - started

    fp32 = evaluate(engines.OpenVINOEngine(fp32_path, engines.FP32), data.test, config)
    int8 = evaluate(engines.OpenVINOEngine(int8_path, engines.INT8), data.test, config)
    record = {
        "engine": "openvino",
        "versions": {"openvino": ov.__version__, "nncf": nncf.__version__},
        "calibration": {"split": data.calibration_split, "images": len(calibration)},
        "fp32": {"file": artifact.OPENVINO_FP32_FILE, "test_accuracy": fp32.accuracy},
        "int8": {"file": artifact.OPENVINO_INT8_FILE, "test_accuracy": int8.accuracy},
        engines.DIFFERENCE_KEY: round(100 * (int8.accuracy - fp32.accuracy), 4),
        "int8_top1_agreement": float((int8.predictions == fp32.predictions).mean()),
        "int8_max_probability_difference": float(np.abs(int8.probabilities - fp32.probabilities).max()),
        "test_images": len(data.test),
        "seconds": {"convert_and_quantize": round(quantized_s, 1),
                    "evaluate": round(time.monotonic() - started - quantized_s, 1)},
    }
    logger.info(
        "OpenVINO models: fp32 test top-1 %.4f, int8 %.4f (%+.2f points; top-1 agreement %.4f), "
        "calibrated on %d %s images, in %.0f s",
        fp32.accuracy, int8.accuracy, record[engines.DIFFERENCE_KEY], record["int8_top1_agreement"],
        len(calibration), data.calibration_split, time.monotonic() - started,
    )
    return record
