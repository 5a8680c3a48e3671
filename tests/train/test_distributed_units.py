"""classifier.distributed with two real processes (gloo) in this machine: each plays one host.

``torch.multiprocessing.spawn`` starts the ranks with the variables torchrun would give them; each
runs a scenario and asserts; an assertion in a rank fails the test with that rank's traceback.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from classifier import distributed, sagemaker_env
from classifier.checkpoints import StopSignal
from classifier.errors import TrainingError
from classifier.training_state import EarlyStopping, TrainingState
from scripts.local.server import free_port

WORLD = 2
pytestmark = pytest.mark.timeout(180)


def join(rank: int, tmp: Path, port: int) -> distributed.Cluster:
    """What torchrun gives a trainer on host ``host-<rank>`` (one process per host)."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), SM_CURRENT_HOST=f"host-{rank}", SM_NUM_CPUS="1",
        SAGEMAKER_BASE_DIR=str(tmp / f"host-{rank}"), OMP_NUM_THREADS="1",
    )
    return distributed.setup(timeout_s=60)


def tiny_state() -> TrainingState:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return TrainingState(model, optimizer, scheduler, scaler, {"model_name": "tiny", "class_folders": ["a"]})


def collectives(rank: int, tmp: Path, port: int) -> None:
    cluster = join(rank, tmp, port)
    assert (cluster.rank, cluster.world_size) == (rank, 2)
    assert cluster.describe() == f"rank {rank} of 2 on host-{rank}"
    assert [peer.host for peer in cluster.peers] == ["host-0", "host-1"]

    # Tallies: every process's loss sum, correct count and images, summed.
    assert distributed.sum_across_ranks(rank + 1.5, 10 * rank, 4) == [4.0, 10.0, 8.0]

    # A SIGTERM on host-1 only: both stop after the same step, knowing which signal.
    local = StopSignal()
    local.received = signal.SIGTERM if rank == 1 else None
    stop = distributed.agreed(local)
    assert stop.requested and stop.received == signal.SIGTERM

    # The global batch, shared out; an uneven one refused naming the choices.
    assert cluster.per_rank_batch(8) == 4
    with pytest.raises(TrainingError, match="use 6 or 8"):
        cluster.per_rank_batch(7)

    # Replicated splits: all ranks' shares cover each split; training reshuffles per epoch, alike everywhere.
    samplers = cluster.samplers({"train": 9, "valid": 7, "test": 5}, {}, seed=cluster.shared_seed(3))
    distributed.begin_epoch(type("Loader", (), {"sampler": samplers["train"]})(), 1)
    shares = cluster.all_gather({name: list(sampler) for name, sampler in samplers.items()})
    assert sorted(shares[0]["valid"] + shares[1]["valid"]) == list(range(7))  # disjoint, no padding
    assert sorted(shares[0]["test"] + shares[1]["test"]) == list(range(5))
    assert set(shares[0]["train"] + shares[1]["train"]) == set(range(9))
    assert len(shares[0]["train"]) == len(shares[1]["train"]) == 5  # padded: same steps everywhere
    distributed.begin_epoch(type("Loader", (), {"sampler": samplers["train"]})(), 2)
    assert cluster.all_gather(list(samplers["train"])) != [shares[0]["train"], shares[1]["train"]]

    # Sharded by S3 key: each host shares only its own files, and the larger shard takes the
    # smaller one's number of steps.
    sharded = cluster.samplers({"train": 10 + 3 * rank, "valid": 4, "test": 4}, {"train": True}, seed=0)
    assert len(sharded["train"]) == 10 and len(list(sharded["train"])) == 10
    assert sorted(set(sharded["train"])) == sorted(set(range(10 + 3 * rank)) & set(sharded["train"]))

    # The hosts must agree on the classes (a shard without one of them is refused).
    cluster.check_same("class folders", ["001.a", "002.b"])
    with pytest.raises(TrainingError, match=r"disagree on the class folders: host\(s\) \['host-1'\]"):
        cluster.check_same("class folders", ["001.a", "002.b"] if rank == 0 else ["001.a"])

    # Resuming: host-1 lost its copy of the checkpoint; it takes rank 0's state.
    state = tiny_state()
    checkpoints_dir = tmp / f"host-{rank}" / "checkpoints"
    if rank == 0:
        with torch.no_grad():
            state.model[0].weight.add_(1.0)
        state.end_epoch({"epoch": 2, "valid_loss": 0.5}, EarlyStopping(patience=0, min_delta=0.0))
        state.save(checkpoints_dir)
        state = tiny_state()
    assert cluster.resume(state, checkpoints_dir)
    assert state.epochs_done == 2
    weights = cluster.all_gather(state.model[0].weight.detach().clone())
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], tiny_state().model[0].weight)

    # Rank 0 saves; the other waits for it and learns where it went.
    path = cluster.save_on_primary(lambda: state.save(tmp / "shared-checkpoints"))
    assert path == tmp / "shared-checkpoints" / "checkpoint.pt" and path.is_file()
    distributed.finish()


