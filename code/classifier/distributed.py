"""Data-parallel training across processes, GPUs and hosts (torch.distributed and DDP).

torchrun, started on every host by the training toolkit (``train_launcher.py``), runs one trainer
process per GPU and tells each its place: ``RANK`` and ``WORLD_SIZE`` over all hosts, ``LOCAL_RANK``
and ``LOCAL_WORLD_SIZE`` on its own, ``MASTER_ADDR:MASTER_PORT`` to meet at. :func:`setup` joins
them (NCCL on GPUs, gloo on CPUs); :func:`current` is then the run's :class:`Cluster`. Without
torchrun it is a cluster of one process and nothing here changes what the trainer does.

What the trainer does with it:

* data: each split is shared out among the processes (:meth:`Cluster.samplers`), training data
  reshuffled every epoch with the same permutation everywhere (:func:`begin_epoch`);
* learning: DDP averages the gradients (:meth:`Cluster.wrap`), so a step learns from the global
  batch (``classifier.distribution.per_rank_batch_size``);
* metrics: loss and accuracy tallies are summed over the processes (:func:`sum_across_ranks`);
  rank 0 alone prints metric lines, writes checkpoints, the artifact and ``metrics.json``;
* stopping: SIGTERM on any host stops every process after the same step (:class:`AgreedStop`);
  rank 0 saves one checkpoint and the others wait for it (:meth:`Cluster.save_on_primary`);
* failing: a failing process names its rank and host in ``output/failure`` and publishes its
  reason; the others, cut off, name it in theirs (:func:`write_failure`). Every wait has a timeout
  (``--distributed-timeout``), so a dead process ends the job instead of hanging it.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from classifier import sagemaker_env
from classifier.checkpoints import StopSignal
from classifier.dataset import COMBINED_CHANNEL, SPLIT_ALIASES, SPLITS
from classifier.distribution import S3_SHARDED, per_rank_batch_size
from classifier.errors import TrainingError

logger = logging.getLogger(__name__)

# Seconds to wait for a failed peer's published reason before naming it without one.
FAILURE_NOTICE_GRACE_S = 2.0
_FAILURE_KEYS = "classifier/failure"
_IPV4 = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3})")
_BARRIER_MISSES = re.compile(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier")
# What gloo, NCCL and torch say when a peer is gone or silent.
_LOST_CONTACT_SIGNS = (
    "Connection closed by peer", "Connection reset by peer", "Broken pipe", "timed out", "Timed out",
    "monitoredBarrier", "NCCL communicator was aborted", "Socket Timeout",
)


@dataclass(frozen=True)
class Peer:
    """One training process: its rank, the host it runs on and that host's address."""

    rank: int
    host: str
    address: str


def current_host() -> str:
    """This host's name in the job (SageMaker's ``algo-N``), else the machine's."""
    return os.environ.get("SM_CURRENT_HOST") or socket.gethostname()


