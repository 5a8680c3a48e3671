"""The SageMaker training-container contract: where things are, read from the environment.

SageMaker lays out ``/opt/ml`` and the training toolkit exports ``SM_*`` variables; outside
SageMaker the toolkit honours ``SAGEMAKER_BASE_DIR`` instead of ``/opt/ml``, and so do we.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from classifier.artifact import TENSORS_DIR
from classifier.errors import TrainingError

logger = logging.getLogger(__name__)

DEFAULT_BASE_DIR = "/opt/ml"
DEBUGGER_CONFIG_FILE = "input/config/debughookconfig.json"
INPUT_DATA_CONFIG_FILE = "input/config/inputdataconfig.json"
# Input modes that give the container files: File (copied before start), FastFile (streamed from S3
# on first read). Pipe gives one stream of records per epoch, which an ImageFolder is not.
FILE_INPUT_MODES = ("File", "FastFile")
# SageMaker's failure reason shows the first 1024 characters of output/failure.
FAILURE_REASON_LIMIT = 1024


def base_dir() -> Path:
    return Path(os.environ.get("SAGEMAKER_BASE_DIR", DEFAULT_BASE_DIR))


def model_dir() -> Path:
    return Path(os.environ.get("SM_MODEL_DIR", base_dir() / "model"))


def output_dir() -> Path:
    return Path(os.environ.get("SM_OUTPUT_DIR", base_dir() / "output"))


def output_data_dir() -> Path:
    return Path(os.environ.get("SM_OUTPUT_DATA_DIR", output_dir() / "data"))


def checkpoint_dir() -> Path:
    """Synced to S3 by SageMaker when the job sets CheckpointConfig (spot training)."""
    return Path(os.environ.get("SM_CHECKPOINT_DIR", base_dir() / "checkpoints"))


def debugger_out_dir() -> Path:
    """Where the local smdebug hook writes when SageMaker gave no Debugger configuration: in the
    output data folder, which SageMaker uploads (``output.tar.gz``) with or without Debugger."""
    return output_data_dir() / TENSORS_DIR


def debugger_config_file() -> Path:
    return base_dir() / DEBUGGER_CONFIG_FILE


def channels() -> dict[str, Path]:
    """The input channels, by name: ``SM_CHANNEL_TRAINING`` -> ``{"training": Path(...)}``."""
    prefix = "SM_CHANNEL_"
    return {
        key[len(prefix):].lower(): Path(value)
        for key, value in os.environ.items()
        if key.startswith(prefix)
    }


def input_data_config() -> dict:
    """Each channel's settings (``TrainingInputMode``, ``S3DistributionType`` ...), from
    ``SM_INPUT_DATA_CONFIG`` (set by the toolkit) or ``input/config/inputdataconfig.json``; empty
    when neither exists."""
    text = os.environ.get("SM_INPUT_DATA_CONFIG")
    if text is None:
        path = base_dir() / INPUT_DATA_CONFIG_FILE
        text = path.read_text() if path.is_file() else "{}"
    return json.loads(text)


def input_modes() -> dict[str, str]:
    """Each input channel's mode (``File``, ``FastFile`` or ``Pipe``)."""
    return {channel: spec.get("TrainingInputMode", "File") for channel, spec in input_data_config().items()}


def check_input_modes() -> dict[str, str]:
    """Fails for a channel the trainer cannot read as files; logs the mode of each channel."""
    modes = input_modes()
    piped = sorted(channel for channel, mode in modes.items() if mode not in FILE_INPUT_MODES)
    if piped:
        raise TrainingError(
            f"channel(s) {piped} use input mode {modes[piped[0]]}, which streams records rather than "
            f"files; this trainer reads image folders: use input mode File or FastFile"
        )
    for channel, mode in sorted(modes.items()):
        logger.info(
            "channel %s: input mode %s%s", channel, mode,
            " (files stream from S3 on first read)" if mode == "FastFile" else "",
        )
    return modes


def num_gpus() -> int:
    return int(os.environ.get("SM_NUM_GPUS", "0"))


def num_cpus() -> int:
    return int(os.environ.get("SM_NUM_CPUS", str(os.cpu_count() or 1)))


def hyperparameters() -> dict:
    """``SM_HPS``: the job's hyperparameters as JSON (the same values the CLI arguments carry)."""
    return json.loads(os.environ.get("SM_HPS", "{}"))


def write_failure(reason: str) -> Path:
    """Writes ``output/failure``; SageMaker reports its start as the job's FailureReason.

    The toolkit writes this file only when it is absent, so ours, written first, is kept.
    """
    path = output_dir() / "failure"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(reason.strip() + "\n")
    return path
