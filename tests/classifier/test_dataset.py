"""The dataset rules the trainer and `make upload-data` share (``classifier.dataset``).

The two used to disagree: the trainer read ``.ppm`` but not ``.gif``, upload the reverse, and
upload refused ``validation/`` where the trainer took it. Now one module decides for both.
"""

from pathlib import Path

import pytest
from PIL import Image

from classifier import dataset
from classifier.errors import DatasetError
from scripts.aws import upload_data


def make_tree(root: Path, splits=("train", "validation", "test"), classes=("001.Akita", "002.Boxer"),
              suffixes=(".jpg", ".gif", ".ppm")) -> Path:
    for split in splits:
        for folder in classes:
            target = root / split / folder
            target.mkdir(parents=True)
            for number, suffix in enumerate(suffixes):
                Image.new("RGB", (8, 8), (number * 60, 0, 0)).save(target / f"{number}{suffix}")
    return root


def test_validation_is_a_name_of_the_valid_split_for_both(tmp_path):
    root = make_tree(tmp_path / "data")
    assert dataset.split_dirs_in(root)["valid"] == root / "validation"
    assert upload_data.validate_image_folder(root).images == {"train": 6, "valid": 6, "test": 6}
    trained_on = dataset.list_dataset(dataset.find_split_dirs({"training": root}))
    assert trained_on.counts() == {"train": 6, "valid": 6, "test": 6}


def test_both_read_the_same_image_files(tmp_path):
    root = make_tree(tmp_path / "data")
    (root / "train" / "001.Akita" / "notes.txt").write_text("not an image")
    (root / "train" / "001.Akita" / ".hidden.jpg").write_bytes(b"")
    uploaded = set(upload_data.local_files(upload_data.validate_image_folder(root)))
    trained = {path.relative_to(root).as_posix()
               for images in dataset.list_dataset(dataset.split_dirs_in(root)).images.values()
               for path, _ in images}
    assert uploaded == trained
    assert "train/001.Akita/1.gif" in trained and "train/001.Akita/2.ppm" in trained
    assert not any(name.endswith((".txt", ".hidden.jpg")) for name in trained)


def test_every_problem_is_named_in_one_error(tmp_path):
    root = make_tree(tmp_path / "data", classes=("001.Akita", "002.Boxer", "003.Akita"))
    for image in (root / "test" / "002.Boxer").iterdir():
        image.unlink()
    (root / "train" / "004.Collie").mkdir()
    with pytest.raises(DatasetError) as error:
        dataset.list_dataset(dataset.split_dirs_in(root))
    message = str(error.value)
    assert "'train' has extra [004.Collie] (1)" not in message  # train is the reference split
    assert "'validation'" not in message
    assert "lacks [004.Collie] (1)" in message
    assert "duplicate class names ['Akita']" in message
    assert "class folder(s) without images [train/004.Collie, test/002.Boxer] (2)" in message


def test_the_dataset_root_may_be_one_folder_down_as_in_the_dogimages_zip(tmp_path):
    root = make_tree(tmp_path / "unzipped" / "dogImages")
    assert dataset.find_dataset_root(tmp_path / "unzipped") == root
    with pytest.raises(DatasetError, match="found \\['photos'\\]"):
        (tmp_path / "other" / "photos").mkdir(parents=True)
        dataset.find_dataset_root(tmp_path / "other")


def test_class_names_drop_the_numeric_prefix():
    assert dataset.class_name("001.Affenpinscher") == "Affenpinscher"
    assert dataset.class_name("cats") == "cats"