def _address_of(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return ""


class Cluster:
    """This process's place among the job's training processes, and what they do together."""

    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        local_rank: int = 0,
        local_world_size: int = 1,
        host: str | None = None,
        backend: str | None = None,
        timeout: timedelta | None = None,
    ):
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.local_world_size = local_world_size
        self.host = host or current_host()
        self.backend = backend
        self.timeout = timeout
        self.control_group: Any = None  # gloo: small CPU messages (stop flags, tallies, barriers)
        self.peers: list[Peer] = [Peer(rank, self.host, "")]  # all of them once joined
        self.store: Any = None  # where failing processes leave their reason for the others
        self._wrapped: dict[int, nn.Module] = {}

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_primary(self) -> bool:
        """Rank 0: the process that prints metric lines and writes checkpoints and the artifact."""
        return self.rank == 0

    @property
    def is_local_primary(self) -> bool:
        """The first process on its host (host-wide chores such as sampling the machine's load)."""
        return self.local_rank == 0

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size} on {self.host}"

    def device(self) -> torch.device:
        """This process's GPU (``LOCAL_RANK``), or the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank) if self.enabled else torch.device("cuda")
        return torch.device("cpu")

    def per_rank_batch(self, global_batch: int) -> int:
        try:
            return per_rank_batch_size(global_batch, self.world_size)
        except ValueError as error:
            raise TrainingError(str(error)) from error

    # ------------------------------------------------------------ collectives

    def all_gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, by rank."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value, group=self.control_group)
        return gathered

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process."""
        if not self.enabled:
            return value
        payload = [value if self.is_primary else None]
        dist.broadcast_object_list(payload, src=0, group=self.control_group)
        return payload[0]

    def barrier(self, what: str) -> None:
        """Waits for every process (up to the timeout); a missing one fails with its rank named."""
        if self.enabled:
            try:
                dist.monitored_barrier(group=self.control_group, timeout=self.timeout, wait_all_ranks=True)
            except RuntimeError as error:
                raise RuntimeError(f"waiting for every process ({what}): {error}") from error

    def check_same(self, what: str, value: Any) -> None:
        """Fails unless every process has the same ``value`` (e.g. the class folders each host found)."""
        values = self.all_gather(value)
        differing = [peer for peer, other in zip(self.peers, values, strict=True) if other != values[0]]
        if differing:
            hosts = sorted({peer.host for peer in differing})
            raise TrainingError(
                f"the processes disagree on the {what}: host(s) {hosts} found "
                f"{_brief(values[differing[0].rank])}, "
                f"rank 0 on {self.peers[0].host} found {_brief(values[0])}; every host needs the same data "
                "(with ShardedByS3Key, every host's share must hold every class in every split)"
            )

    def shared_seed(self, seed: int | None) -> int:
        """``seed``, or one drawn by rank 0, the same on every process (for the data permutation)."""
        return seed if seed is not None else int(self.broadcast(random.SystemRandom().randrange(2**31)))

    def decorrelate_random_streams(self) -> None:
        """Gives each process its own random stream, derived from the shared one (seeded or resumed),
        so that processes do not draw the same augmentations."""
        if not self.enabled:
            return
        base = int(torch.randint(0, 2**31, (1,)).item())
        seed = base + 7919 * self.rank
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    # ------------------------------------------------------------ data

    def samplers(
        self, sizes: Mapping[str, int], sharded: Mapping[str, bool], seed: int
    ) -> dict[str, Sampler] | None:
        """Each split's share for this process; None for a single process (the loaders' defaults).

        A split copied to every host is shared among all processes; a split SageMaker already
        sharded by host (``ShardedByS3Key``) only among this host's. Training takes the same number
        of steps on every process (DDP needs it): shares are padded to equal size, and a host with
        a smaller shard than others sets everyone's count. Evaluation shares are disjoint, unpadded.
        """
        if not self.enabled:
            return None
        found: dict[str, Sampler] = {}
        for split, size in sizes.items():
            if sharded.get(split):
                replicas, index = self.local_world_size, self.local_rank
            else:
                replicas, index = self.world_size, self.rank
            if split == "train":
                sampler = DistributedSampler(range(size), replicas, index, shuffle=True, seed=seed)
                fewest = self._min_over_ranks(len(sampler))
                found[split] = sampler if fewest == len(sampler) else FirstSamples(sampler, fewest)
            else:
                found[split] = ShardSampler(size, replicas, index)
        return found

    def _min_over_ranks(self, value: int) -> int:
        tensor = torch.tensor([value], dtype=torch.long)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=self.control_group)
        return int(tensor.item())

    # ------------------------------------------------------------ model and state

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model as the training steps use it: DDP around it (made once), or the model itself.

        The checkpoint, the debugger hook and the export keep using the plain model.
        """
        if not self.enabled:
            return model
        if id(model) not in self._wrapped:
            device_ids = [self.local_rank] if self.backend == "nccl" else None
            # BatchNorm statistics are not sent at every step: only evaluation uses them, and
            # sync_buffers gives every process rank 0's before it (rank 0's own never change).
            self._wrapped[id(model)] = DistributedDataParallel(
                model, device_ids=device_ids, broadcast_buffers=False, gradient_as_bucket_view=True
            )
        return self._wrapped[id(model)]

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's BatchNorm statistics on every process (each updated its own in the last step),
        so that every process evaluates, and keeps as best, the very weights rank 0 saves."""
        if self.enabled:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def save_on_primary(self, save: Callable[[], Path]) -> Path:
        """Rank 0 saves (a checkpoint); the others wait until it has, and learn where it went."""
        path = save() if self.is_primary else None
        return Path(self.broadcast(str(path) if path else None))

    def resume(self, state: Any, directory: Path) -> bool:
        """Every process resumes from the same checkpoint: its own copy of the file when all copies
        are at the same epoch (SageMaker copies the checkpoint folder to every host), else rank 0's
        state, sent to the others. Whether the run resumes."""
        found = state.resume(directory)
        epochs = self.all_gather(state.epochs_done if found else None)
        if len(set(epochs)) == 1:
            return found
        logger.warning(
            "the hosts' checkpoints differ (epochs done by rank: %s): every process takes rank 0's", epochs
        )
        checkpoint = self.broadcast(_to_cpu(state.state_dict()) if self.is_primary else None)
        if not self.is_primary:
            state.load_state_dict(checkpoint)
        return epochs[0] is not None

    # ------------------------------------------------------------ failures

    def publish_failure(self, reason: str) -> None:
        """Leaves this process's failure reason where the others can read it (best effort)."""
        if self.store is not None:
            try:
                self.store.set(str(self.rank), f"{self.describe()}: {reason}")
            except Exception as error:  # the store's host may be gone already
                logger.debug("cannot publish the failure reason: %s", error)

    def published_failures(self) -> dict[int, str]:
        """The reasons other processes published before they failed, by rank."""
        found: dict[int, str] = {}
        if self.store is None:
            return found
        for peer in self.peers:
            if peer.rank == self.rank:
                continue
            try:
                if self.store.check([str(peer.rank)]):
                    found[peer.rank] = self.store.get(str(peer.rank)).decode(errors="replace")
            except Exception:  # the store went down with its host: nothing more to learn
                break
        return found

    def lost_peers(self, message: str) -> list[Peer]:
        """The processes a communication error points at: by the addresses in its message (gloo),
        or by rank (a monitored barrier's "Rank 1 failed to pass" / "Ranks 1, 2 failed to pass")."""
        addresses = set(_IPV4.findall(message))
        ranks = {int(rank) for found in _BARRIER_MISSES.findall(message) for rank in found.split(",")}
        return [
            peer for peer in self.peers
            if peer.rank != self.rank and (peer.address in addresses or peer.rank in ranks)
        ]

    def explain_lost_contact(self, message: str) -> str:
        """Why this process lost its peers: the reason one of them published, else which one went silent."""
        deadline = time.monotonic() + FAILURE_NOTICE_GRACE_S
        published = self.published_failures()
        while not published and self.store is not None and time.monotonic() < deadline:
            time.sleep(0.2)
            published = self.published_failures()
        if published:
            first = "; ".join(published[rank] for rank in sorted(published))
            return f"stopped because another process failed: {first} (here: {message})"
        lost = self.lost_peers(message)
        who = ", ".join(f"rank {peer.rank} on {peer.host}" for peer in lost) or "another training process"
        return (
            f"lost contact with {who}, which ended without giving a reason (killed, out of memory, "
            f"or its host stopped: see that host's log): {message}"
        )


