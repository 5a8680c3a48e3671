"""int8 against fp32 on real images: a model trained on the UCI digits, its recorded test top-1.

    python -m scripts.bench.int8_accuracy        # trains (or reuses) the model, prints its record

The serving benchmark's accuracy check. The trainer itself (``code/train.py`` through the training
toolkit, in ``.venv/train``) trains a ResNet18 from scratch on the digits (``scripts.datasets.digits``:
real scans, 10 classes, 1258/269/270 images) at 224 px, exports the OpenVINO fp32 and int8 models
(int8 calibrated on training images) and evaluates both on the test split; this module reads that
record from ``metrics.json``. The run is cached under ``CACHE_DIR/bench`` by its recipe and by the
trainer's export code, so a re-run of the benchmark does not train again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

from classifier import artifact, engines
from scripts import CACHE_DIR, REPO_ROOT
from scripts.datasets.digits import make_digits_dataset
from scripts.local.train import run_training

DIGITS_IMAGE_SIZE = 256  # stored size of the scans; the recipe crops 224 as for ImageNet models
RECIPE = {
    "model-name": "resnet18", "pretrained": False, "fine-tune": "all", "image-size": 224,
    "batch-size": 32, "epochs": 3, "optimizer": "adamw", "learning-rate": 0.002, "warmup-epochs": 0,
    "label-smoothing": 0.0, "workers": 1, "seed": 0, "debugger": False, "resource-sample-seconds": 30,
}  # fmt: skip
# What the cached run's record depends on besides the recipe: how the trainer makes and evaluates
# the OpenVINO models. (A change elsewhere in the trainer that matters: delete CACHE_DIR/bench/digits-*.)
EXPORT_CODE = ("code/classifier/export.py", "code/classifier/quantize.py", "code/classifier/preprocessing.py")
TRAINING_TIMEOUT_S = 3 * 3600


def cache_key() -> str:
    digest = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode())
    for name in EXPORT_CODE:
        digest.update((REPO_ROOT / name).read_bytes())
    return digest.hexdigest()[:12]


def trained_digits_model(cache: Path = CACHE_DIR / "bench") -> Path:
    """The artifact folder of the digits run: trained now, or taken from the cache."""
    run_dir = cache / f"digits-{RECIPE['model-name']}-{cache_key()}"
    model_dir = run_dir / "model"
    if (model_dir / artifact.METRICS_FILE).is_file():
        return model_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    data = make_digits_dataset(cache / "digits-data", image_size=DIGITS_IMAGE_SIZE, seed=0)
    print(f"[int8-accuracy] training {RECIPE['model-name']} on the digits in {run_dir} (cached after)",
          flush=True)
    result = run_training(data, run_dir / "opt_ml", RECIPE, timeout=TRAINING_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"the digits training failed ({result.returncode}):\n{result.stdout[-4000:]}")
    shutil.copytree(run_dir / "opt_ml" / "model", model_dir)
    return model_dir


def accuracy_record(model_dir: Path) -> dict:
    """The torch fp32 test top-1 and the OpenVINO models' record of the trainer's ``metrics.json``."""
    metrics = json.loads((model_dir / artifact.METRICS_FILE).read_text())
    return {"torch_fp32": metrics["test"]["test_accuracy"], **metrics[engines.QUANTIZATION_KEY]}


def main() -> None:
    model_dir = trained_digits_model()
    print(json.dumps({"model_dir": str(model_dir), **accuracy_record(model_dir)}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
