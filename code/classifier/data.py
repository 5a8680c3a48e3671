"""The training data: the listed ImageFolder splits of the input channels, and their loaders.

The layout rules (splits, class folders, image files) are ``classifier.dataset``'s, shared with
``make upload-data``; start-up only lists the files (no image is opened before the first step).
Images are decoded with the serving decoder (``preprocessing.load_image``) as they are loaded:
unreadable ones are skipped, counted and named, and a split with too many of them fails the job
(``classifier.bad_images``). Training augmentation is ``classifier.augmentation``'s.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from classifier import augmentation
from classifier.bad_images import BadImages, CountingLoader, Unreadable, collate_readable
from classifier.dataset import DatasetListing, class_name, find_split_dirs, list_dataset
from classifier.preprocessing import EvalTransform, PreprocessConfig, load_image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """One split's images as ``(path, class index)``, as listed (readable or not)."""

    name: str
    root: Path
    samples: list[tuple[Path, int]]


@dataclass(frozen=True)
class ImageFolderSplits:
    """The listed dataset: class folders (in output order) and the three splits."""

    class_folders: list[str]
    splits: dict[str, Split]

    @property
    def class_names(self) -> list[str]:
        return [class_name(folder) for folder in self.class_folders]


def load_splits(channels: Mapping[str, Path]) -> ImageFolderSplits:
    """Finds, lists and checks the three splits by the dataset rules; opens no image."""
    started = time.monotonic()
    listing: DatasetListing = list_dataset(find_split_dirs(channels))
    splits = {
        name: Split(name=name, root=root, samples=listing.images[name])
        for name, root in listing.split_dirs.items()
    }
    logger.info(
        "data: %d classes; %s images; listed in %.1f s",
        len(listing.class_folders),
        ", ".join(f"{name} {len(split.samples)}" for name, split in splits.items()),
        time.monotonic() - started,
    )
    return ImageFolderSplits(class_folders=listing.class_folders, splits=splits)


class ImageDataset(Dataset):
    """``(transformed image, class index)`` pairs, decoded with the serving decoder.

    An image that cannot be decoded comes back as an ``Unreadable`` marker (for ``BadImages``).
    """

    def __init__(self, samples: list[tuple[Path, int]], transform: Callable[..., torch.Tensor]):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | Unreadable:
        path, label = self.samples[index]
        try:
            image = load_image(path)
        except Exception as error:  # Pillow raises many types for broken files; OSError for vanished ones
            return Unreadable(index, f"{type(error).__name__}: {error}")
        return self.transform(image), label


def eval_transform(image_size: int) -> EvalTransform:
    """The transform of validation and test: the very one serving applies."""
    return EvalTransform(PreprocessConfig.for_image_size(image_size))


def _worker_init(worker_id: int) -> None:
    # The main process handles SIGTERM/SIGINT (checkpoint, clean exit) and then stops the workers.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_loaders(
    data: ImageFolderSplits,
    image_size: int,
    batch_size: int,
    workers: int,
    pin_memory: bool,
    max_bad_fraction: float = 0.0,
    augment: str = "light",
    samplers: Mapping[str, Sampler] | None = None,
) -> dict[str, CountingLoader]:
    """One loader per split: shuffled and augmented (``augment`` preset) for train, the serving
    transform otherwise; each books its split's unreadable images (``loader.bad_images``).

    ``samplers`` pick each split's share of a data-parallel process (``classifier.distributed``).
    """
    loaders = {}
    for name, split in data.splits.items():
        training = name == "train"
        if training:
            transform = augmentation.train_transform(augment, image_size)
        else:
            transform = eval_transform(image_size)
        dataset = ImageDataset(split.samples, transform)
        sampler = (samplers or {}).get(name)
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=training and sampler is None,
            sampler=sampler,
            # A last batch of one image breaks BatchNorm in training mode.
            drop_last=training and len(dataset if sampler is None else sampler) > batch_size,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=workers > 0,
            worker_init_fn=_worker_init if workers > 0 else None,
            collate_fn=collate_readable,
        )
        bad_images = BadImages(name, split.root, split.samples, data.class_folders, max_bad_fraction)
        loaders[name] = CountingLoader(loader, bad_images, min_batch_size=2 if training else 1)
    return loaders


def bad_image_counts(loaders: Mapping[str, CountingLoader]) -> dict[str, int]:
    """Unreadable images found so far, per split (whole once every split has been read once)."""
    return {name: loader.bad_images.count for name, loader in loaders.items()}


def readable_splits(data: ImageFolderSplits, loaders: Mapping[str, CountingLoader]) -> dict[str, Split]:
    """Each split without the images its loader found unreadable: for passes over the images outside
    the loaders (the int8 calibration and evaluation at export)."""
    readable = {}
    for name, split in data.splits.items():
        unreadable = loaders[name].bad_images.found
        readable[name] = replace(
            split, samples=[sample for index, sample in enumerate(split.samples) if index not in unreadable]
        )
    return readable
