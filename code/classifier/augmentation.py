"""Training-time augmentation presets (the ``augment`` hyperparameter), in one place.

Every preset ends like the evaluation transform (``classifier.preprocessing``): a square of
``image_size`` pixels, normalised with the same mean and standard deviation. They differ in how
far a training view strays from the evaluation view:

* ``none``: exactly the evaluation view (resize the shorter side, centre crop);
* ``light``: the evaluation resize, then a crop at a random position instead of the centre (a
  shift of up to ``(resize - image_size) / 2`` pixels: 1/16 of the side). No flip, no change of
  scale: right for any dataset, including text, digits and medical images, where a mirror image
  or a small part of the picture is another thing (or nothing);
* ``standard``: the ImageNet recipe for natural photos: a random crop of 8-100 % of the area at
  a random aspect ratio, resized to ``image_size``, mirrored half of the time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision import transforms

from classifier.hyperparameters import AUGMENT_PRESETS
from classifier.preprocessing import EvalTransform, PreprocessConfig


def _normalised(config: PreprocessConfig) -> list[Callable]:
    return [transforms.ToTensor(), transforms.Normalize(config.mean, config.std)]


def train_transform(preset: str, image_size: int) -> Callable[..., torch.Tensor]:
    """The transform of the training split for ``preset`` (one of ``AUGMENT_PRESETS``)."""
    config = PreprocessConfig.for_image_size(image_size)
    if preset == "none":
        return EvalTransform(config)
    if preset == "light":
        return transforms.Compose([
            transforms.Resize(config.resize_size, antialias=True),
            transforms.RandomCrop(config.image_size),
            *_normalised(config),
        ])
    if preset == "standard":
        return transforms.Compose([
            transforms.RandomResizedCrop(config.image_size, antialias=True),
            transforms.RandomHorizontalFlip(),
            *_normalised(config),
        ])
    raise ValueError(f"unknown augment preset {preset!r}; expected one of {AUGMENT_PRESETS}")
