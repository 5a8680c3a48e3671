"""Dataset archives: a download is checked (size, checksum) and resumed; a zip is unpacked atomically.

A small HTTP server on a loopback port plays S3: it sends an ETag (the MD5 of single-part objects),
honours Range with If-Range, and can be told to drop the connection part way or to corrupt a byte.
"""

from __future__ import annotations

import hashlib
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scripts.datasets import download
from scripts.datasets.download import DownloadError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class FileServer:
    """Serves ``PAYLOAD`` at ``/data.zip``; ``cut_after`` bytes then a dropped connection, ``corrupt``
    a flipped byte, ``etag`` None for none."""

    def __init__(self):
        self.cut_after: int | None = None
        self.corrupt = False
        self.etag: str | None = f'"{hashlib.md5(PAYLOAD).hexdigest()}"'
        self.ranges: list[str | None] = []
        files = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = bytearray(PAYLOAD)
                if files.corrupt:
                    body[1000] ^= 0xFF
                start, status = 0, 200
                requested = self.headers.get("Range")
                files.ranges.append(requested)
                if requested and self.headers.get("If-Range") in (files.etag, None):
                    start, status = int(requested.removeprefix("bytes=").rstrip("-")), 206
                self.send_response(status)
                if files.etag:
                    self.send_header("ETag", files.etag)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                sent = body[start:]
                if files.cut_after is not None:
                    sent = sent[: files.cut_after]
                self.wfile.write(sent)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/data.zip"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    files = FileServer()
    yield files
    files.server.shutdown()
    files.server.server_close()


def test_a_download_cut_short_is_never_taken_as_done_and_resumes_where_it_stopped(server, tmp_path):
    target = tmp_path / "data.zip"
    server.cut_after = 300_000
    with pytest.raises(DownloadError, match=f"got 300000 of {len(PAYLOAD)} bytes"):
        download.download(server.url, target)
    assert not target.exists()
    assert (tmp_path / "data.zip.part").stat().st_size == 300_000

    server.cut_after = None
    assert download.download(server.url, target) == target
    assert server.ranges[-1] == "bytes=300000-"  # only the rest was fetched
    assert target.read_bytes() == PAYLOAD
    assert not (tmp_path / "data.zip.part").exists()


def test_a_download_whose_md5_differs_from_its_etag_is_refused_and_removed(server, tmp_path):
    server.corrupt = True
    with pytest.raises(DownloadError, match=r"MD5 is [0-9a-f]+, expected"):
        download.download(server.url, tmp_path / "data.zip")
    assert not (tmp_path / "data.zip").exists() and not (tmp_path / "data.zip.part").exists()


def test_a_known_sha256_is_checked_and_a_file_already_there_is_kept(server, tmp_path):
    server.etag = None  # no MD5 to go by: the caller's SHA-256 decides
    good = hashlib.sha256(PAYLOAD).hexdigest()
    with pytest.raises(DownloadError, match="SHA256"):
        download.download(server.url, tmp_path / "data.zip", sha256="0" * 64)
    assert download.download(server.url, tmp_path / "data.zip", sha256=good).read_bytes() == PAYLOAD

    mine = tmp_path / "mine.zip"
    mine.write_bytes(b"my own file")
    with pytest.raises(DownloadError, match="remove it to download it again"):
        download.download(server.url, mine, sha256=good)
    assert mine.read_bytes() == b"my own file"  # refused, not deleted


def make_zip(path, names=("dogImages/train/a.txt", "dogImages/valid/b.txt")):
    with zipfile.ZipFile(path, "w") as zipped:
        for name in names:
            zipped.writestr(name, name)
    return path


def test_an_extraction_appears_whole_with_its_stamp_and_is_reused(tmp_path):
    archive = make_zip(tmp_path / "dogImages.zip")
    target = download.extract_zip(archive, tmp_path / "work" / "dogImages")
    assert (target / "dogImages" / "valid" / "b.txt").read_text() == "dogImages/valid/b.txt"
    assert json.loads((target / download.EXTRACTED_STAMP).read_text())["archive"] == "dogImages.zip"
    assert [path.name for path in (tmp_path / "work").iterdir()] == ["dogImages"]  # no scratch left
    (target / "dogImages" / "train" / "a.txt").write_text("touched")
    assert download.extract_zip(archive, target) == target  # the same archive: reused as it is
    assert (target / "dogImages" / "train" / "a.txt").read_text() == "touched"


def test_a_half_extracted_folder_is_never_taken_as_done_nor_deleted(tmp_path):
    archive = make_zip(tmp_path / "dogImages.zip")
    half = tmp_path / "work" / "dogImages"
    (half / "dogImages" / "train").mkdir(parents=True)  # what an interrupted unzip used to leave
    with pytest.raises(DownloadError, match="not a finished extraction"):
        download.extract_zip(archive, half)
    assert (half / "dogImages" / "train").is_dir()


def test_an_interrupted_extraction_leaves_nothing_in_place_and_the_next_one_succeeds(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "dogImages.zip")
    target = tmp_path / "work" / "dogImages"

    def crash(self, *args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as patched:
        patched.setattr(zipfile.ZipFile, "extractall", crash)
        with pytest.raises(DownloadError, match="disk full"):
            download.extract_zip(archive, target)
    assert not target.exists() and list((tmp_path / "work").iterdir()) == []
    assert (download.extract_zip(archive, target) / "dogImages" / "train" / "a.txt").is_file()


def test_an_extraction_of_another_archive_is_replaced(tmp_path):
    older = make_zip(tmp_path / "dogImages.zip", ["dogImages/train/old.txt"])
    target = download.extract_zip(older, tmp_path / "work" / "dogImages")
    newer = make_zip(tmp_path / "dogImages-2.zip", ["dogImages/train/new.txt"])
    assert download.extract_zip(newer, target) == target
    assert (target / "dogImages" / "train" / "new.txt").is_file()
    assert not (target / "dogImages" / "train" / "old.txt").exists()
    assert [path.name for path in (tmp_path / "work").iterdir()] == ["dogImages"]
