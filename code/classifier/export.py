"""Writes the model artifact (``SM_MODEL_DIR``), self-contained for the serving image.

The network is exported with ``torch.export`` (dynamic batch size), so serving needs torch
alone: no torchvision, no training code. Beside it: the ordered class names, the evaluation
preprocessing, the metrics, and the serving code in ``code/``; with quantization data, the same
weights as OpenVINO fp32 and int8 models too (``classifier.quantize``). File names: ``artifact.py``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from classifier import artifact, engines, quantize
from classifier.errors import TrainingError
from classifier.preprocessing import PreprocessConfig

logger = logging.getLogger(__name__)

# The example batch must not be 0 or 1: torch.export specialises on those sizes.
EXAMPLE_BATCH = 2
# Exported and eager outputs must agree this closely (float32, same kernels).
EXPORT_TOLERANCE = 1e-4


def check_serving_code(code_dir: Path) -> None:
    """Fails (before any training) if the serving code the artifact must carry is missing."""
    missing = [name for name in artifact.SERVING_CODE_FILES if not (code_dir / name).is_file()]
    if missing:
        raise TrainingError(
            f"serving code missing from {code_dir}: {missing}; the model artifact carries it in "
            f"{artifact.CODE_DIR}/ so that the serving image can load the model"
        )


def export_program(model: nn.Module, image_size: int, path: Path) -> None:
    """Exports ``model`` (float32, CPU, eval mode) with a dynamic batch size and checks the result."""
    model = model.eval().cpu().float()
    example = torch.randn(EXAMPLE_BATCH, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)

    reloaded = torch.export.load(path).module()
    with torch.no_grad():
        for size in (1, 3):
            images = torch.randn(size, 3, image_size, image_size)
            difference = (reloaded(images) - model(images)).abs().max().item()
            if not difference <= EXPORT_TOLERANCE:
                raise RuntimeError(f"exported model is off by {difference} on a batch of {size}")


def metrics_document(
    hyperparameters: dict[str, Any],
    epochs: list[dict[str, float]],
    best_epoch: int,
    test: dict[str, float],
    num_classes: int,
    bad_images: dict[str, int],
) -> dict[str, Any]:
    """The content of ``metrics.json`` (format fixed in the project's contracts)."""
    return {
        "hyperparameters": hyperparameters,
        "epochs": epochs,
        "best_epoch": best_epoch,
        "test": test,
        "num_classes": num_classes,
        "bad_images": bad_images,
    }


def copy_serving_code(code_dir: Path, model_dir: Path) -> None:
    target = model_dir / artifact.CODE_DIR
    shutil.rmtree(target, ignore_errors=True)
    for name in artifact.SERVING_CODE_FILES:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(code_dir / name, target / name)


def write_artifact(
    model_dir: Path,
    model: nn.Module,
    class_names: list[str],
    image_size: int,
    metrics: dict[str, Any],
    code_dir: Path,
    quantization: quantize.QuantizationData | None = None,
) -> None:
    """Writes every file of the artifact into ``model_dir`` and checks that none is missing.

    With ``quantization``, the OpenVINO fp32 and int8 models too, and their test accuracy in the metrics.
    """
    check_serving_code(code_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    export_program(model, image_size, model_dir / artifact.MODEL_FILE)
    shutil.rmtree(model_dir / Path(artifact.OPENVINO_FP32_FILE).parent, ignore_errors=True)
    if quantization is not None:
        record = quantize.write_openvino_models(
            model, model_dir, PreprocessConfig.for_image_size(image_size), quantization
        )
        torch_accuracy = metrics.get("test", {}).get("test_accuracy")
        if torch_accuracy is not None and torch_accuracy != record["fp32"]["test_accuracy"]:
            logger.warning(
                "OpenVINO fp32 test top-1 %.4f differs from torch's %.4f (float rounding near a tie)",
                record["fp32"]["test_accuracy"], torch_accuracy,
            )
        metrics = {**metrics, engines.QUANTIZATION_KEY: record}
    (model_dir / artifact.CLASSES_FILE).write_text(json.dumps(class_names, indent=2) + "\n")
    PreprocessConfig.for_image_size(image_size).save(model_dir / artifact.PREPROCESS_FILE)
    (model_dir / artifact.METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    copy_serving_code(code_dir, model_dir)
    missing = artifact.missing_files(model_dir)
    if missing:
        raise RuntimeError(f"artifact in {model_dir} is incomplete: {missing}")
    logger.info("artifact written to %s: %s", model_dir, sorted(p.name for p in model_dir.iterdir()))
