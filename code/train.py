"""Train a ResNet image classifier on ImageFolder data: the SageMaker training entry.

The training toolkit runs ``python train.py --learning-rate 0.01 --epochs 10 ...`` (the job's
hyperparameters, names in ``classifier/hyperparameters.py``) with the container contract in
``SM_*`` variables: input channels, model folder, GPUs and CPUs. This script then

1. lists and checks the data (``classifier.data``; images are decoded as they are loaded,
   unreadable ones skipped and counted by ``classifier.bad_images``),
2. builds the network (``classifier.models``) and the optimizer and schedule,
3. trains, validating every epoch, with the smdebug hook watching, a checkpoint after every
   epoch, the best weights by validation loss kept and early stopping (the run's state is one
   ``classifier.training_state.TrainingState``, saved to and restored from the checkpoint),
4. evaluates the best weights on the test split,
5. writes the artifact for the serving image (``classifier.export``).

Metric lines (``classifier.metrics``) go to stdout, where SageMaker's metric regexes read them.
Every failure leaves its reason in ``output/failure`` and a non-zero exit status; SIGTERM
(StopTrainingJob, spot interruption) saves a checkpoint first, and the next run resumes from it.

Under torchrun (``train_launcher.py``) the same script is one of several data-parallel processes
(``classifier.distributed``): each takes its share of every split and of the global batch, DDP
averages the gradients, the tallies are summed over processes, and rank 0 alone prints the
metric lines and writes checkpoints and the artifact.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import NoReturn

import numpy as np
import psutil
import torch
from torch import nn
from torch.utils.data import DataLoader

from classifier import checkpoints, distributed, export, models, optimization, quantize, sagemaker_env
from classifier.artifact import LIVE_EVIDENCE_DIR, RESOURCE_USAGE_FILE
from classifier.bad_images import CountingLoader
from classifier.checkpoint_writer import CheckpointWriter
from classifier.checkpoints import StopSignal
from classifier.data import ImageFolderSplits, bad_image_counts, build_loaders, load_splits, readable_splits
from classifier.debugger import Debugger
from classifier.errors import TrainingError
from classifier.evidence import NoEvidence, TrainingEvidence
from classifier.hyperparameters import build_parser
from classifier.metrics import TOP_K, format_epoch_line, format_test_line
from classifier.resources import ResourceSampler
from classifier.training_state import EarlyStopping, TrainingState

logger = logging.getLogger("train")

CODE_DIR = Path(__file__).resolve().parent
Batch = tuple[torch.Tensor, torch.Tensor]


class TrainingStopped(Exception):
    """SIGTERM or SIGINT arrived: a checkpoint is saved and the run ends without an artifact."""

    def __init__(self, signum: signal.Signals, when: str, checkpoint: Path, resume_epoch: int):
        super().__init__(
            f"stopped by {signum.name} {when}; checkpoint saved to {checkpoint}; "
            f"a new run with the same checkpoints resumes at epoch {resume_epoch}"
        )
        self.signum = signum


def parse_hyperparameters(argv: list[str] | None = None) -> argparse.Namespace:
    """The hyperparameters from the command line, or from ``SM_HPS`` when there is none."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # started without the toolkit's arguments: the job's values are in SM_HPS too
        argv = [f"--{name}={value}" for name, value in sagemaker_env.hyperparameters().items()]
    parser = build_parser()

    def reject(message: str) -> NoReturn:
        raise TrainingError(f"invalid hyperparameters: {message}")

    parser.error = reject  # report through output/failure rather than argparse's exit(2)
    return parser.parse_args(argv)


def seed_everything(seed: int | None) -> None:
    """With a seed, the run repeats exactly (deterministic kernels); without, it runs fastest."""
    if seed is None:
        torch.backends.cudnn.benchmark = True
        return
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def select_device() -> torch.device:
    cluster = distributed.current()
    if torch.cuda.is_available() and not cluster.enabled and sagemaker_env.num_gpus() > 1:
        logger.warning(
            "%d GPUs found but one training process uses one; the job turned distribution off",
            sagemaker_env.num_gpus(),
        )
    return cluster.device()


