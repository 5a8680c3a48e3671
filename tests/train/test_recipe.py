"""The recipe's parts, in process: fine-tuning, augmentation, top-5, clipping, workers, input modes."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional

import train
from classifier import augmentation, checkpoints, models, optimization, sagemaker_env
from classifier.errors import TrainingError
from classifier.hyperparameters import AUGMENT_PRESETS, build_parser
from classifier.preprocessing import EvalTransform, PreprocessConfig


def test_fine_tune_auto_trains_every_layer_from_random_weights_and_the_last_block_from_imagenet(caplog):
    with caplog.at_level(logging.INFO, logger="classifier.models"):
        assert models.resolve_fine_tune("auto", pretrained=False) == "all"
        assert models.resolve_fine_tune("auto", pretrained=True) == "last-block"
    assert [r.getMessage() for r in caplog.records] == [
        "fine-tune auto: all (random initialisation)",
        "fine-tune auto: last-block (ImageNet weights: the early layers keep them)",
    ]
    model = models.build_model("resnet18", 3, pretrained=False, fine_tune="auto")
    assert all(parameter.requires_grad for parameter in model.parameters())


@pytest.mark.parametrize("policy", ["head", "last-block"])
def test_freezing_random_layers_is_refused_by_name(policy):
    with pytest.raises(TrainingError, match=f"fine-tune {policy} with pretrained=false would freeze"):
        models.build_model("resnet18", 3, pretrained=False, fine_tune=policy)
    assert models.resolve_fine_tune(policy, pretrained=True) == policy


def test_the_default_fine_tune_is_auto():
    assert build_parser().parse_args([]).fine_tune == "auto"


def asymmetric_image(size: int = 32) -> Image.Image:
    """An image unlike its mirror image or any rescaling of it: every pixel different."""
    values = np.arange(size * size * 3, dtype=np.uint32).reshape(size, size, 3) * 7919 % 251
    return Image.fromarray(values.astype(np.uint8))


def test_every_augment_preset_gives_the_evaluation_tensor_shape():
    image = asymmetric_image(40)
    evaluated = EvalTransform(PreprocessConfig.for_image_size(24))(image)
    for preset in AUGMENT_PRESETS:
        assert augmentation.train_transform(preset, 24)(image).shape == evaluated.shape == (3, 24, 24)
    with pytest.raises(ValueError, match="unknown augment preset 'strong'"):
        augmentation.train_transform("strong", 24)


def test_none_is_exactly_the_evaluation_view():
    image = asymmetric_image(40)
    expected = EvalTransform(PreprocessConfig.for_image_size(24))(image)
    assert torch.equal(augmentation.train_transform("none", 24)(image), expected)


def test_light_only_shifts_the_evaluation_resize_never_flips_or_rescales():
    image, size = asymmetric_image(32), 24
    config = PreprocessConfig.for_image_size(size)
    resized = functional.to_tensor(functional.resize(image, config.resize_size, antialias=True))
    resized = functional.normalize(resized, config.mean, config.std)
    slack = config.resize_size - size
    windows = {(top, left) for top in range(slack + 1) for left in range(slack + 1)}
    light = augmentation.train_transform("light", size)
    torch.manual_seed(0)
    seen = set()
    for _ in range(30):
        view = light(image)
        found = [(t, lf) for t, lf in windows if torch.equal(view, resized[:, t:t + size, lf:lf + size])]
        assert len(found) == 1, "a light view is a window of the evaluation resize, nothing else"
        seen.add(found[0])
    assert len(seen) > 5  # and the window moves


def test_top_5_accuracy_counts_the_target_among_the_five_best_scores():
    tally = train.Tally(torch.device("cpu"))
    outputs = torch.tensor([
        [9.0, 8, 7, 6, 5, 4, 3],  # target 4: fifth best -> top-5 right, top-1 wrong
        [9.0, 8, 7, 6, 5, 4, 3],  # target 5: sixth best -> both wrong
        [1.0, 2, 3, 4, 5, 6, 9],  # target 6: best -> both right
    ])
    tally.add(torch.tensor(0.5), outputs, torch.tensor([4, 5, 6]))
    assert tally.result()[1] == pytest.approx(1 / 3)
    assert tally.result()[2] == pytest.approx(2 / 3)
    few = train.Tally(torch.device("cpu"))  # three classes: every class is in the top five
    few.add(torch.tensor(0.5), torch.tensor([[3.0, 2, 1]]), torch.tensor([2]))
    assert few.result()[2] == 1.0


def test_gradient_clipping_bounds_the_global_norm_of_each_step():
    def gradient_norm(clip: float) -> float:
        torch.manual_seed(0)
        model = models.build_model("resnet18", 3)
        optimizer = optimization.build_optimizer(model, "sgd", 0.1, 0.9, 1e-4)
        batch = (torch.randn(4, 3, 32, 32) * 50, torch.tensor([0, 1, 2, 0]))
        train.train_one_epoch(
            model, [batch], torch.nn.CrossEntropyLoss(), optimizer,
            torch.amp.GradScaler("cpu", enabled=False), torch.device("cpu"), checkpoints.StopSignal(),
            gradient_clip_norm=clip,
        )
        return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()

    unclipped = gradient_norm(0.0)
    assert unclipped > 1.0
    assert gradient_norm(0.5) == pytest.approx(0.5, rel=1e-3)


def test_workers_feed_a_gpu_but_leave_a_cpus_cores_to_the_model_step(monkeypatch):
    monkeypatch.setenv("SM_NUM_CPUS", "8")
    assert train.select_workers(None, torch.device("cpu")) == 0
    assert train.select_workers(None, torch.device("cuda")) == 8
    assert train.select_workers(None, torch.device("cpu"), streaming=True) == 8  # reads wait on S3
    assert train.select_workers(3, torch.device("cpu")) == 3


def input_data_config(mode: str) -> str:
    return json.dumps({"training": {"TrainingInputMode": mode, "S3DistributionType": "FullyReplicated"}})


@pytest.mark.parametrize("mode", ["File", "FastFile"])
def test_file_and_fast_file_channels_are_read_as_folders(monkeypatch, mode, caplog):
    monkeypatch.setenv("SM_INPUT_DATA_CONFIG", input_data_config(mode))
    with caplog.at_level(logging.INFO, logger="classifier.sagemaker_env"):
        assert sagemaker_env.check_input_modes() == {"training": mode}
    assert f"channel training: input mode {mode}" in caplog.text


def test_a_pipe_channel_is_refused_with_what_to_use_instead(monkeypatch):
    monkeypatch.setenv("SM_INPUT_DATA_CONFIG", input_data_config("Pipe"))
    with pytest.raises(TrainingError, match=r"\['training'\] use input mode Pipe.*File or FastFile"):
        sagemaker_env.check_input_modes()


def test_input_modes_come_from_the_config_file_without_the_toolkit(monkeypatch, tmp_path):
    monkeypatch.delenv("SM_INPUT_DATA_CONFIG", raising=False)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    assert sagemaker_env.input_modes() == {}
    config = tmp_path / sagemaker_env.INPUT_DATA_CONFIG_FILE
    config.parent.mkdir(parents=True)
    config.write_text(input_data_config("FastFile"))
    assert sagemaker_env.input_modes() == {"training": "FastFile"}
