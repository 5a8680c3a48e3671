"""Dataset preparation and the resumable S3 sync, against a moto server."""

import zipfile

import boto3
import pytest
from aws_helpers import BUCKET, ROLE_ARN

from classifier.errors import DatasetError
from scripts.aws import upload_data
from scripts.aws.settings import LaunchConfig
from scripts.datasets.download import DownloadError
from scripts.datasets.sample import class_folder_names, make_dataset

COUNTS = {"train": 2, "valid": 1, "test": 1}


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "dogImages", num_classes=2, counts=COUNTS, size=16)


def zip_folder(folder, archive, arcroot):
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(folder.rglob("*")):
            zipped.write(path, f"{arcroot}/{path.relative_to(folder).as_posix()}")
    return archive


def test_validate_counts_classes_and_images(dataset):
    (dataset / "train" / class_folder_names(2)[0] / "notes.txt").write_text("not an image")
    summary = upload_data.validate_image_folder(dataset)
    assert summary.classes == class_folder_names(2)
    assert summary.images == {"train": 4, "valid": 2, "test": 2}
    assert summary.other_files == [f"train/{class_folder_names(2)[0]}/notes.txt"]
    assert "notes.txt" not in " ".join(upload_data.local_files(summary))


def test_validate_names_every_problem(dataset):
    first, second = class_folder_names(2)
    for image in (dataset / "valid" / first).iterdir():
        image.unlink()
    (dataset / "test" / second).rename(dataset / "test" / "999.Unknown")
    with pytest.raises(DatasetError) as error:
        upload_data.validate_image_folder(dataset)
    message = str(error.value)
    assert f"class folder(s) without images [valid/{first}] (1)" in message
    assert "'test' lacks" in message and "'test' has extra [999.Unknown] (1)" in message


def test_a_folder_without_splits_is_refused(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(DatasetError, match="holds no train/ valid/ test/ folders"):
        upload_data.prepare_dataset(tmp_path / "photos", None, tmp_path / "work")


def test_download_then_unzip_finds_the_dataset_root(dataset, tmp_path):
    archive = zip_folder(dataset, tmp_path / "dogImages.zip", "dogImages")
    work = tmp_path / "work"
    summary = upload_data.prepare_dataset(None, archive.as_uri(), work)
    assert summary.root == (work / "dogImages" / "dogImages").resolve()
    assert summary.images == {"train": 4, "valid": 2, "test": 2}
    # A second run reuses the download and the unzipped folder.
    archive.unlink()
    assert upload_data.prepare_dataset(None, archive.as_uri(), work).root == summary.root


def test_a_local_zip_is_unzipped_and_validated(dataset, tmp_path):
    archive = zip_folder(dataset, tmp_path / "mine.zip", "dogImages")
    summary = upload_data.prepare_dataset(archive, None, tmp_path / "work")
    assert summary.classes == class_folder_names(2)


def test_unsafe_zip_paths_are_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("../outside.txt", "x")
    with pytest.raises(DownloadError, match="unsafe path"):
        upload_data.extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "outside.txt").exists()


def test_a_broken_download_is_named(tmp_path):
    with pytest.raises(DownloadError, match="could not download"):
        upload_data.download((tmp_path / "missing.zip").as_uri(), tmp_path / "work" / "x.zip")
    assert not (tmp_path / "work" / "x.zip").exists()


def remote_keys(s3, prefix):
    return sorted(upload_data.list_objects(s3, BUCKET, prefix))


def test_sync_uploads_once_then_resumes_only_what_is_missing_or_changed(aws, dataset):
    s3 = boto3.client("s3")
    assert upload_data.ensure_bucket(s3, BUCKET, "us-east-1") is True
    assert upload_data.ensure_bucket(s3, BUCKET, "us-east-1") is False
    files = upload_data.local_files(upload_data.validate_image_folder(dataset))
    uri = LaunchConfig(region="us-east-1", bucket=BUCKET).data_uri()
    prefix = uri.removeprefix(f"s3://{BUCKET}/")

    first = upload_data.sync(s3, files, uri, workers=2)
    assert sorted(first.uploaded) == sorted(files) and first.skipped == []
    assert remote_keys(s3, prefix) == sorted(files)

    assert upload_data.sync(s3, files, uri).uploaded == []

    # An interrupted upload (one object missing) and a file changed in place (same size).
    gone, changed = sorted(files)[0], sorted(files)[-1]
    s3.delete_object(Bucket=BUCKET, Key=f"{prefix}/{gone}")
    data = bytearray(files[changed].read_bytes())
    data[-3] ^= 0xFF
    files[changed].write_bytes(bytes(data))
    resumed = upload_data.sync(s3, files, uri)
    assert sorted(resumed.uploaded) == sorted([gone, changed])
    body = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/{changed}")["Body"].read()
    assert body == bytes(data)


def test_cli_uploads_a_local_folder_and_prints_the_uri(aws, dataset, capsys):
    upload_data.main(["--data", str(dataset), "--bucket", BUCKET, "--prefix", "exp"])
    assert capsys.readouterr().out.strip() == f"s3://{BUCKET}/exp/data/dogImages"
    keys = upload_data.list_objects(boto3.client("s3"), BUCKET, "exp/data/dogImages")
    assert len(keys) == 8


def test_cli_without_a_bucket_fails_before_creating_anything(aws, dataset, capsys):
    with pytest.raises(SystemExit) as exit_info:
        upload_data.main(["--data", str(dataset), "--role-arn", ROLE_ARN])
    assert "no S3 bucket" in str(exit_info.value.code)
    assert boto3.client("s3").list_buckets()["Buckets"] == []
