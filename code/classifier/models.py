"""The network: a torchvision ResNet, ImageNet weights or random, a fine-tuning policy, a new head."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from classifier.errors import TrainingError
from classifier.hyperparameters import FINE_TUNE_AUTO

logger = logging.getLogger(__name__)

# The layers each fine-tuning policy trains (ResNet module names); all others are frozen.
TRAINABLE_LAYERS = {"head": ("fc",), "last-block": ("layer4", "fc"), "all": None}
# What ``fine-tune auto`` means, by whether the network starts from ImageNet weights.
AUTO_POLICY = {True: "last-block", False: "all"}


def resolve_fine_tune(policy: str, pretrained: bool) -> str:
    """The fine-tuning policy to apply: ``auto`` resolved, a policy that would freeze random layers refused.

    Frozen random layers are fixed noise: with ``pretrained=false`` only ``all`` can learn.
    """
    if policy == FINE_TUNE_AUTO:
        resolved = AUTO_POLICY[pretrained]
        why = "ImageNet weights: the early layers keep them" if pretrained else "random initialisation"
        logger.info("fine-tune auto: %s (%s)", resolved, why)
        return resolved
    if not pretrained and policy != "all":
        raise TrainingError(
            f"fine-tune {policy} with pretrained=false would freeze randomly initialised layers, which "
            "then never learn: use fine-tune all (or auto), or start from ImageNet weights (pretrained=true)"
        )
    return policy


def _imagenet_model(name: str, weights_path: str | None) -> nn.Module:
    if weights_path:
        model = models.get_model(name, weights=None)
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as error:
            raise TrainingError(f"cannot read weights-path {weights_path}: {error}") from error
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            first_line = str(error).splitlines()[0]
            raise TrainingError(
                f"weights-path {weights_path} does not hold {name} ImageNet weights: {first_line}"
            ) from error
        logger.info("model: %s with ImageNet weights from %s", name, weights_path)
        return model
    weights = models.get_model_weights(name).DEFAULT
    try:
        # Downloads to $TORCH_HOME unless the image already holds them there.
        model = models.get_model(name, weights=weights)
    except Exception as error:  # URLError, HTTPError, SSL errors, a truncated download
        raise TrainingError(
            f"cannot get the ImageNet weights {weights} for {name} ({type(error).__name__}: {error}); "
            "bake them into the image, pass weights-path, or set pretrained=false"
        ) from error
    logger.info("model: %s with ImageNet weights %s", name, weights)
    return model


def build_model(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    fine_tune: str = "all",
) -> nn.Module:
    """A ResNet with a new ``num_classes`` head; layers outside the fine-tuning policy frozen.

    ``fine_tune`` may be ``auto`` (see ``resolve_fine_tune``).
    """
    fine_tune = resolve_fine_tune(fine_tune, pretrained)
    if pretrained:
        model = _imagenet_model(name, str(weights_path) if weights_path else None)
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        if weights_path:
            logger.warning("weights-path is ignored because pretrained=false")
        model = architecture(name, num_classes, zero_init_residual=True)
        logger.info("model: %s, random initialisation (residual blocks start as identities)", name)
    freeze(model, fine_tune)
    return model


def architecture(name: str, num_classes: int, zero_init_residual: bool = False) -> nn.Module:
    """The bare network with a ``num_classes`` head, to load trained weights into or to train from scratch.

    ``zero_init_residual``: each residual block's last BatchNorm starts at zero, so every block starts
    as the identity (Goyal et al. 2017): a random ResNet50 then trains at high learning rates too.
    """
    model = models.get_model(name, weights=None, zero_init_residual=zero_init_residual)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def freeze(model: nn.Module, policy: str) -> None:
    """Sets ``requires_grad`` by the fine-tuning policy (``head``, ``last-block`` or ``all``)."""
    trainable = TRAINABLE_LAYERS[policy]
    for name, parameter in model.named_parameters():
        parameter.requires_grad = trainable is None or name.split(".")[0] in trainable
    counts = [p.numel() for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())
    logger.info("fine-tune %s: %d of %d parameters train", policy, sum(counts), total)
