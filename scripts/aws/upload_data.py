"""Put an ImageFolder dataset (``train/``, ``valid/``, ``test/``) in S3 for SageMaker jobs.

    python -m scripts.aws.upload_data --download             dogImages from the seeds' public URL
    python -m scripts.aws.upload_data --data path/to/folder  a local ImageFolder (or a .zip of one)

The download is checked (its size, and its MD5 from S3's ETag or ``--sha256``) and resumes where
an interrupted one stopped; a zip is unpacked atomically (``scripts.datasets.download``), so a
half-done download or extraction is never taken for a finished one.

The dataset is checked before anything is uploaded, by the rules the trainer applies
(``classifier.dataset``): the three splits, the same class folders in each, images in every
class. The upload is a sync: objects already in S3 with the same size and MD5 are skipped, so an
interrupted upload resumes where it stopped. The bucket is created when it does not exist. It
prints the S3 URI that ``scripts.aws.tune`` and ``scripts.aws.train_job`` read by default
(``s3://<bucket>/<prefix>/data/dogImages``).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from classifier.dataset import (
    DatasetListing,
    find_dataset_root,
    list_dataset,
    list_other_files,
    split_dirs_in,
)
from classifier.errors import DatasetError
from scripts.aws import settings
from scripts.aws.settings import DEFAULT_DATASET, LaunchError
from scripts.datasets.download import DownloadError, download, extract_zip

DOG_IMAGES_URL = "https://s3-us-west-1.amazonaws.com/udacity-aind/dog-project/dogImages.zip"
DEFAULT_WORK_DIR = Path("data")  # git-ignored


@dataclass
class DatasetSummary:
    root: Path
    listing: DatasetListing
    other_files: list[str] = field(default_factory=list)  # not images: reported, not uploaded

    @property
    def classes(self) -> list[str]:
        return self.listing.class_folders

    @property
    def images(self) -> dict[str, int]:
        return self.listing.counts()

    def describe(self) -> str:
        counts = ", ".join(f"{split} {count}" for split, count in self.images.items())
        return f"{self.root}: {len(self.classes)} classes; images: {counts}"


def validate_image_folder(root: Path) -> DatasetSummary:
    """Checks the dataset with the trainer's rules; raises one ``DatasetError`` naming the problem."""
    root = Path(root)
    split_dirs = split_dirs_in(root)
    if split_dirs is None:
        raise DatasetError(f"{root} holds no train/ valid/ test/ folders")
    listing = list_dataset(split_dirs)
    others = [
        str(path.relative_to(root)) for folder in split_dirs.values() for path in list_other_files(folder)
    ]
    return DatasetSummary(root=root, listing=listing, other_files=others)


def local_files(summary: DatasetSummary) -> dict[str, Path]:
    """S3 key suffix (``train/001.X/a.jpg``) -> local image path, for every image of the dataset."""
    return {
        path.relative_to(summary.root).as_posix(): path
        for images in summary.listing.images.values()
        for path, _ in images
    }


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_uploaded(path: Path, remote: dict | None) -> bool:
    """Whether the S3 object (``{"Size", "ETag"}`` or None) already holds this file.

    Single-part uploads have the MD5 as their ETag; a multipart ETag (``...-N``) is judged by size.
    """
    if remote is None or remote["Size"] != path.stat().st_size:
        return False
    etag = remote["ETag"].strip('"')
    return "-" in etag or etag == file_md5(path)


def list_objects(s3, bucket: str, prefix: str) -> dict[str, dict]:
    """Every object under ``prefix/``: key suffix -> ``{"Size", "ETag"}``."""
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            found[item["Key"][len(prefix) + 1:]] = {"Size": item["Size"], "ETag": item["ETag"]}
    return found


def ensure_bucket(s3, bucket: str, region: str) -> bool:
    """Creates the bucket in ``region`` if it does not exist; returns whether it did."""
    try:
        s3.head_bucket(Bucket=bucket)
        return False
    except s3.exceptions.ClientError as error:
        if error.response["Error"]["Code"] not in ("404", "NoSuchBucket"):
            raise LaunchError(f"bucket {bucket!r} exists but is not yours to use: {error}") from error
    location = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=bucket, **location)
    return True


@dataclass
class SyncResult:
    uploaded: list[str]
    skipped: list[str]


def sync(s3, files: dict[str, Path], s3_uri: str, workers: int = 8) -> SyncResult:
    """Uploads the files that S3 does not already hold under ``s3_uri``."""
    bucket, _, prefix = s3_uri.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    remote = list_objects(s3, bucket, prefix)
    todo = [key for key, path in files.items() if not is_uploaded(path, remote.get(key))]
    skipped = sorted(set(files) - set(todo))
    print(f"{len(skipped)} files already in {s3_uri}, {len(todo)} to upload", file=sys.stderr)

    def upload(key: str) -> str:
        s3.upload_file(str(files[key]), bucket, f"{prefix}/{key}")
        return key

    uploaded = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, key in enumerate(pool.map(upload, todo), start=1):
            uploaded.append(key)
            if done % 500 == 0 or done == len(todo):
                print(f"uploaded {done}/{len(todo)}", file=sys.stderr)
    return SyncResult(uploaded=uploaded, skipped=skipped)


def prepare_dataset(
    data: Path | None, download_url: str | None, work_dir: Path, sha256: str | None = None
) -> DatasetSummary:
    """Downloads and/or unzips as asked, then validates; returns the checked dataset."""
    if download_url:
        data = download(download_url, Path(work_dir) / Path(download_url).name, sha256=sha256)
    if data is None:
        raise LaunchError("give --download or --data PATH (an ImageFolder folder or a .zip of one)")
    data = Path(data)
    if data.is_file() and data.suffix == ".zip":
        root = find_dataset_root(extract_zip(data, Path(work_dir) / data.stem))
    else:
        root = find_dataset_root(data)
    return validate_image_folder(root)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--download", action="store_true", help=f"download dogImages from {DOG_IMAGES_URL}")
    source.add_argument("--data", type=Path, help="a local ImageFolder folder, or a .zip holding one")
    parser.add_argument("--url", default=DOG_IMAGES_URL, help="the URL --download fetches")
    parser.add_argument("--sha256", help="the download's SHA-256, checked before it is used "
                                         "(without it: the MD5 in S3's ETag, when there is one)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                        help="where downloads are kept and zips unzipped")
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help="the dataset's name in S3")
    parser.add_argument("--workers", type=int, default=8, help="parallel uploads")
    settings.add_config_arguments(parser)
    args = parser.parse_args(argv)
    try:
        context = settings.connect(args, needs=("bucket",))
        summary = prepare_dataset(args.data, args.url if args.download else None, args.work_dir, args.sha256)
        print(summary.describe(), file=sys.stderr)
        if summary.other_files:
            print(f"skipping {len(summary.other_files)} files that are not images, e.g. "
                  f"{summary.other_files[:3]}", file=sys.stderr)
        s3 = context.client("s3")
        if ensure_bucket(s3, context.config.bucket, context.config.region):
            print(f"created bucket {context.config.bucket} in {context.config.region}", file=sys.stderr)
        destination = context.config.data_uri(args.dataset)
        result = sync(s3, local_files(summary), destination, workers=args.workers)
        print(f"uploaded {len(result.uploaded)}, skipped {len(result.skipped)} already there",
              file=sys.stderr)
    except (*settings.USER_ERRORS, DatasetError, DownloadError) as error:
        sys.exit(f"error: {error}")
    print(destination)


if __name__ == "__main__":
    main()