def select_workers(
    requested: int | None, device: torch.device, streaming: bool = False, processes_per_host: int = 1
) -> int:
    """Data-loader worker processes: as asked, else this host's CPUs (shared among its training
    processes) to feed a GPU or to wait on files streaming from S3 (FastFile), and none when a CPU
    trains on local files.

    Training on the CPU, the model step already runs on every core (intra-op threads); worker
    processes would compete with it for the same cores, and decoding a batch costs a few percent
    of a CPU step, so the batch is loaded in the training process itself.
    """
    if requested is not None:
        return requested
    if device.type == "cuda" or streaming:
        return max(1, sagemaker_env.num_cpus() // processes_per_host)
    return 0


class Tally:
    """Loss, accuracy and top-k accuracy of a pass, summed on the device (no synchronisation per step)."""

    def __init__(self, device: torch.device, top_k: int = TOP_K):
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.correct_top_k = torch.zeros((), device=device, dtype=torch.long)
        self.top_k = top_k
        self.seen = 0

    def add(self, loss: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.loss_sum += loss.detach().float() * targets.size(0)
        self.correct += (outputs.argmax(dim=1) == targets).sum()
        # With fewer classes than k, every class is in the top k: top-k accuracy is 1.
        top = outputs.topk(min(self.top_k, outputs.size(1)), dim=1).indices
        self.correct_top_k += (top == targets.unsqueeze(1)).any(dim=1).sum()
        self.seen += targets.size(0)

    def result(self) -> tuple[float, float, float]:
        """(mean loss, accuracy, top-k accuracy), over every training process's share."""
        loss_sum, correct, correct_top_k, seen = distributed.sum_across_ranks(
            self.loss_sum.item(), self.correct.item(), self.correct_top_k.item(), self.seen
        )
        return loss_sum / max(seen, 1), correct / max(seen, 1), correct_top_k / max(seen, 1)


def forward(
    model: nn.Module, criterion: nn.Module, images: torch.Tensor, targets: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Moves a batch to the device and runs it: (outputs, loss, targets). Mixed precision on CUDA.

    Channels-last on every device: cuDNN's and oneDNN's fastest convolutions use that layout.
    """
    on_gpu = device.type == "cuda"
    images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
    targets = targets.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.float16, enabled=on_gpu):
        outputs = model(images)
        return outputs, criterion(outputs, targets), targets


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    stop: StopSignal,
    gradient_clip_norm: float = 0.0,
    before_step: Callable[[int], None] | None = None,
) -> tuple[float, float]:
    """One pass over the training data: (mean loss, accuracy). Ends early when a stop is requested.

    With ``gradient_clip_norm`` > 0 the gradients' global L2 norm is clipped to it before each step;
    ``before_step`` (the warmup's learning rate) is called with each step's 0-based index first.
    """
    model.train()
    tally = Tally(device)
    for step, (images, targets) in enumerate(loader):
        if before_step is not None:
            before_step(step)
        outputs, loss, targets = forward(model, criterion, images, targets, device)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if gradient_clip_norm > 0:
            scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
            nn.utils.clip_grad_norm_(model.parameters(), gradient_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        tally.add(loss, outputs, targets)
        if stop.requested:
            break
    loss, accuracy, _ = tally.result()
    return loss, accuracy


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: DataLoader, criterion: nn.Module, device: torch.device
) -> tuple[float, float, float]:
    """(mean loss, accuracy, top-5 accuracy) over a split, with the serving preprocessing."""
    model.eval()
    tally = Tally(device)
    for images, targets in loader:
        outputs, loss, targets = forward(model, criterion, images, targets, device)
        tally.add(loss, outputs, targets)
    return tally.result()


def announcing_first_batch(loader: Iterable[Batch]) -> Iterator[Batch]:
    """``loader``'s batches; the first one logs how long after the process's start it came."""
    batches = iter(loader)
    first = next(batches, None)
    if first is None:
        return
    logger.info(
        "first training batch ready %.1f s after train.py started",
        time.time() - psutil.Process().create_time(),
    )
    yield first
    yield from batches


def check_finite(name: str, value: float, epoch: int) -> None:
    if not math.isfinite(value):
        raise TrainingError(
            f"{name} is {value} in epoch {epoch}: training diverged; "
            "lower the learning-rate or raise warmup-epochs"
        )


def build_training_state(
    args: argparse.Namespace, class_folders: list[str], device: torch.device
) -> TrainingState:
    """The network, optimizer, schedule and gradient scaler of a fresh run."""
    model = models.build_model(
        args.model_name, len(class_folders), args.pretrained, args.weights_path, args.fine_tune
    )
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = optimization.build_optimizer(
        model, args.optimizer, args.learning_rate, args.momentum, args.weight_decay
    )
    return TrainingState(
        model,
        optimizer,
        optimization.build_scheduler(optimizer, args.epochs, args.warmup_epochs, args.lr_schedule),
        torch.amp.GradScaler(device.type, enabled=device.type == "cuda"),
        identity={"model_name": args.model_name, "class_folders": class_folders},
    )


def train_epochs(
    state: TrainingState,
    args: argparse.Namespace,
    loaders: dict[str, DataLoader],
    criterion: nn.Module,
    device: torch.device,
    debugger: Debugger,
    stop: StopSignal,
    checkpoint_dir: Path,
    evidence: TrainingEvidence | NoEvidence,
) -> None:
    """Trains from ``state.next_epoch`` until the last epoch or early stopping, a checkpoint after each
    (written in the background while the next epoch trains; on the way out, an error included, the
    process waits for it: the writer's thread is not a daemon), and the evidence (step timings,
    epochs so far, their live copy). Under data-parallel training rank 0 alone writes them."""
    cluster = distributed.current()
    writer = CheckpointWriter(checkpoint_dir)
    stopping = EarlyStopping.after_warmup(
        args.early_stopping_patience, args.early_stopping_min_delta, args.warmup_epochs
    )
    first_epoch = state.next_epoch
    while state.next_epoch <= args.epochs and not state.early_stopped:
        epoch, started = state.next_epoch, time.monotonic()
        debugger.train()
        distributed.begin_epoch(loaders["train"], epoch)
        batches = announcing_first_batch(loaders["train"]) if epoch == first_epoch else loaders["train"]
        warmup = optimization.warmup_for_epoch(
            state.optimizer, epoch - 1, len(loaders["train"]), args.warmup_epochs
        )
        train_loss, train_accuracy = train_one_epoch(
            cluster.wrap(state.model), evidence.timed(batches, epoch), criterion, state.optimizer,
            state.scaler, device, stop, args.gradient_clip_norm, warmup,
        )
        trained, learning_rate = time.monotonic(), state.learning_rate  # the epoch's last step's
        if stop.requested:
            # Mid-epoch: keep the weights reached so far; the next run repeats this epoch.
            def save_now() -> Path:
                writer.wait()
                return state.save(checkpoint_dir)

            path = cluster.save_on_primary(save_now)
            raise TrainingStopped(stop.received, f"during epoch {epoch} of {args.epochs}", path, epoch)
        check_finite("the training loss", train_loss, epoch)
        cluster.sync_buffers(state.model)
        debugger.eval()
        valid_loss, valid_accuracy, valid_top5 = evaluate(state.model, loaders["valid"], criterion, device)
        check_finite("the validation loss", valid_loss, epoch)
        state.scheduler.step()
        validated = time.monotonic()

        if cluster.is_primary:
            print(format_epoch_line(
                epoch, train_loss, train_accuracy, valid_loss, valid_accuracy, valid_top5
            ), flush=True)
        state.end_epoch({
            "epoch": epoch, "train_loss": train_loss, "train_accuracy": train_accuracy,
            "valid_loss": valid_loss, "valid_accuracy": valid_accuracy, "valid_top5_accuracy": valid_top5,
            "learning_rate": learning_rate, "seconds": round(validated - started, 3),
        }, stopping)
        path = cluster.save_on_primary(lambda: writer.save(state, at_epoch_end=True))
        evidence.end_epoch(state.history)
        done = time.monotonic()
        logger.info(
            "epoch %d/%d done in %.1f s (train %.1f s, validation %.1f s, checkpoint and evidence %.1f s; "
            "learning rate %.3g); best epoch %d; checkpoint %s",
            epoch, args.epochs, done - started, trained - started, validated - trained, done - validated,
            learning_rate, state.best.epoch, path,
        )
        if stop.requested:
            writer.wait()
            raise TrainingStopped(stop.received, f"after epoch {epoch} of {args.epochs}", path, epoch + 1)
        if state.early_stopped:
            logger.info(
                "early stop: no validation loss %.0f%% below %.4f in %d epochs",
                100 * stopping.min_delta, state.stopping_reference, state.epochs_without_improvement,
            )
    writer.wait()


def export_best_weights(
    args: argparse.Namespace, state: TrainingState, data: ImageFolderSplits, test: dict[str, float],
    loaders: dict[str, CountingLoader],
) -> None:
    """Writes the artifact: a fresh network (no debugger hooks) holding the best weights, the metrics
    (with the unreadable images the loaders found), and the OpenVINO models (on the readable images)."""
    num_classes = len(data.class_folders)
    serving_model = models.architecture(args.model_name, num_classes)
    serving_model.load_state_dict(state.best.state)
    metrics = export.metrics_document(
        hyperparameters={name.replace("_", "-"): value for name, value in vars(args).items()},
        epochs=state.history,
        best_epoch=state.best.epoch,
        test=test,
        num_classes=num_classes,
        bad_images=bad_image_counts(loaders),
    )
    readable = readable_splits(data, loaders)
    quantization = quantize.quantization_data(readable, args.calibration_images, args.seed)
    export.write_artifact(
        sagemaker_env.model_dir(), serving_model, data.class_names, args.image_size, metrics, CODE_DIR,
        quantization if args.quantize else None,
    )


def run(args: argparse.Namespace) -> None:
    """The whole job: data, model, training loop, test, artifact."""
    stop = StopSignal().install()
    cluster = distributed.setup(args.distributed_timeout)
    export.check_serving_code(CODE_DIR)  # fail now rather than after hours of training
    seed_everything(args.seed)
    device = select_device()
    streaming = "FastFile" in sagemaker_env.check_input_modes().values()
    workers = select_workers(args.workers, device, streaming, cluster.local_world_size)
    batch_size = cluster.per_rank_batch(args.batch_size)
    logger.info(
        "device %s (%d torch threads), %d data-loader workers, hyperparameters %s",
        device, torch.get_num_threads(), workers, vars(args),
    )
    channels = sagemaker_env.channels()
    data = load_splits(channels)
    cluster.check_same("class folders", data.class_folders)
    samplers = cluster.samplers(
        {name: len(split.samples) for name, split in data.splits.items()},
        distributed.sharded_splits(channels), cluster.shared_seed(args.seed),
    )
    loaders = build_loaders(
        data, batch_size=batch_size, image_size=args.image_size, workers=workers,
        pin_memory=device.type == "cuda", max_bad_fraction=args.max_bad_image_fraction,
        augment=args.augment, samplers=samplers,
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    state = build_training_state(args, data.class_folders, device)
    checkpoint_dir = sagemaker_env.checkpoint_dir()
    if cluster.resume(state, checkpoint_dir):
        logger.info(
            "resuming from %s: %d epoch(s) done, continuing at epoch %d",
            checkpoint_dir / checkpoints.CHECKPOINT_FILE, state.epochs_done, state.next_epoch,
        )
    cluster.decorrelate_random_streams()

    # One debugger hook, on rank 0 (smdebug's chief worker): its tensors are the whole job's.
    debugger = Debugger.create(
        sagemaker_env.debugger_config_file(),
        Path(args.debugger_out_dir) if args.debugger_out_dir else sagemaker_env.debugger_out_dir(),
        args.debugger_save_interval,
        local_default=args.debugger,
    ) if cluster.is_primary else Debugger()
    debugger.watch(state.model, criterion)  # after freezing: frozen layers get no gradient hooks
    cluster.wrap(state.model)  # DDP: every process starts from rank 0's weights
    stop = distributed.agreed(stop)
    # Rank 0 alone keeps the evidence: SageMaker packs every host's output/data into one
    # output.tar.gz and the hosts share the checkpoint folder, so others' files would clash.
    evidence = TrainingEvidence(
        sagemaker_env.output_data_dir(), checkpoint_dir / LIVE_EVIDENCE_DIR, state.history
    ) if cluster.is_primary else NoEvidence()
    sampler = ResourceSampler(
        evidence.folder / RESOURCE_USAGE_FILE, args.resource_sample_seconds, origin=evidence.origin
    ) if cluster.is_primary else nullcontext()
    # The sampler stops first, so that the evidence's last live copy holds its last sample.
    with evidence, sampler:
        train_epochs(state, args, loaders, criterion, device, debugger, stop, checkpoint_dir, evidence)
        state.model.load_state_dict(state.best.state)
        debugger.eval()
        test_loss, test_accuracy, test_top5 = evaluate(state.model, loaders["test"], criterion, device)
        if cluster.is_primary:
            print(format_test_line(test_loss, test_accuracy, test_top5), flush=True)
        debugger.close()

    for loader in loaders.values():
        if loader.bad_images.summary():
            logger.warning("%s", loader.bad_images.summary())
    if cluster.is_primary:
        test = {"test_loss": test_loss, "test_accuracy": test_accuracy, "test_top5_accuracy": test_top5}
        export_best_weights(args, state, data, test, loaders)
    distributed.finish()
    logger.info("training complete: best epoch %d, test accuracy %.4f", state.best.epoch, test_accuracy)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run(parse_hyperparameters(argv))
    except TrainingStopped as stopped:
        logger.warning("%s", stopped)
        distributed.write_failure(str(stopped))
        return 128 + stopped.signum
    except TrainingError as error:
        logger.error("training failed: %s", error)
        distributed.write_failure(str(error))
        return 1
    except Exception as error:
        logger.exception("training failed unexpectedly")
        distributed.write_failure(f"{type(error).__name__}: {error}", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
