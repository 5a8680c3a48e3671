"""Run the training entry on the host exactly as SageMaker runs it in the training container.

    python -m scripts.local.train --data DATA --out OUT [--channels NAME ...] [--nproc 2] [--epochs 2 ...]
    make train-local DATA=DATA OUT=OUT [NPROC=2] HP="--epochs 2 --model-name resnet18"

OUT is laid out like ``/opt/ml`` (``scripts.local.opt_ml.lay_out``, ``code/`` copied in), then the
training toolkit's ``train`` command from ``.venv/train`` runs with ``SAGEMAKER_BASE_DIR=OUT``
and ``SAGEMAKER_PROGRAM=train.py``, through the image's framework module (``train_launcher``).
Afterwards OUT holds ``model/``, ``output/success`` or ``output/failure``, ``output/data/`` (the
trainer's evidence, smdebug tensors included) and ``checkpoints/``.

``--nproc N`` (N > 1) asks for data-parallel training as a job does (``sagemaker_*``
hyperparameters): the toolkit starts torchrun, which runs N trainer processes on this host (gloo on
the CPU, or one per GPU), meeting on a free loopback port; one artifact comes out.

One channel (default ``training``) gets DATA itself; several channels (``train valid test``)
get ``DATA/<channel>`` each. SIGTERM/SIGINT go to the whole process group, as ``docker stop``
does through an init that forwards signals: train.py saves a checkpoint and exits, and the
toolkit, which ignores them, reports the outcome.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from classifier.dataset import COMBINED_CHANNEL
from classifier.distribution import distribution_hyperparameters
from classifier.hyperparameters import parse_name_value_pairs
from scripts import REPO_ROOT
from scripts.local import opt_ml
from scripts.local.server import free_port

CODE_DIR = REPO_ROOT / "code"
TOOLKIT_TRAIN = REPO_ROOT / ".venv" / "train" / "bin" / "train"
PROGRAM = "train.py"
# The toolkit's framework module (docker/train/Dockerfile sets the same): it starts torchrun or train.py.
TRAINING_MODULE = "train_launcher:main"
DEFAULT_CHANNELS = (COMBINED_CHANNEL,)


def channel_folders(data_dir: Path, channels: Sequence[str]) -> dict[str, Path]:
    """One channel gets ``data_dir``; several get ``data_dir/<channel>`` each."""
    if len(channels) == 1:
        return {channels[0]: Path(data_dir)}
    return {channel: Path(data_dir) / channel for channel in channels}


def training_env(base_dir: Path, master_port: int | None = None) -> dict[str, str]:
    """The host environment minus anything SageMaker would set, plus the toolkit's contract.

    As in the image, the toolkit imports its framework module from the code folder, and torchrun
    is found beside it; ``master_port`` is where torchrun's processes meet (default: a free one).
    """
    env = {
        key: value
        for key, value in os.environ.items()
        # The repository's code/ on PYTHONPATH would be imported rather than the copy in OUT/code.
        if not key.startswith(("SM_", "SAGEMAKER_", "PET_")) and key != "PYTHONPATH"
    }
    env.update(
        SAGEMAKER_BASE_DIR=str(base_dir), SAGEMAKER_PROGRAM=PROGRAM, PYTHONUNBUFFERED="1",
        SAGEMAKER_TRAINING_MODULE=TRAINING_MODULE, PYTHONPATH=str(base_dir / "code"),
        PATH=os.pathsep.join([str(TOOLKIT_TRAIN.parent), env.get("PATH", os.defpath)]),
        # torchrun's default port (29500) would clash with any other run on this machine.
        PET_MASTER_PORT=str(master_port or free_port()),
    )
    return env


def with_processes(hyperparameters: Mapping[str, object], processes: int) -> dict[str, object]:
    """The hyperparameters, plus the distribution settings a job with ``processes`` per host carries."""
    if processes < 1:
        raise ValueError(f"the number of processes must be at least 1, got {processes}")
    extra = distribution_hyperparameters(True, processes) if processes > 1 else {}
    return {**hyperparameters, **extra}


def _ignore_stop_signals() -> None:
    # Runs in the toolkit's process before exec: it must outlive train.py to report the outcome;
    # train.py installs its own handlers (an ignored signal stays ignored across exec).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_training(
    data_dir: Path,
    out_dir: Path,
    hyperparameters: Mapping[str, object],
    channels: Sequence[str] = DEFAULT_CHANNELS,
    capture_output: bool = True,
    code_dir: Path = CODE_DIR,
    input_mode: str = "File",
    processes: int = 1,
) -> subprocess.Popen:
    """Lays out ``out_dir`` and starts the toolkit in its own process group (see ``stop_training``).

    With ``capture_output`` the log (stdout and stderr) is readable from ``process.stdout``.
    ``code_dir`` is what the image would hold in ``/opt/ml/code`` (default: this repository's);
    ``input_mode`` what ``inputdataconfig.json`` declares (``File``, ``FastFile``).
    ``processes`` > 1: data-parallel training with that many processes (torchrun).
    """
    if not TOOLKIT_TRAIN.exists():
        raise FileNotFoundError(f"{TOOLKIT_TRAIN} not found: run `make setup` first")
    hyperparameters = with_processes(hyperparameters, processes)
    folders = channel_folders(data_dir, channels)
    base = opt_ml.lay_out(out_dir, folders, hyperparameters, code_dir=code_dir, input_mode=input_mode)
    for outcome in ("success", "failure"):  # a fresh container has neither
        (base / "output" / outcome).unlink(missing_ok=True)
    return subprocess.Popen(
        [str(TOOLKIT_TRAIN)],
        cwd=base,
        env=training_env(base),
        stdout=subprocess.PIPE if capture_output else None,
        stderr=subprocess.STDOUT if capture_output else None,
        text=True,
        start_new_session=True,
        preexec_fn=_ignore_stop_signals,
    )


def stop_training(process: subprocess.Popen, signum: int = signal.SIGTERM) -> None:
    """Sends ``signum`` to the run's whole process group (toolkit, train.py, loader workers)."""
    with contextlib.suppress(ProcessLookupError):  # the run has already ended
        os.killpg(process.pid, signum)


def run_training(
    data_dir: Path,
    out_dir: Path,
    hyperparameters: Mapping[str, object],
    channels: Sequence[str] = DEFAULT_CHANNELS,
    timeout: float | None = None,
    code_dir: Path = CODE_DIR,
    input_mode: str = "File",
    processes: int = 1,
) -> subprocess.CompletedProcess:
    """Runs a whole training job; ``.stdout`` holds its log, ``.returncode`` the toolkit's status.

    After ``timeout`` seconds the run is killed and ``subprocess.TimeoutExpired`` raised.
    """
    process = start_training(
        data_dir, out_dir, hyperparameters, channels, code_dir=code_dir, input_mode=input_mode,
        processes=processes,
    )
    try:
        log, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_training(process, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s --data DATA --out OUT [--channels NAME ...] [--nproc N] [--hyperparameter value ...]",
    )
    parser.add_argument("--data", type=Path, required=True, help="the dataset folder (train/ valid/ test/)")
    parser.add_argument("--out", type=Path, required=True, help="the folder to lay out as /opt/ml")
    parser.add_argument("--channels", nargs="+", default=list(DEFAULT_CHANNELS),
                        help="input channel names (default: training)")
    parser.add_argument("--input-mode", default="File",
                        help="the input mode inputdataconfig.json declares (File, FastFile)")
    parser.add_argument("--nproc", type=int, default=1,
                        help="training processes (data-parallel, torchrun) on this host (default: 1)")
    args, hyperparameter_args = parser.parse_known_args(argv)
    try:
        hyperparameters = parse_name_value_pairs(hyperparameter_args)
    except ValueError as error:
        parser.error(str(error))

    if args.nproc < 1:
        parser.error(f"--nproc must be at least 1, got {args.nproc}")
    process = start_training(
        args.data, args.out, hyperparameters, args.channels, capture_output=False,
        input_mode=args.input_mode, processes=args.nproc,
    )
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda received, _frame: stop_training(process, received))
    status = process.wait()

    failure = args.out.resolve() / "output" / "failure"
    if failure.is_file():
        print(f"\ntraining FAILED (exit {status}): {failure.read_text().strip()}", file=sys.stderr)
    else:
        print(f"\ntraining done (exit {status}): model in {args.out.resolve() / 'model'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
