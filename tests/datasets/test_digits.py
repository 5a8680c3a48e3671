"""The real-image dataset of the benchmarks: fetched from scikit-learn's wheel, checked, split."""

import numpy as np
import pytest
from PIL import Image

from classifier import dataset
from scripts.datasets import digits


def test_the_scans_are_the_uci_digits():
    images, labels = digits.load_digits()
    assert images.shape == (1797, 8, 8) and images.max() == digits.MAX_GREY
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_a_tampered_cache_is_fetched_again(tmp_path):
    cache = tmp_path / "digits.csv.gz"
    cache.write_bytes(b"not the digits")
    assert digits.sha256_of(digits.fetch_digits_csv(cache)) == digits.MEMBER_SHA256


def test_the_imagefolder_follows_the_dataset_rules_with_stratified_splits(tmp_path):
    root = digits.make_digits_dataset(tmp_path / "digits", image_size=16, seed=0)
    listing = dataset.list_dataset(dataset.split_dirs_in(root))
    assert listing.class_names[:3] == ["zero", "one", "two"] and len(listing.class_folders) == 10
    assert listing.counts() == {"train": 1258, "valid": 269, "test": 270}
    for split, images in listing.images.items():
        per_class = np.bincount([label for _, label in images])
        assert per_class.min() >= {"train": 120, "valid": 25, "test": 25}[split]
    first = Image.open(listing.images["test"][0][0])
    assert first.size == (16, 16) and first.mode == "RGB"


@pytest.mark.parametrize("seed", [0, 1])
def test_splits_are_disjoint_and_deterministic_per_seed(seed):
    _, labels = digits.load_digits()
    splits, again = digits.split_indices(labels, seed), digits.split_indices(labels, seed)
    assert all(np.array_equal(splits[split], again[split]) for split in splits)
    assert not np.array_equal(splits["test"], digits.split_indices(labels, seed + 1)["test"])
    everything = np.concatenate(list(splits.values()))
    assert len(everything) == len(set(everything.tolist())) == len(labels)
