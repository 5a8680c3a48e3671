"""The training modules' pure parts and small edges, in process (no toolkit run)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import sys
import time

import pytest
import torch

import train
from classifier import artifact, checkpoints, data, dataset, debugger, models, optimization, resources
from classifier.errors import TrainingError
from classifier.hyperparameters import FINE_TUNE_POLICIES, build_parser
from scripts import REPO_ROOT


@pytest.mark.parametrize(("folder", "name"), [
    ("001.Affenpinscher", "Affenpinscher"),
    ("133.Yorkshire_terrier", "Yorkshire_terrier"),
    ("cat", "cat"),
    ("1.5mm_screws", "5mm_screws"),
    ("no.number", "no.number"),
])
def test_class_name_drops_the_numeric_prefix(folder, name):
    assert dataset.class_name(folder) == name


def test_split_dirs_from_one_channel_or_one_channel_per_split(tmp_path):
    for split in ("train", "val", "test"):
        (tmp_path / "dogImages" / split).mkdir(parents=True)
    assert dataset.find_split_dirs({"training": tmp_path / "dogImages"}) == {
        "train": tmp_path / "dogImages" / "train",
        "valid": tmp_path / "dogImages" / "val",
        "test": tmp_path / "dogImages" / "test",
    }
    # A single channel of any name holds the splits too.
    found = dataset.find_split_dirs({"data": tmp_path / "dogImages"})
    assert found["train"] == tmp_path / "dogImages" / "train"
    channels = {"train": tmp_path / "a", "validation": tmp_path / "b", "test": tmp_path / "c"}
    expected = {"train": tmp_path / "a", "valid": tmp_path / "b", "test": tmp_path / "c"}
    assert dataset.find_split_dirs(channels) == expected


@pytest.mark.parametrize(("channels", "message"), [
    ({}, "no input data"),
    ({"data": "x", "more": "y"}, "cannot tell which channel holds the data"),
    ({"train": "x", "test": "y"}, "missing split channel(s) ['valid']"),
])
def test_split_dirs_name_the_problem(channels, message):
    with pytest.raises(TrainingError, match=f"^{re.escape(message)}"):
        dataset.find_split_dirs(channels)


def test_learning_rate_warms_up_then_follows_the_schedule():
    cosine = [optimization.lr_factor(e, 10, 2, "cosine") for e in range(10)]
    assert cosine[:3] == pytest.approx([1.0, 1.0, 1.0])  # warmup epochs: their steps ramp up
    assert all(a > b for a, b in itertools.pairwise(cosine[2:])) and cosine[-1] > 0
    step = [optimization.lr_factor(e, 11, 2, "step") for e in range(11)]
    assert step[2:] == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01])
    assert [optimization.lr_factor(e, 4, 0, "constant") for e in range(4)] == [1, 1, 1, 1]


def test_warmup_rises_step_by_step_to_the_scheduled_rate():
    ramp = [optimization.warmup_factor(e, s, 4, 2) for e in range(3) for s in range(4)]
    assert ramp[:8] == pytest.approx([k / 8 for k in range(1, 9)])
    assert ramp[8:] == [1.0] * 4
    assert optimization.warmup_factor(0, 0, 4, 0) == 1.0


def test_warmup_sets_each_step_rate_and_the_scheduler_takes_over_after_it():
    model = torch.nn.Linear(3, 2)
    optimizer = optimization.build_optimizer(model, "adamw", 0.1, 0.9, 1e-4)
    scheduler = optimization.build_scheduler(optimizer, 4, 1, "cosine")
    before_step = optimization.warmup_for_epoch(optimizer, 0, 5, 1)
    rates = []
    for step in range(5):
        before_step(step)
        rates.extend(group["lr"] for group in optimizer.param_groups)
    assert rates == pytest.approx([0.1 * k / 5 for k in range(1, 6) for _ in range(2)])
    optimizer.step()  # (no gradients: nothing moves) the epoch's steps come before the scheduler's
    scheduler.step()
    assert optimization.warmup_for_epoch(optimizer, 1, 5, 1) is None
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.1, 0.1])


def test_a_random_network_starts_its_residual_blocks_as_identities():
    random = models.build_model("resnet18", 3, pretrained=False)
    assert all(torch.count_nonzero(block.bn2.weight) == 0 for block in random.layer1)
    loaded_into = models.architecture("resnet18", 3)  # for trained weights: the default initialisation
    assert all(torch.count_nonzero(block.bn2.weight) > 0 for block in loaded_into.layer1)


def test_every_fine_tune_policy_is_implemented_and_freezes_what_it_says():
    assert set(models.TRAINABLE_LAYERS) == set(FINE_TUNE_POLICIES)
    model = models.architecture("resnet18", 5)
    models.freeze(model, "head")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    models.freeze(model, "all")
    assert all(p.requires_grad for p in model.parameters())
    assert model.fc.out_features == 5


def test_weights_that_do_not_fit_are_refused_by_name(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(models.architecture("resnet34", 1000).state_dict(), path)
    with pytest.raises(TrainingError, match=r"weights-path .*resnet34.pth does not hold resnet18 ImageNet"):
        models.build_model("resnet18", 3, pretrained=True, weights_path=path)


def test_bad_hyperparameters_become_a_training_error():
    with pytest.raises(TrainingError, match="invalid hyperparameters: argument --fine-tune: invalid choice"):
        train.parse_hyperparameters(["--fine-tune", "everything"])
    with pytest.raises(TrainingError, match="unrecognized arguments: --learning_rate"):
        train.parse_hyperparameters(["--learning_rate", "0.1"])


def test_hyperparameters_come_from_sm_hps_without_arguments(monkeypatch):
    monkeypatch.setenv("SM_HPS", json.dumps({"epochs": 3, "pretrained": False, "model-name": "resnet18"}))
    args = train.parse_hyperparameters([])
    assert (args.epochs, args.pretrained, args.model_name) == (3, False, "resnet18")
    assert train.parse_hyperparameters(["--epochs", "5"]).epochs == 5  # arguments, when given, win


def test_without_smdebug_training_goes_on_after_one_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setitem(sys.modules, "smdebug", None)  # makes `import smdebug...` raise ImportError
    monkeypatch.setitem(sys.modules, "smdebug.pytorch", None)
    with caplog.at_level(logging.WARNING):
        hook = debugger.Debugger.create(tmp_path / "none.json", tmp_path / "tensors", save_interval=1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("smdebug cannot be imported (ModuleNotFoundError")
    assert hook.hook is None
    model, criterion = models.architecture("resnet18", 2), torch.nn.CrossEntropyLoss()
    hook.watch(model, criterion)
    hook.train()
    criterion(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    hook.eval()
    hook.close()
    assert not (tmp_path / "tensors").exists()


def test_local_default_hook_can_be_switched_off(tmp_path):
    hook = debugger.Debugger.create(tmp_path / "none.json", tmp_path / "tensors", 1, local_default=False)
    assert hook.hook is None


def test_a_seed_makes_data_order_augmentation_and_training_repeat_exactly(sample_dataset):
    def two_steps() -> tuple[float, float]:
        train.seed_everything(7)
        splits = data.load_splits({"training": sample_dataset})
        loader = data.build_loaders(splits, image_size=32, batch_size=8, workers=0, pin_memory=False)["train"]
        batches = [batch for batch, _ in zip(loader, range(2), strict=False)]
        model = models.build_model("resnet18", 3)
        criterion = torch.nn.CrossEntropyLoss()
        optimizer = optimization.build_optimizer(model, "sgd", 0.01, 0.9, 1e-4)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        return train.train_one_epoch(
            model, batches, criterion, optimizer, scaler, torch.device("cpu"), checkpoints.StopSignal()
        )

    try:
        assert two_steps() == two_steps()
    finally:
        torch.use_deterministic_algorithms(False)


def test_stop_signal_turns_sigterm_into_a_flag():
    stop = checkpoints.StopSignal().install()
    try:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.received == signal.SIGTERM
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) is not stop._handle


def test_checkpoints_are_atomic_and_tied_to_their_run(tmp_path):
    identity = {"model_name": "resnet18", "class_folders": ["001.A", "002.B"]}
    assert checkpoints.load_checkpoint(tmp_path, identity) is None
    checkpoints.save_checkpoint(tmp_path, {**identity, "epoch": 3, "rng": checkpoints.rng_state()})
    assert [p.name for p in tmp_path.iterdir()] == [checkpoints.CHECKPOINT_FILE]
    loaded = checkpoints.load_checkpoint(tmp_path, identity)
    assert loaded["epoch"] == 3
    checkpoints.restore_rng_state(loaded["rng"])
    with pytest.raises(TrainingError, match="class_folders differs"):
        checkpoints.load_checkpoint(tmp_path, {**identity, "class_folders": ["001.A"]})


def test_resource_sampler_writes_json_lines(tmp_path):
    path = tmp_path / "data" / artifact.RESOURCE_USAGE_FILE
    with resources.ResourceSampler(path, interval_s=0.05):
        deadline = time.monotonic() + 60
        while (not path.is_file() or len(path.read_text().splitlines()) < 3) and time.monotonic() < deadline:
            time.sleep(0.01)  # until three samples are written, not a guessed duration
    samples = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(samples) >= 3
    assert samples[-1]["elapsed_s"] > samples[0]["elapsed_s"] and samples[0]["memory_percent"] > 0


def test_readme_hyperparameter_table_matches_the_parser():
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("### Hyperparameters", 1)[1].split("\n#", 1)[0]
    documented = dict(re.findall(r"^\| `([a-z-]+)` \| `?([^`|]+?)`? \|", section, flags=re.MULTILINE))
    parser = build_parser()
    options = [action for action in parser._actions if action.option_strings and action.dest != "help"]
    defaults = {action.option_strings[0][2:]: action.default for action in options}
    assert list(documented) == list(defaults)
    for name, default in defaults.items():
        if isinstance(default, bool):
            assert documented[name] == str(default).lower(), name
        elif default is not None:
            assert documented[name] == (f"{default:g}" if isinstance(default, float) else str(default)), name