def failures(rank: int, tmp: Path, port: int) -> None:
    cluster = join(rank, tmp, port)
    failure = sagemaker_env.output_dir() / "failure"
    if rank == 1:  # fails with a reason of its own, then is gone
        distributed.write_failure("invalid image in train/001.a/x.jpg")
        assert failure.read_text() == "rank 1 of 2 on host-1: invalid image in train/001.a/x.jpg\n"
    cluster.barrier("rank 1 has failed")
    if rank == 0:  # cut off: names rank 1's reason rather than its own broken connection
        lost = RuntimeError("[pair.cc:553] Connection closed by peer [10.0.0.2]:3786")
        distributed.write_failure(f"RuntimeError: {lost}", lost)
        text = failure.read_text()
        assert text.startswith("rank 0 of 2 on host-0: stopped because another process failed: "
                               "rank 1 of 2 on host-1: invalid image in train/001.a/x.jpg"), text
        distributed.write_failure("a later consequence")  # the first reason on a host stays
        assert failure.read_text() == text
    distributed.finish()


@pytest.mark.parametrize("scenario", [collectives, failures])
def test_two_processes(scenario, tmp_path):
    mp.spawn(scenario, args=(tmp_path, free_port()), nprocs=WORLD, join=True)


def test_a_silent_peer_is_named_by_its_address():
    cluster = distributed.Cluster(rank=0, world_size=3, host="algo-1")
    cluster.peers = [
        distributed.Peer(0, "algo-1", "172.20.0.2"), distributed.Peer(1, "algo-2", "172.20.0.3"),
        distributed.Peer(2, "algo-3", "172.20.0.4"),
    ]
    message = "RuntimeError: [pair.cc:553] Connection closed by peer [172.20.0.3]:3786"
    assert [peer.rank for peer in cluster.lost_peers(message)] == [1]
    barrier = "waiting for every process (the end of training): Ranks 1, 2 failed to pass monitoredBarrier"
    assert [peer.rank for peer in cluster.lost_peers(barrier)] == [1, 2]
    explanation = cluster.explain_lost_contact(message)
    assert explanation.startswith("lost contact with rank 1 on algo-2, which ended without giving a reason")
    assert distributed.is_communication_error(RuntimeError(message))
    assert not distributed.is_communication_error(ValueError("bad value"))


def test_sharded_splits_follow_the_channel_settings(monkeypatch, tmp_path):
    config = '{"training": {"S3DistributionType": "ShardedByS3Key"}}'
    monkeypatch.setenv("SM_INPUT_DATA_CONFIG", config)
    assert distributed.sharded_splits({"training": tmp_path}) == {"train": True, "valid": True, "test": True}
    monkeypatch.setenv("SM_INPUT_DATA_CONFIG", '{"train": {"S3DistributionType": "ShardedByS3Key"}, '
                       '"valid": {"S3DistributionType": "FullyReplicated"}, "test": {}}')
    channels = {"train": tmp_path, "valid": tmp_path, "test": tmp_path}
    assert distributed.sharded_splits(channels) == {"train": True, "valid": False, "test": False}


def test_one_process_changes_nothing(tmp_path):
    cluster = distributed.Cluster()
    model = nn.Linear(2, 2)
    assert not cluster.enabled and cluster.wrap(model) is model
    assert cluster.samplers({"train": 4}, {}, seed=0) is None
    assert cluster.per_rank_batch(7) == 7 and distributed.sum_across_ranks(1, 2) == [1.0, 2.0]
