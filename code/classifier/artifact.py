"""The names of what the trainer writes: the model artifact, and the evidence beside it.

The artifact (``SM_MODEL_DIR``, packed by SageMaker as ``model.tar.gz``) is what the serving
image reads; it is self-contained: the serving code it needs travels in ``code/``. The evidence
in ``output/data`` (uploaded as ``output.tar.gz`` however the job ends) is what the report reads;
a copy of it beside the checkpoint (``checkpoints/evidence``, synced to S3 while the job runs)
lets a running job be reported on. No reader or writer spells a name itself. Standard library
only: the launchers and the report import it.
"""

from __future__ import annotations

from pathlib import Path

MODEL_FILE = "model.pt2"  # torch.export program: loads with torch alone, dynamic batch size
# The same weights for OpenVINO (classifier.quantize): IR files (.xml graph, .bin weights beside it),
# dynamic batch size, normalised CHW float32 input like MODEL_FILE. Absent from older artifacts.
OPENVINO_FP32_FILE = "openvino/model-fp32.xml"
OPENVINO_INT8_FILE = "openvino/model-int8.xml"  # post-training int8 (NNCF), calibrated on train images
CLASSES_FILE = "classes.json"  # ordered class names: index i is the model's output i
PREPROCESS_FILE = "preprocess.json"  # classifier.preprocessing.PreprocessConfig
METRICS_FILE = "metrics.json"  # per-epoch and test metrics, hyperparameters
CODE_DIR = "code"  # inference.py and the modules it imports
# In output/data: CPU, memory and GPU samples, one JSON object per line (classifier.resources).
RESOURCE_USAGE_FILE = "resource_usage.jsonl"
# In output/data: each training step's duration and wait for data, one JSON object per line
# (classifier.step_timing).
STEP_TIMINGS_FILE = "step_timings.jsonl"
# In output/data: the finished epochs' metrics so far, one JSON object per line (classifier.evidence).
EPOCHS_FILE = "epochs.jsonl"
# In output/data: the smdebug output of the trainer's local default hook (classifier.debugger).
TENSORS_DIR = "tensors"
# In the checkpoint folder: the live copy of output/data (classifier.evidence).
LIVE_EVIDENCE_DIR = "evidence"

# What the serving code needs from code/, relative to the source code folder.
SERVING_CODE_FILES = (
    "inference.py",
    "classifier/__init__.py",
    "classifier/artifact.py",
    "classifier/engines.py",
    "classifier/preprocessing.py",
    "classifier/protocol.py",
)

REQUIRED_FILES = (MODEL_FILE, CLASSES_FILE, PREPROCESS_FILE, METRICS_FILE, f"{CODE_DIR}/inference.py")


def weights_file(graph_file: str) -> str:
    """The ``.bin`` weights beside an OpenVINO ``.xml`` graph."""
    return str(Path(graph_file).with_suffix(".bin"))


def missing_files(model_dir: str | Path) -> list[str]:
    """The required artifact files absent from ``model_dir`` (empty when the artifact is whole)."""
    root = Path(model_dir)
    return [name for name in REQUIRED_FILES if not (root / name).is_file()]
