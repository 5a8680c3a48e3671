"""The training data: the checked ImageFolder splits of the input channels, and their loaders.

The layout rules (splits, class folders, image files) are ``classifier.dataset``'s, shared with
``make upload-data``. Every image is decoded once up front with the serving decoder
(``preprocessing.load_image``): unreadable images are skipped and counted, and a split with too
many of them fails the job.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms

from classifier.dataset import DatasetListing, class_name, find_split_dirs, list_dataset
from classifier.errors import DatasetError
from classifier.preprocessing import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, PreprocessConfig, load_image

logger = logging.getLogger(__name__)

# How many unreadable images are named in the log and in the failure message.
BAD_IMAGES_SHOWN = 5


def unreadable_reason(path: Path) -> str | None:
    """Why ``path`` cannot be decoded as serving would decode it, or None if it can."""
    try:
        load_image(path)
    except Exception as error:  # Pillow raises many types for broken files
        return f"{type(error).__name__}: {error}"
    return None


@dataclass(frozen=True)
class Split:
    """One split's readable images as ``(path, class index)`` and the unreadable ones with reasons."""

    name: str
    root: Path
    samples: list[tuple[Path, int]]
    bad_images: list[tuple[Path, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ImageFolderSplits:
    """The checked dataset: class folders (in output order) and the three splits."""

    class_folders: list[str]
    splits: dict[str, Split]

    @property
    def class_names(self) -> list[str]:
        return [class_name(folder) for folder in self.class_folders]

    def bad_image_counts(self) -> dict[str, int]:
        return {name: len(split.bad_images) for name, split in self.splits.items()}


def _scan_split(
    name: str, root: Path, listed: list[tuple[Path, int]], class_folders: list[str],
    max_bad_fraction: float, pool: ThreadPoolExecutor,
) -> Split:
    reasons = list(pool.map(lambda sample: unreadable_reason(sample[0]), listed))
    samples = [sample for sample, reason in zip(listed, reasons, strict=True) if reason is None]
    bad = [(sample[0], reason) for sample, reason in zip(listed, reasons, strict=True) if reason is not None]
    for path, reason in bad[:BAD_IMAGES_SHOWN]:
        logger.warning("skipping unreadable image %s (%s)", path, reason)
    if bad:
        logger.warning("split '%s': %d of %d images unreadable, skipped", name, len(bad), len(listed))

    fraction = len(bad) / len(listed)
    if fraction > max_bad_fraction:
        raise DatasetError(
            f"{len(bad)} of {len(listed)} images in split '{name}' ({fraction:.1%}) cannot be read, "
            f"more than max-bad-image-fraction={max_bad_fraction} allows; first: "
            + "; ".join(f"{path.relative_to(root)}: {reason}" for path, reason in bad[:BAD_IMAGES_SHOWN])
        )
    present = {index for _, index in samples}
    emptied = [folder for index, folder in enumerate(class_folders) if index not in present]
    if emptied:
        raise DatasetError(f"class(es) {emptied} in split '{name}' have no readable images")
    return Split(name=name, root=root, samples=samples, bad_images=bad)


def load_splits(
    channels: Mapping[str, Path], max_bad_fraction: float, scan_threads: int = 4
) -> ImageFolderSplits:
    """Finds and checks the three splits; every image is decoded once to find unreadable ones."""
    listing: DatasetListing = list_dataset(find_split_dirs(channels))
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, scan_threads)) as pool:
        splits = {
            name: _scan_split(name, root, listing.images[name], listing.class_folders, max_bad_fraction, pool)
            for name, root in listing.split_dirs.items()
        }
    logger.info(
        "data: %d classes; %s images; checked in %.1f s",
        len(listing.class_folders),
        ", ".join(f"{name} {len(split.samples)}" for name, split in splits.items()),
        time.monotonic() - started,
    )
    return ImageFolderSplits(class_folders=listing.class_folders, splits=splits)


class ImageDataset(Dataset):
    """``(transformed image, class index)`` pairs, decoded with the serving decoder."""

    def __init__(self, samples: list[tuple[Path, int]], transform: Callable[..., torch.Tensor]):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_image(path)), label


def train_transform(image_size: int) -> Callable[..., torch.Tensor]:
    """Training augmentation (torchvision), normalised like the evaluation transform."""
    return transforms.Compose([
        transforms.RandomResizedCrop(image_size, antialias=True),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def eval_transform(image_size: int) -> EvalTransform:
    """The transform of validation and test: the very one serving applies."""
    return EvalTransform(PreprocessConfig.for_image_size(image_size))


def _worker_init(worker_id: int) -> None:
    # The main process handles SIGTERM/SIGINT (checkpoint, clean exit) and then stops the workers.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_loaders(
    data: ImageFolderSplits, image_size: int, batch_size: int, workers: int, pin_memory: bool,
    samplers: Mapping[str, Sampler] | None = None,
) -> dict[str, DataLoader]:
    """One loader per split: shuffled and augmented for train, the serving transform otherwise.

    ``samplers`` pick each split's share of a data-parallel process (``classifier.distributed``).
    """
    loaders = {}
    for name, split in data.splits.items():
        training = name == "train"
        transform = train_transform(image_size) if training else eval_transform(image_size)
        dataset = ImageDataset(split.samples, transform)
        sampler = (samplers or {}).get(name)
        loaders[name] = DataLoader(
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
        )
    return loaders
