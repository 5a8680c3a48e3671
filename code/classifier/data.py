"""The training data: ImageFolder splits found in the input channels, checked, and their loaders.

Two layouts work, as SageMaker delivers them:

* one channel (``training``, as the dogImages upload) holding ``train/ valid/ test/`` folders;
* one channel per split: ``train``, ``valid`` (or ``validation``/``val``) and ``test``.

Each split holds one folder per class (``001.Affenpinscher/``); the class name is the folder
name without its numeric prefix. The splits must have the same class folders, none empty.
Every image is decoded once up front with the serving decoder (``preprocessing.load_image``):
unreadable images are skipped and counted, and a split with too many of them fails the job.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from classifier.errors import TrainingError
from classifier.preprocessing import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, PreprocessConfig, load_image

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
# Folder or channel names accepted for each split, in order of preference.
SPLIT_ALIASES = {"train": ("train",), "valid": ("valid", "validation", "val"), "test": ("test",)}
# The channel that holds all three splits (dogImages is uploaded as one prefix).
COMBINED_CHANNEL = "training"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# How many unreadable images are named in the log and in the failure message.
BAD_IMAGES_SHOWN = 5

_NUMBERED_FOLDER = re.compile(r"^\d+\.(.+)$")


def class_name(folder: str) -> str:
    """The readable name of a class folder: ``001.Affenpinscher`` -> ``Affenpinscher``."""
    match = _NUMBERED_FOLDER.match(folder)
    return match.group(1) if match else folder


def _pick_alias(split: str, names: Sequence[str]) -> str | None:
    return next((alias for alias in SPLIT_ALIASES[split] if alias in names), None)


def find_split_dirs(channels: Mapping[str, Path]) -> dict[str, Path]:
    """The folder of each split, from the input channels (``sagemaker_env.channels()``)."""
    if not channels:
        raise TrainingError(
            "no input data: expected a 'training' channel holding train/ valid/ test/ folders, "
            "or channels named train, valid and test (no SM_CHANNEL_* variable is set)"
        )
    per_split = {split: _pick_alias(split, list(channels)) for split in SPLITS}
    if any(per_split.values()):
        missing = [split for split, channel in per_split.items() if channel is None]
        if missing:
            raise TrainingError(
                f"missing split channel(s) {missing}: with one channel per split, channels train, "
                f"valid and test are all needed (got channels {sorted(channels)})"
            )
        return {split: Path(channels[channel]) for split, channel in per_split.items()}

    if COMBINED_CHANNEL in channels:
        channel = COMBINED_CHANNEL
    elif len(channels) == 1:
        channel = next(iter(channels))
    else:
        raise TrainingError(
            f"cannot tell which channel holds the data: got channels {sorted(channels)}; use one "
            f"'{COMBINED_CHANNEL}' channel holding train/ valid/ test/, or channels train, valid and test"
        )
    root = Path(channels[channel])
    subfolders = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    split_dirs = {split: _pick_alias(split, subfolders) for split in SPLITS}
    missing = [split for split, folder in split_dirs.items() if folder is None]
    if missing:
        raise TrainingError(
            f"missing split folder(s) {missing} in channel '{channel}' ({root}); "
            f"expected train/ valid/ test/, found {subfolders or 'no folders'}"
        )
    return {split: root / folder for split, folder in split_dirs.items()}


def list_class_folders(split_dir: Path) -> list[str]:
    """The class folders of a split, sorted (the order fixes the model's output indices)."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_images(folder: Path) -> list[Path]:
    """The image files under ``folder`` (recursively, by extension), sorted."""
    found = []
    for directory, subdirs, files in os.walk(folder, followlinks=True):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        found += [
            Path(directory) / name
            for name in files
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return sorted(found)


def check_same_classes(folders_by_split: Mapping[str, list[str]]) -> list[str]:
    """The class folders common to all splits; fails naming the difference if they are not equal."""
    for split, folders in folders_by_split.items():
        if not folders:
            raise TrainingError(f"split '{split}' has no class folders")
    reference_split, reference = next(iter(folders_by_split.items()))
    problems = []
    for split, folders in folders_by_split.items():
        lacking = sorted(set(reference) - set(folders))
        extra = sorted(set(folders) - set(reference))
        if lacking:
            problems.append(f"'{split}' lacks {_shorten(lacking)}")
        if extra:
            problems.append(f"'{split}' has extra {_shorten(extra)}")
    if problems:
        raise TrainingError(
            f"the splits have different class folders ({'; '.join(problems)}, "
            f"compared with '{reference_split}'): every split needs the same classes"
        )
    names = [class_name(folder) for folder in reference]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise TrainingError(f"class folders give duplicate class names {duplicates}")
    return reference


def _shorten(items: Sequence[object], limit: int = BAD_IMAGES_SHOWN) -> str:
    shown = ", ".join(str(item) for item in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"


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
    name: str, root: Path, class_folders: list[str], max_bad_fraction: float, pool: ThreadPoolExecutor
) -> Split:
    listed: list[tuple[Path, int]] = []
    for index, folder in enumerate(class_folders):
        images = list_images(root / folder)
        if not images:
            raise TrainingError(f"class '{folder}' in split '{name}' has no images ({root / folder})")
        listed += [(path, index) for path in images]

    reasons = list(pool.map(lambda sample: unreadable_reason(sample[0]), listed))
    samples = [sample for sample, reason in zip(listed, reasons, strict=True) if reason is None]
    bad = [(sample[0], reason) for sample, reason in zip(listed, reasons, strict=True) if reason is not None]
    for path, reason in bad[:BAD_IMAGES_SHOWN]:
        logger.warning("skipping unreadable image %s (%s)", path, reason)
    if bad:
        logger.warning("split '%s': %d of %d images unreadable, skipped", name, len(bad), len(listed))

    fraction = len(bad) / len(listed)
    if fraction > max_bad_fraction:
        raise TrainingError(
            f"{len(bad)} of {len(listed)} images in split '{name}' ({fraction:.1%}) cannot be read, "
            f"more than max-bad-image-fraction={max_bad_fraction} allows; first: "
            + "; ".join(f"{path.relative_to(root)}: {reason}" for path, reason in bad[:BAD_IMAGES_SHOWN])
        )
    present = {index for _, index in samples}
    emptied = [folder for index, folder in enumerate(class_folders) if index not in present]
    if emptied:
        raise TrainingError(f"class(es) {emptied} in split '{name}' have no readable images")
    return Split(name=name, root=root, samples=samples, bad_images=bad)


def load_splits(
    channels: Mapping[str, Path], max_bad_fraction: float, scan_threads: int = 4
) -> ImageFolderSplits:
    """Finds and checks the three splits; every image is decoded once to find unreadable ones."""
    split_dirs = find_split_dirs(channels)
    class_folders = check_same_classes({name: list_class_folders(path) for name, path in split_dirs.items()})
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, scan_threads)) as pool:
        splits = {
            name: _scan_split(name, path, class_folders, max_bad_fraction, pool)
            for name, path in split_dirs.items()
        }
    logger.info(
        "data: %d classes; %s images; checked in %.1f s",
        len(class_folders),
        ", ".join(f"{name} {len(split.samples)}" for name, split in splits.items()),
        time.monotonic() - started,
    )
    return ImageFolderSplits(class_folders=class_folders, splits=splits)


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
    data: ImageFolderSplits, image_size: int, batch_size: int, workers: int, pin_memory: bool
) -> dict[str, DataLoader]:
    """One loader per split: shuffled and augmented for train, the serving transform otherwise."""
    loaders = {}
    for name, split in data.splits.items():
        training = name == "train"
        transform = train_transform(image_size) if training else eval_transform(image_size)
        dataset = ImageDataset(split.samples, transform)
        loaders[name] = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=training,
            # A last batch of one image breaks BatchNorm in training mode.
            drop_last=training and len(dataset) > batch_size,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=workers > 0,
            worker_init_fn=_worker_init if workers > 0 else None,
        )
    return loaders
