"""Unreadable images, found while loading: skipped, counted, named, and fatal past a limit.

Nothing decodes the dataset up front (on a large dataset that would be an extra pass of hours
before the first step). Instead the dataset returns an ``Unreadable`` marker for an image that
fails to decode, the collate function keeps those markers beside the batch, and ``BadImages``
(one per split, in the training process) books them: the first few are named in the log, a
split whose unreadable images pass ``max-bad-image-fraction`` of its images, or a class left
without a readable image, fails the job at once with the reason. The validation and test splits
are read whole at each evaluation; a training epoch reads all but the last partial batch (dropped,
and shuffled anew each epoch), so an unread training image may stay uncounted: the int8
calibration, which reads training images outside the loaders, skips any that fail.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from classifier.errors import DatasetError

logger = logging.getLogger(__name__)

# How many unreadable images are named in the log and in the failure message.
BAD_IMAGES_SHOWN = 5


class Unreadable(NamedTuple):
    """What the dataset returns in place of ``(image, label)`` for an image it cannot decode."""

    index: int
    reason: str


def collate_readable(items: list[tuple[torch.Tensor, int] | Unreadable]) -> tuple[Any, ...]:
    """``(images, targets, unreadable)``: the batch of the readable images, and the markers of the others."""
    unreadable = [item for item in items if isinstance(item, Unreadable)]
    readable = [item for item in items if not isinstance(item, Unreadable)]
    if not readable:
        return torch.empty(0), torch.empty(0, dtype=torch.long), unreadable
    images = torch.stack([image for image, _ in readable])
    targets = torch.tensor([label for _, label in readable], dtype=torch.long)
    return images, targets, unreadable


class BadImages:
    """The unreadable images of one split, as loading finds them (each counted once)."""

    def __init__(
        self, split: str, root: Path, samples: Sequence[tuple[Path, int]], class_folders: Sequence[str],
        max_fraction: float,
    ):
        self.split = split
        self.root = root
        self.samples = samples
        self.class_folders = class_folders
        self.max_fraction = max_fraction
        self.found: dict[int, str] = {}  # sample index -> reason, in the order found
        self._per_class = Counter(label for _, label in samples)
        self._bad_per_class: Counter[int] = Counter()

    @property
    def count(self) -> int:
        return len(self.found)

    def _name(self, index: int) -> str:
        path = self.samples[index][0]
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    def record(self, index: int, reason: str) -> None:
        """Books one unreadable image; raises ``DatasetError`` when the split can no longer train."""
        if index in self.found:
            return  # read again in a later epoch
        self.found[index] = reason
        if len(self.found) <= BAD_IMAGES_SHOWN:
            logger.warning("skipping unreadable image %s (%s)", self.samples[index][0], reason)
        total = len(self.samples)
        fraction = len(self.found) / total
        if fraction > self.max_fraction:
            first = "; ".join(f"{self._name(i)}: {r}" for i, r in list(self.found.items())[:BAD_IMAGES_SHOWN])
            raise DatasetError(
                f"{len(self.found)} of {total} images in split '{self.split}' ({fraction:.1%}) cannot be "
                f"read, more than max-bad-image-fraction={self.max_fraction} allows; first: {first}"
            )
        label = self.samples[index][1]
        self._bad_per_class[label] += 1
        if self._bad_per_class[label] == self._per_class[label]:
            raise DatasetError(
                f"class {self.class_folders[label]} in split '{self.split}' has no readable image "
                f"({self._per_class[label]} unreadable)"
            )

    def summary(self) -> str | None:
        """One line for the log when images were skipped, else None."""
        if not self.found:
            return None
        return f"split '{self.split}': {len(self.found)} of {len(self.samples)} images unreadable, skipped"


class CountingLoader:
    """A ``DataLoader`` whose batches are ``(images, targets)`` while its unreadable images are booked.

    Batches of fewer than ``min_batch_size`` readable images are left out (training: 2, as a
    batch of one breaks BatchNorm). Anything else (``sampler``, ``dataset``, ``batch_size``...) is
    the wrapped loader's.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, bad_images: BadImages, min_batch_size: int = 1):
        self.loader = loader
        self.bad_images = bad_images
        self.min_batch_size = min_batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, targets, unreadable in self.loader:
            for index, reason in unreadable:
                self.bad_images.record(index, reason)
            if len(targets) >= self.min_batch_size:
                yield images, targets

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)
