"""The dataset rules, in one place for the trainer and ``make upload-data``: ImageFolder splits.

A dataset is three splits, ``train``, ``valid`` (or ``validation``/``val``) and ``test``, each
holding one folder per class (``001.Affenpinscher/``) with that class's images; the class name
is the folder name without its numeric prefix. Every split has the same class folders, none
without images, and no two folders give the same class name. Two layouts work, as SageMaker
delivers input channels:

* one channel (``training``, as the dogImages upload) holding ``train/ valid/ test/`` folders;
* one channel per split: ``train``, ``valid`` (or ``validation``/``val``) and ``test``.

This module only looks at names: whether an image decodes is the trainer's business
(``classifier.data``). Standard library only: the launchers import it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from classifier.errors import DatasetError

SPLITS = ("train", "valid", "test")
# Folder or channel names accepted for each split, in order of preference.
SPLIT_ALIASES = {"train": ("train",), "valid": ("valid", "validation", "val"), "test": ("test",)}
# The channel that holds all three splits (dogImages is uploaded as one prefix).
COMBINED_CHANNEL = "training"
# What Pillow, the serving decoder, reads; other files in class folders are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
# How many names an error message lists before it says how many more there are.
NAMES_SHOWN = 5

_NUMBERED_FOLDER = re.compile(r"^\d+\.(.+)$")


def class_name(folder: str) -> str:
    """The readable name of a class folder: ``001.Affenpinscher`` -> ``Affenpinscher``."""
    match = _NUMBERED_FOLDER.match(folder)
    return match.group(1) if match else folder


def is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def shorten(items: Sequence[object], limit: int = NAMES_SHOWN) -> str:
    """``[a, b, c, ...] (12)``: the first few of a long list and how many there are."""
    shown = ", ".join(str(item) for item in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"


def _pick_alias(split: str, names: Sequence[str]) -> str | None:
    return next((alias for alias in SPLIT_ALIASES[split] if alias in names), None)


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def split_dirs_in(root: Path) -> dict[str, Path] | None:
    """The three split folders directly under ``root``, or None when one is missing."""
    names = _subfolders(root) if root.is_dir() else []
    found = {split: _pick_alias(split, names) for split in SPLITS}
    if any(folder is None for folder in found.values()):
        return None
    return {split: root / folder for split, folder in found.items()}


def find_dataset_root(folder: Path) -> Path:
    """``folder`` if it holds the splits, else its one subfolder that does (``dogImages/`` in a zip)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder not found: {folder}")
    if split_dirs_in(folder):
        return folder
    candidates = [child for child in map(folder.joinpath, _subfolders(folder)) if split_dirs_in(child)]
    if len(candidates) == 1:
        return candidates[0]
    raise DatasetError(
        f"{folder} holds no train/ valid/ test/ folders (nor does a single subfolder); "
        f"found {_subfolders(folder) or 'no folders'}"
    )


def find_split_dirs(channels: Mapping[str, Path]) -> dict[str, Path]:
    """The folder of each split, from the job's input channels (``sagemaker_env.channels()``)."""
    if not channels:
        raise DatasetError(
            "no input data: expected a 'training' channel holding train/ valid/ test/ folders, "
            "or channels named train, valid and test (no SM_CHANNEL_* variable is set)"
        )
    per_split = {split: _pick_alias(split, list(channels)) for split in SPLITS}
    if any(per_split.values()):
        missing = [split for split, channel in per_split.items() if channel is None]
        if missing:
            raise DatasetError(
                f"missing split channel(s) {missing}: with one channel per split, channels train, "
                f"valid and test are all needed (got channels {sorted(channels)})"
            )
        return {split: Path(channels[channel]) for split, channel in per_split.items()}

    if COMBINED_CHANNEL in channels:
        channel = COMBINED_CHANNEL
    elif len(channels) == 1:
        channel = next(iter(channels))
    else:
        raise DatasetError(
            f"cannot tell which channel holds the data: got channels {sorted(channels)}; use one "
            f"'{COMBINED_CHANNEL}' channel holding train/ valid/ test/, or channels train, valid and test"
        )
    root = Path(channels[channel])
    found = split_dirs_in(root)
    if found is None:
        subfolders = _subfolders(root) if root.is_dir() else []
        missing = [split for split in SPLITS if _pick_alias(split, subfolders) is None]
        raise DatasetError(
            f"missing split folder(s) {missing} in channel '{channel}' ({root}); "
            f"expected train/ valid/ test/, found {subfolders or 'no folders'}"
        )
    return found


def list_images(folder: Path) -> list[Path]:
    """The image files under ``folder`` (recursively, by extension, hidden ones left out), sorted."""
    found = []
    for directory, subdirs, files in os.walk(folder, followlinks=True):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        found += [Path(directory) / name for name in files if is_image(name)]
    return sorted(found)


def list_other_files(folder: Path) -> list[Path]:
    """The visible files under ``folder`` that are not images (reported, never trained on or uploaded)."""
    return sorted(
        path for path in Path(folder).rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and not is_image(path.name)
    )


def class_folder_problems(folders_by_split: Mapping[str, list[str]]) -> list[str]:
    """What is wrong with the class folders: none at all, differences between splits, duplicate names."""
    empty = [split for split, folders in folders_by_split.items() if not folders]
    if empty:
        return [f"split(s) {empty} have no class folders"]
    reference_split, reference = next(iter(folders_by_split.items()))
    differences = []
    for split, folders in folders_by_split.items():
        lacking = sorted(set(reference) - set(folders))
        extra = sorted(set(folders) - set(reference))
        if lacking:
            differences.append(f"'{split}' lacks {shorten(lacking)}")
        if extra:
            differences.append(f"'{split}' has extra {shorten(extra)}")
    problems = []
    if differences:
        problems.append(
            f"the splits have different class folders ({'; '.join(differences)}, "
            f"compared with '{reference_split}'): every split needs the same classes"
        )
    names = [class_name(folder) for folder in reference]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        problems.append(f"class folders give duplicate class names {duplicates}")
    return problems


@dataclass(frozen=True)
class DatasetListing:
    """A checked dataset: the class folders (in the model's output order) and each split's images."""

    class_folders: list[str]
    split_dirs: dict[str, Path]
    images: dict[str, list[tuple[Path, int]]]  # per split: (path, class index)

    @property
    def class_names(self) -> list[str]:
        return [class_name(folder) for folder in self.class_folders]

    def counts(self) -> dict[str, int]:
        return {split: len(images) for split, images in self.images.items()}


def list_dataset(split_dirs: Mapping[str, Path]) -> DatasetListing:
    """Lists and checks the splits: the same class folders everywhere, every class with images.

    Raises one :class:`DatasetError` naming every problem found.
    """
    folders_by_split = {split: _subfolders(path) for split, path in split_dirs.items()}
    problems = class_folder_problems(folders_by_split)
    class_folders = next(iter(folders_by_split.values()))
    images: dict[str, list[tuple[Path, int]]] = {}
    empty = []
    for split, root in split_dirs.items():
        images[split] = []
        for index, folder in enumerate(class_folders):
            found = list_images(root / folder) if folder in folders_by_split[split] else []
            if not found and folder in folders_by_split[split]:
                empty.append(f"{split}/{folder}")
            images[split] += [(path, index) for path in found]
    if empty:
        problems.append(
            f"class folder(s) without images {shorten(empty)}: every class needs images in every split "
            f"(image files end in {', '.join(IMAGE_EXTENSIONS)})"
        )
    if problems:
        raise DatasetError("; ".join(problems))
    return DatasetListing(class_folders=class_folders, split_dirs=dict(split_dirs), images=images)