class AgreedStop:
    """A stop request (SIGTERM, SIGINT) as every process sees it: ``requested`` asks all of them,
    so they all stop after the same step however many received the signal. Every process must
    check it at the same points of the loop, as the training loop does."""

    def __init__(self, local: StopSignal, group: Any):
        self.local = local
        self.group = group
        self._agreed: signal.Signals | None = None

    @property
    def requested(self) -> bool:
        if self._agreed is None:  # once agreed, all know it: no more messages
            flag = torch.tensor([int(self.local.received or 0)], dtype=torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
            if flag.item():
                self._agreed = signal.Signals(int(flag.item()))
        return self._agreed is not None

    @property
    def received(self) -> signal.Signals | None:
        return self._agreed


class ShardSampler(Sampler[int]):
    """Every ``replicas``-th index from ``index``: disjoint shares that together cover a split once."""

    def __init__(self, size: int, replicas: int, index: int):
        self.indices = range(index, size, replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class FirstSamples(Sampler[int]):
    """The first ``count`` indices of a distributed sampler (epochs set as on the sampler)."""

    def __init__(self, sampler: DistributedSampler, count: int):
        self.sampler = sampler
        self.count = count

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return (index for _, index in zip(range(self.count), self.sampler, strict=False))

    def __len__(self) -> int:
        return self.count


_current = Cluster()


def current() -> Cluster:
    """The run's cluster (one process until :func:`setup` joins a torchrun job)."""
    return _current


def setup(timeout_s: float) -> Cluster:
    """Joins the other processes of a torchrun job; a cluster of one without torchrun."""
    global _current
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        _current = Cluster()
        return _current
    timeout = timedelta(seconds=timeout_s)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    cluster = Cluster(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        backend=backend,
        timeout=timeout,
    )
    _current = cluster  # failures from here on name the rank and host
    _configure_logging(cluster)
    if backend == "nccl":
        torch.cuda.set_device(cluster.local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:  # (torchrun sets one thread when it starts several)
        torch.set_num_threads(max(1, sagemaker_env.num_cpus() // cluster.local_world_size))
    try:
        dist.init_process_group(backend, timeout=timeout)
        cluster.control_group = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
        cluster.peers = [Peer(rank, host, address) for rank, (host, address) in enumerate(
            cluster.all_gather((cluster.host, _address_of(cluster.host))))]
    except RuntimeError as error:
        raise TrainingError(
            f"could not join the other {world_size - 1} training process(es) at "
            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} within {timeout_s:.0f} s: "
            f"{error}"
        ) from error
    cluster.store = _failure_store(timeout)
    logger.info(
        "data-parallel training: %s, %d process(es) on this host, backend %s; hosts %s",
        cluster.describe(), cluster.local_world_size, backend,
        sorted({f"{peer.host} ({peer.address})" for peer in cluster.peers}),
    )
    return cluster


def _failure_store(timeout: timedelta) -> Any:
    """A client of torchrun's key-value store (on the first host), for failure reasons."""
    try:
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
            timeout=min(timeout, timedelta(seconds=30)),
        )
        return dist.PrefixStore(f"{_FAILURE_KEYS}/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}", store)
    except Exception as error:  # failures will then be reported without the others' reasons
        logger.warning("no shared store for failure reasons (%s): %s", type(error).__name__, error)
        return None


def _configure_logging(cluster: Cluster) -> None:
    """Log lines name their rank and host; ranks other than 0 log only warnings and errors."""
    fmt = f"%(asctime)s %(levelname)s [{cluster.describe()}] %(name)s: %(message)s"
    root = logging.getLogger()
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter(fmt))
    if not cluster.is_primary:
        root.setLevel(logging.WARNING)


def finish() -> None:
    """Leaves the process group once every process is done, so that none has left before rank 0
    wrote the artifact (torchrun's agents then leave together, at their exit barrier)."""
    cluster = current()
    if cluster.enabled and dist.is_initialized():
        cluster.barrier("the end of training")
        dist.destroy_process_group()


def sum_across_ranks(*values: float) -> list[float]:
    """Each value summed over every process (the values themselves in a single process)."""
    cluster = current()
    if not cluster.enabled:
        return [float(value) for value in values]
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=cluster.control_group)
    return tensor.tolist()


def agreed(stop: StopSignal) -> StopSignal | AgreedStop:
    """The stop signal every process agrees on (the local one in a single process)."""
    cluster = current()
    return AgreedStop(stop, cluster.control_group) if cluster.enabled else stop


def begin_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffles a distributed training loader for ``epoch`` (the same permutation on every process)."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def sharded_splits(channels: Mapping[str, Path]) -> dict[str, bool]:
    """Which splits SageMaker sharded across hosts (``ShardedByS3Key`` on the channel that holds them)."""
    config = sagemaker_env.input_data_config()

    def sharded(channel: str) -> bool:
        return config.get(channel, {}).get("S3DistributionType") == S3_SHARDED

    per_split = {split: next((a for a in SPLIT_ALIASES[split] if a in channels), None) for split in SPLITS}
    if all(per_split.values()):
        return {split: sharded(channel) for split, channel in per_split.items()}
    combined = COMBINED_CHANNEL if COMBINED_CHANNEL in channels else next(iter(channels), None)
    return dict.fromkeys(SPLITS, bool(combined) and sharded(combined))


def is_communication_error(error: BaseException) -> bool:
    """Whether ``error`` says that other processes are gone or silent (rather than a fault of our own)."""
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    return isinstance(error, RuntimeError) and any(sign in str(error) for sign in _LOST_CONTACT_SIGNS)


def write_failure(reason: str, error: BaseException | None = None) -> Path:
    """Writes ``output/failure``: in a single process as always; in a cluster, naming this rank and
    host, keeping a reason already written by another process on this host (the first failure is
    the cause, the others its consequences) and explaining a lost contact by the peer's reason."""
    cluster = current()
    if not cluster.enabled:
        return sagemaker_env.write_failure(reason)
    if error is not None and is_communication_error(error):
        reason = cluster.explain_lost_contact(reason)
    else:
        cluster.publish_failure(reason)
    path = sagemaker_env.output_dir() / "failure"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("x") as handle:
            handle.write(f"{cluster.describe()}: {reason.strip()}\n")
    except FileExistsError:
        logger.info("output/failure already holds the reason of another process on this host")
    return path


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(item) for item in value)
    return value


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
