"""The layout of the model artifact (``SM_MODEL_DIR``, packed by SageMaker as ``model.tar.gz``).

The trainer writes these files and the serving image reads them; neither spells a name itself.
The artifact is self-contained: the serving code it needs travels in ``code/``.
"""

from __future__ import annotations

from pathlib import Path

MODEL_FILE = "model.pt2"  # torch.export program: loads with torch alone, dynamic batch size
CLASSES_FILE = "classes.json"  # ordered class names: index i is the model's output i
PREPROCESS_FILE = "preprocess.json"  # classifier.preprocessing.PreprocessConfig
METRICS_FILE = "metrics.json"  # per-epoch and test metrics, hyperparameters
CODE_DIR = "code"  # inference.py and the modules it imports

# What the serving code needs from code/, relative to the source code folder.
SERVING_CODE_FILES = (
    "inference.py",
    "classifier/__init__.py",
    "classifier/artifact.py",
    "classifier/preprocessing.py",
    "classifier/protocol.py",
)

REQUIRED_FILES = (MODEL_FILE, CLASSES_FILE, PREPROCESS_FILE, METRICS_FILE, f"{CODE_DIR}/inference.py")


def missing_files(model_dir: str | Path) -> list[str]:
    """The required artifact files absent from ``model_dir`` (empty when the artifact is whole)."""
    root = Path(model_dir)
    return [name for name in REQUIRED_FILES if not (root / name).is_file()]
