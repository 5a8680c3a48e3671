"""Unreadable images are found while loading (no decoding pass up front): skipped, counted once, named."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from classifier import bad_images, data, quantize
from classifier.errors import DatasetError
from classifier.preprocessing import PreprocessConfig
from scripts.datasets.sample import class_folder_names, make_dataset

CLASSES = class_folder_names(2)


@pytest.fixture
def dataset(tmp_path) -> Path:
    counts = {"train": 10, "valid": 4, "test": 4}
    return make_dataset(tmp_path / "data", num_classes=2, counts=counts, size=32)


def break_images(paths: list[Path]) -> None:
    for path in paths:
        path.write_bytes(b"\xff\xd8 not a whole JPEG")


def loaders_for(root: Path, max_bad_fraction: float, workers: int = 0, batch_size: int = 4):
    splits = data.load_splits({"training": root})
    return data.build_loaders(
        splits, 32, batch_size, workers, pin_memory=False, max_bad_fraction=max_bad_fraction
    )


def test_listing_opens_no_image(dataset, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was opened at start-up")

    monkeypatch.setattr(data, "load_image", no_decoding)
    break_images(sorted((dataset / "train" / CLASSES[0]).iterdir()))  # even broken files: not looked at
    splits = data.load_splits({"training": dataset})
    assert {name: len(split.samples) for name, split in splits.splits.items()} == {
        "train": 20, "valid": 8, "test": 8}


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_images_are_skipped_and_counted_once_across_epochs(dataset, workers, caplog):
    broken = sorted((dataset / "train" / CLASSES[1]).iterdir())[:2]
    break_images(broken)
    loaders = loaders_for(dataset, max_bad_fraction=0.2, workers=workers)
    with caplog.at_level(logging.WARNING, logger="classifier.bad_images"):
        for _ in range(2):  # the second epoch meets the same images again
            seen = sum(len(targets) for _, targets in loaders["train"])
            assert seen == 18  # 20 listed, 2 unreadable; batches of 4, the last full one kept
    assert data.bad_image_counts(loaders) == {"train": 2, "valid": 0, "test": 0}
    assert loaders["train"].bad_images.summary() == "split 'train': 2 of 20 images unreadable, skipped"
    named = [r.getMessage() for r in caplog.records]
    assert len(named) == 2 and all("skipping unreadable image" in message for message in named)
    assert {path.name for path in broken} == {message.split()[3].rsplit("/", 1)[1] for message in named}


def test_too_many_unreadable_images_fail_as_soon_as_the_limit_is_passed_naming_the_first(dataset):
    break_images(sorted((dataset / "valid" / CLASSES[0]).iterdir())[:2])
    loaders = loaders_for(dataset, max_bad_fraction=0.15, batch_size=2)
    with pytest.raises(DatasetError) as failure:
        for _ in loaders["valid"]:
            pass
    message = str(failure.value)
    assert message.startswith("2 of 8 images in split 'valid' (25.0%) cannot be read, more than "
                              "max-bad-image-fraction=0.15 allows; first: ")
    assert f"{CLASSES[0]}/0000.jpg: UnidentifiedImageError" in message


def test_a_class_left_without_a_readable_image_fails_the_split(dataset):
    break_images(sorted((dataset / "test" / CLASSES[1]).iterdir()))
    loaders = loaders_for(dataset, max_bad_fraction=0.9)
    with pytest.raises(DatasetError, match=rf"class {CLASSES[1]} in split 'test' has no readable image \(4"):
        for _ in loaders["test"]:
            pass


def test_a_batch_without_readable_images_is_left_out():
    broken = bad_images.Unreadable(3, "OSError: truncated")
    images, targets, unreadable = bad_images.collate_readable([broken])
    assert len(images) == len(targets) == 0 and unreadable == [broken]


def test_export_passes_leave_out_what_loading_found_and_calibration_skips_the_rest(dataset, caplog):
    """The int8 export reads images outside the loaders: the known unreadable ones are left out, and
    calibration skips one that no epoch reached."""
    broken_test = sorted((dataset / "test" / CLASSES[0]).iterdir())[0]
    break_images([broken_test])
    loaders = loaders_for(dataset, max_bad_fraction=0.5)
    for _ in loaders["test"]:
        pass
    readable = data.readable_splits(data.load_splits({"training": dataset}), loaders)
    assert broken_test not in {path for path, _ in readable["test"].samples}
    assert len(readable["test"].samples) == 7 and len(readable["train"].samples) == 20

    unreached = sorted((dataset / "train" / CLASSES[1]).iterdir())[0]
    break_images([unreached])
    paths = [*sorted((dataset / "train" / CLASSES[0]).iterdir())[:4], unreached]
    with caplog.at_level(logging.WARNING, logger="classifier.quantize"):
        batches = quantize.calibration_batches(paths, PreprocessConfig.for_image_size(32))
    assert len(batches) == 4 and all(batch.shape == (1, 3, 32, 32) for batch in batches)
    assert f"skipping unreadable image {unreached}" in caplog.text
