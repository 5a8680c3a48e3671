"""Environments that pin the same packages share their big files as hard links.

``train`` and ``dev`` both hold the training image's CUDA torch, its NVIDIA libraries, triton and
OpenVINO: 5 GB of identical files. After ``make`` creates one of them, it runs
``python -m scripts.engine.venv_links <new env> <peer env>``, which replaces each big file of the new
environment whose twin in the peer (same path under the environment, same bytes) exists with a hard
link to that twin. pip never writes into an installed file (it removes and writes anew), so an
upgrade or ``rm -rf`` of one environment leaves the other whole. Standard library only.
"""

from __future__ import annotations

import argparse
import filecmp
import os
from dataclasses import dataclass
from pathlib import Path

# Below this, a file is not worth comparing: dev's 426 files above it hold 5.2 of its 5.4 GB.
MIN_LINKED_BYTES = 256 * 1024


@dataclass(frozen=True)
class Linked:
    files: int
    bytes: int


def _twins(env: Path, peer: Path, min_bytes: int):
    for path in sorted(env.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        twin = peer / path.relative_to(env)
        if twin.is_symlink() or not twin.is_file():
            continue
        stat, twin_stat = path.stat(), twin.stat()
        if stat.st_size < min_bytes or (stat.st_size, stat.st_mode) != (twin_stat.st_size, twin_stat.st_mode):
            continue  # small, or different: a shared file has one size and one mode
        if stat.st_dev != twin_stat.st_dev or stat.st_ino == twin_stat.st_ino:
            continue  # already one file, or two file systems (no hard link across them)
        yield path, twin, stat.st_size


def link_identical_files(env: Path, peer: Path, min_bytes: int = MIN_LINKED_BYTES) -> Linked:
    """Replaces each file of ``env`` (``min_bytes`` or more) that has a byte-identical twin at the same
    relative path in ``peer`` with a hard link to the twin; returns how many files and bytes now shared.

    A missing ``peer`` shares nothing. Each replacement is atomic: a link made beside the file, then
    renamed over it, so an interruption leaves every file whole.
    """
    files = size = 0
    if not peer.is_dir():
        return Linked(0, 0)
    for path, twin, file_size in _twins(env, peer, min_bytes):
        if not filecmp.cmp(path, twin, shallow=False):
            continue
        staged = path.with_name(f".{path.name}.link")
        staged.unlink(missing_ok=True)
        os.link(twin, staged)
        os.replace(staged, path)
        files += 1
        size += file_size
    return Linked(files, size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env", type=Path, help="the environment just created")
    parser.add_argument("peer", type=Path, help="an environment that pins the same big packages")
    args = parser.parse_args(argv)
    linked = link_identical_files(args.env, args.peer)
    if linked.files:
        print(f"{args.env}: {linked.files} files ({linked.bytes / 1e9:.1f} GB) "
              f"shared with {args.peer} as hard links")


if __name__ == "__main__":
    main()
