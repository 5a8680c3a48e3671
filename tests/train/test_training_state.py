"""The run's state is one object: what it books per epoch, and the checkpoint round trip."""

import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from train_helpers import CodeOnLoad

from classifier import checkpoints
from classifier.errors import TrainingError
from classifier.training_state import EarlyStopping, TrainingState


def make_state(seed: int = 0) -> TrainingState:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    identity = {"model_name": "tiny", "class_folders": ["a", "b"]}
    return TrainingState(model, optimizer, scheduler, scaler, identity)


def train_a_step(state: TrainingState) -> None:
    loss = state.model(torch.randn(5, 4)).sum()
    state.optimizer.zero_grad()
    loss.backward()
    state.optimizer.step()
    state.scheduler.step()


def record(epoch: int, valid_loss: float) -> dict[str, float]:
    return {"epoch": epoch, "train_loss": 1.0, "valid_loss": valid_loss}


def test_epochs_book_the_best_weights_and_early_stopping():
    state = make_state()
    assert (state.next_epoch, state.best.epoch, state.best.valid_loss) == (1, 0, math.inf)
    train_a_step(state)
    state.end_epoch(record(1, 0.9), EarlyStopping(patience=2))
    best_weights = {name: tensor.clone() for name, tensor in state.best.state.items()}
    train_a_step(state)
    state.end_epoch(record(2, 0.95), EarlyStopping(patience=2))
    assert (state.best.epoch, state.epochs_without_improvement, state.early_stopped) == (1, 1, False)
    assert all(torch.equal(best_weights[name], tensor) for name, tensor in state.best.state.items())
    state.end_epoch(record(3, 0.91), EarlyStopping(patience=2))
    assert state.early_stopped and state.next_epoch == 4
    assert [entry["epoch"] for entry in state.history] == [1, 2, 3]


def test_patience_zero_never_stops():
    state = make_state()
    for epoch in range(1, 6):
        state.end_epoch(record(epoch, 1.0 + epoch), EarlyStopping(patience=0))
    assert not state.early_stopped and state.epochs_without_improvement == 4


def test_warmup_epochs_count_for_nothing_and_the_first_epoch_after_sets_the_reference():
    stopping = EarlyStopping.after_warmup(patience=2, min_delta=0.0, warmup_epochs=2)
    state = make_state()
    for epoch, loss in [(1, 0.5), (2, 0.9)]:  # warmup: the loss jumps about
        state.end_epoch(record(epoch, loss), stopping)
        assert state.epochs_without_improvement == 0 and not state.early_stopped
    state.end_epoch(record(3, 1.2), stopping)  # worse than warmup's best, but it is the reference
    assert state.epochs_without_improvement == 0 and state.stopping_reference == 1.2
    state.end_epoch(record(4, 1.3), stopping)
    state.end_epoch(record(5, 1.25), stopping)
    assert state.early_stopped and state.next_epoch == 6  # the earliest stop: warmup + 1 + patience
    assert state.best.epoch == 1  # the best weights are still the lowest loss of all


def test_an_improvement_smaller_than_min_delta_does_not_reset_the_count():
    stopping = EarlyStopping(patience=2, min_delta=0.01)
    state = make_state()
    state.end_epoch(record(1, 1.0), stopping)
    state.end_epoch(record(2, 0.995), stopping)  # 0.5 % better: noise
    assert state.epochs_without_improvement == 1 and state.best.epoch == 2  # yet the best weights
    state.end_epoch(record(3, 0.985), stopping)  # 1.5 % below the reference: progress
    assert state.epochs_without_improvement == 0 and state.stopping_reference == 0.985
    state.end_epoch(record(4, 0.99), stopping)
    state.end_epoch(record(5, 0.98), stopping)
    assert state.early_stopped


