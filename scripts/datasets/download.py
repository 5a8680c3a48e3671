"""Fetch a dataset archive and unpack it, so that nothing half-done is ever taken for done.

``download``: the file grows in ``<name>.part`` and becomes ``<name>`` only once its size matches
what the server announced and its checksum matches (a SHA-256 the caller knows, else the MD5 an S3
ETag carries); an interrupted download resumes with an HTTP range request, from where it stopped.
``extract_zip``: the archive is unpacked into a hidden sibling folder, stamped with what it was
unpacked from, and renamed into place in one step; a folder without that stamp is never taken as a
finished extraction (nor deleted: it may be someone's own).

Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path, PurePosixPath

EXTRACTED_STAMP = ".extracted.json"  # in a finished extraction: which archive it came from
PART_SUFFIX = ".part"
BLOCK = 1 << 20
REPORT_EVERY = 100 << 20
S3_MD5_ETAG = re.compile(r'^"?([0-9a-f]{32})"?$')  # a single-part S3 object's ETag is its MD5


class DownloadError(Exception):
    """A download or an archive that cannot be used; the message says what to do."""


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_digest(path: Path, algorithm: str, expected: str, url: str, ours: bool = True) -> None:
    """Raises DownloadError unless ``path`` has the expected digest; removes it only if ``ours``."""
    actual = file_digest(path, algorithm)
    if actual == expected.lower():
        return
    if ours:
        _forget(path)
        raise DownloadError(
            f"{url}: the downloaded file's {algorithm.upper()} is {actual}, expected {expected}; "
            "the file was removed: run again to download it afresh"
        )
    raise DownloadError(f"{path}: its {algorithm.upper()} is {actual}, expected {expected}; "
                        "remove it to download it again")


def _resume_state(partial: Path) -> dict:
    """What an earlier, interrupted download of ``partial`` knew about the file (its ETag)."""
    try:
        return json.loads(partial.with_name(partial.name + ".json").read_text())
    except (OSError, ValueError):
        return {}


def _remember(partial: Path, state: dict) -> None:
    partial.with_name(partial.name + ".json").write_text(json.dumps(state))


def _forget(partial: Path) -> None:
    partial.unlink(missing_ok=True)
    partial.with_name(partial.name + ".json").unlink(missing_ok=True)


def download(url: str, target: Path, sha256: str | None = None, timeout: float = 60) -> Path:
    """Downloads ``url`` to ``target`` (see the module's docstring); an existing ``target`` is kept
    (checked against ``sha256`` when given). Raises :class:`DownloadError` naming the problem."""
    target = Path(target)
    if target.is_file():
        if sha256:
            _check_digest(target, "sha256", sha256, str(target), ours=False)
        print(f"using the already downloaded {target}", file=sys.stderr)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + PART_SUFFIX)
    state = _resume_state(partial) if partial.is_file() else {}
    # Resume only a file the server can confirm unchanged (If-Range with its ETag or date).
    offset = partial.stat().st_size if state.get("validator") else 0
    headers = {"Range": f"bytes={offset}-", "If-Range": state["validator"]} if offset else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = offset and response.status == 206
            total = _expected_size(response, offset if resumed else 0)
            etag = response.headers.get("ETag")
            validator = etag or response.headers.get("Last-Modified")
            _remember(partial, {"validator": validator} if validator else {})
            done = offset if resumed else 0
            print(f"{'resuming' if resumed else 'downloading'} {url} to {target}"
                  f"{f' at {done >> 20} MB' if resumed else ''}", file=sys.stderr)
            with partial.open("ab" if resumed else "wb") as output:
                reported = done
                while block := response.read(BLOCK):
                    output.write(block)
                    done += len(block)
                    if done - reported >= REPORT_EVERY:
                        reported = done
                        print(f"  {done >> 20}{f' of {total >> 20}' if total else ''} MB", file=sys.stderr)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the range is past the file's end: the partial is stale
            _forget(partial)
            return download(url, target, sha256, timeout)
        raise DownloadError(f"could not download {url}: {error}") from error
    except OSError as error:  # URLError, timeouts, resets
        raise DownloadError(f"could not download {url}: {error}; run again to resume") from error
    if total is not None and done != total:
        raise DownloadError(
            f"could not download {url}: got {done} of {total} bytes (the connection ended early); "
            "run again to resume"
        )
    if sha256:
        _check_digest(partial, "sha256", sha256, url)
    elif etag and (match := S3_MD5_ETAG.match(etag)):
        _check_digest(partial, "md5", match.group(1), url)
    partial.replace(target)
    _forget(partial)
    return target


def _expected_size(response, offset: int) -> int | None:
    """The size the whole file will have, from Content-Range (a resumed download) or Content-Length."""
    content_range = response.headers.get("Content-Range", "")
    if match := re.match(r"bytes \d+-\d+/(\d+)", content_range):
        return int(match.group(1))
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _stamp_of(archive: Path) -> dict:
    status = Path(archive).stat()
    return {"archive": Path(archive).name, "size": status.st_size, "mtime_ns": status.st_mtime_ns}


def is_extracted_from(folder: Path, archive: Path) -> bool:
    """Whether ``folder`` is a finished extraction of this very archive (same name, size and time)."""
    try:
        return json.loads((Path(folder) / EXTRACTED_STAMP).read_text()) == _stamp_of(archive)
    except (OSError, ValueError):
        return False


def extract_zip(archive: Path, destination: Path) -> Path:
    """Unpacks ``archive`` into ``destination`` atomically, or reuses a finished extraction of it.

    A ``destination`` from another archive (by its stamp) is replaced; one without a stamp (half
    extracted by an older version, or not ours) is refused, never deleted. Paths that would leave
    the folder are refused. Returns ``destination``.
    """
    archive, destination = Path(archive), Path(destination).resolve()
    if destination.is_dir() and is_extracted_from(destination, archive):
        return destination
    if destination.exists() and not (destination / EXTRACTED_STAMP).is_file():
        raise DownloadError(
            f"{destination} exists but is not a finished extraction of {archive} (it has no "
            f"{EXTRACTED_STAMP}): it may be half extracted, or yours; remove it, or give it as the data"
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    for leftover in destination.parent.glob(f".{destination.name}.extracting-*"):
        shutil.rmtree(leftover, ignore_errors=True)  # an extraction that was interrupted
    scratch = destination.parent / f".{destination.name}.extracting-{uuid.uuid4().hex[:8]}"
    try:
        _unzip(archive, scratch)
        (scratch / EXTRACTED_STAMP).write_text(json.dumps(_stamp_of(archive)))
        if destination.exists():  # an extraction of another archive: swap it out, then remove it
            old = destination.parent / f".{destination.name}.extracting-old-{uuid.uuid4().hex[:8]}"
            destination.rename(old)
            scratch.rename(destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            scratch.rename(destination)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return destination


def _unzip(archive: Path, folder: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = [m for m in zipped.infolist() if not m.filename.startswith("__MACOSX/")]
            for member in members:
                path = PurePosixPath(member.filename)
                if path.is_absolute() or ".." in path.parts:
                    raise DownloadError(f"{archive}: refusing the unsafe path {member.filename!r}")
            folder.mkdir()
            zipped.extractall(folder, members)
    except zipfile.BadZipFile as error:
        raise DownloadError(f"{archive} is not a valid zip file: {error}") from error
    except OSError as error:
        raise DownloadError(f"could not unpack {archive} into {folder}: {error}") from error
