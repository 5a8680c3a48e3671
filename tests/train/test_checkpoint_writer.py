"""Checkpoints written in the background hold the state as it was when saved, whatever trains after."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from classifier import checkpoint_writer, checkpoints
from classifier.errors import TrainingError
from classifier.training_state import EarlyStopping, TrainingState


def make_state(seed: int = 0) -> TrainingState:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    identity = {"model_name": "tiny", "class_folders": ["a", "b"]}
    return TrainingState(model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False), identity)


def train_a_step(state: TrainingState) -> None:
    state.optimizer.zero_grad()
    state.model(torch.randn(5, 4)).sum().backward()
    state.optimizer.step()


def record(epoch: int, valid_loss: float) -> dict[str, float]:
    return {"epoch": epoch, "train_loss": 1.0, "valid_loss": valid_loss}


def test_the_checkpoint_is_the_state_at_save_time_not_after(tmp_path):
    state = make_state(seed=1)
    train_a_step(state)
    state.end_epoch(record(1, 0.7), EarlyStopping(patience=3))
    saved = {name: tensor.clone() for name, tensor in state.model.state_dict().items()}
    moments = state.optimizer.state_dict()["state"][0]["momentum_buffer"].clone()
    writer = checkpoint_writer.CheckpointWriter(tmp_path)
    path = writer.save(state, at_epoch_end=True)
    for _ in range(3):  # training goes on while the file is written
        train_a_step(state)
    writer.wait()
    assert path == tmp_path / checkpoints.CHECKPOINT_FILE and path.is_file()

    resumed = make_state(seed=2)
    assert resumed.resume(tmp_path)
    assert resumed.epochs_done == 1 and resumed.best.epoch == 1
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, saved[name])
        assert torch.equal(resumed.best.state[name], saved[name])  # stored once, as the model
    assert torch.equal(resumed.optimizer.state_dict()["state"][0]["momentum_buffer"], moments)


def test_the_snapshot_shares_no_tensor_with_the_training_state():
    state = make_state()
    state.end_epoch(record(1, 0.7), EarlyStopping(patience=3))
    train_a_step(state)  # the best weights are now an older copy, kept as they are
    copied = checkpoint_writer.snapshot(state, at_epoch_end=False)
    live = [t.data_ptr() for t in state.model.state_dict().values()]
    assert not {t.data_ptr() for t in copied["model"].values()} & set(live)
    assert copied["best"]["state"] is state.best.state


def test_a_failed_write_fails_the_run_with_the_path(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the checkpoint folder should be")
    writer = checkpoint_writer.CheckpointWriter(blocker)
    writer.save(make_state())
    with pytest.raises(TrainingError, match=r"cannot write the checkpoint .*not-a-folder/checkpoint.pt"):
        writer.wait()
    writer.wait()  # reported once