def test_a_checkpoint_at_the_end_of_the_best_epoch_holds_the_weights_once(tmp_path):
    state = make_state()
    train_a_step(state)
    state.end_epoch(record(1, 0.5), EarlyStopping(patience=3))
    assert state.state_dict(at_epoch_end=True)["best"]["state"] is None
    assert state.state_dict()["best"]["state"] is not None  # mid-epoch: the model may have moved on
    state.save(tmp_path, at_epoch_end=True)
    train_a_step(state)  # the model moves on; the best weights must come back as they were
    resumed = make_state(seed=3)
    assert resumed.resume(tmp_path)
    assert resumed.best.epoch == 1
    for name, tensor in resumed.best.state.items():
        assert torch.equal(tensor, resumed.model.state_dict()[name])
    assert not all(torch.equal(resumed.best.state[n], t) for n, t in state.model.state_dict().items())


def test_a_saved_state_resumes_exactly(tmp_path):
    state = make_state(seed=1)
    train_a_step(state)
    state.end_epoch(record(1, 0.7), EarlyStopping(patience=3))
    train_a_step(state)
    state.end_epoch(record(2, 0.8), EarlyStopping(patience=3))
    state.save(tmp_path)
    next_draws = (torch.rand(3), random.random(), np.random.rand(2))  # what the saved run would draw next

    resumed = make_state(seed=2)  # other weights: everything must come from the checkpoint
    assert resumed.resume(tmp_path)
    assert (resumed.epochs_done, resumed.next_epoch, resumed.best.epoch) == (2, 3, 1)
    assert resumed.history == state.history and resumed.epochs_without_improvement == 1
    assert resumed.learning_rate == state.learning_rate == pytest.approx(0.025)
    for name, tensor in state.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor)
    for name, tensor in state.best.state.items():
        assert torch.equal(resumed.best.state[name], tensor)
    assert resumed.optimizer.state_dict()["state"][0]["momentum_buffer"].equal(
        state.optimizer.state_dict()["state"][0]["momentum_buffer"])
    # every random generator continues where it was
    assert torch.equal(torch.rand(3), next_draws[0])
    assert random.random() == next_draws[1]
    assert np.array_equal(np.random.rand(2), next_draws[2])


PLAIN_VALUES = (dict, list, tuple, str, int, float, bool, type(None), torch.Tensor)


def plain_types(value) -> set[type]:
    """The types a value is built of, looking inside dicts, lists and tuples."""
    if isinstance(value, dict):
        return {dict}.union(*(plain_types(item) for pair in value.items() for item in pair))
    if isinstance(value, list | tuple):
        return {type(value)}.union(*(plain_types(item) for item in value))
    return {torch.Tensor if isinstance(value, torch.Tensor) else type(value)}


def test_a_checkpoint_is_tensors_and_plain_values_only(tmp_path):
    state = make_state()
    train_a_step(state)
    state.end_epoch(record(1, 0.5), EarlyStopping(patience=3, min_delta=0.0))
    path = state.save(tmp_path)
    checkpoint = torch.load(path, weights_only=True)  # raises on any other pickled object
    assert plain_types(checkpoint) <= set(PLAIN_VALUES), plain_types(checkpoint) - set(PLAIN_VALUES)


def test_a_checkpoint_holding_a_pickled_object_is_refused_naming_the_file_and_never_run(tmp_path):
    marker = tmp_path / "code-ran"
    identity = make_state().identity
    torch.save({**identity, "epoch": 1, "rng": CodeOnLoad(marker)}, tmp_path / checkpoints.CHECKPOINT_FILE)
    with pytest.raises(TrainingError) as refused:
        make_state().resume(tmp_path)
    message = str(refused.value)
    assert f"refusing checkpoint {tmp_path / checkpoints.CHECKPOINT_FILE}" in message
    assert "mkdir" in message  # the object it refused
    assert not marker.exists()


def test_nothing_to_resume_and_another_runs_checkpoint(tmp_path):
    assert not make_state().resume(tmp_path)
    state = make_state()
    state.identity = {"model_name": "other", "class_folders": ["a", "b"]}
    state.save(tmp_path)
    with pytest.raises(TrainingError, match="model_name differs"):
        make_state().resume(tmp_path)
    assert (tmp_path / checkpoints.CHECKPOINT_FILE).is_file()
