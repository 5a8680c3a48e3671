"""Two environments share their identical big files as hard links, and nothing else."""

import os
import subprocess
import sys

from scripts import REPO_ROOT
from scripts.engine.venv_links import link_identical_files

BIG = 1024


def write(path, data: bytes, mode: int = 0o644):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def same_file(a, b) -> bool:
    return os.stat(a).st_ino == os.stat(b).st_ino


def test_identical_big_files_become_one_and_the_rest_stays_apart(tmp_path):
    env, peer = tmp_path / "dev", tmp_path / "train"
    library = "lib/python3.11/site-packages/torch/lib/libtorch.so"
    write(peer / library, b"t" * BIG)
    write(env / library, b"t" * BIG)
    write(peer / "lib/other.so", b"a" * BIG)
    write(env / "lib/other.so", b"b" * BIG)  # same size, other bytes
    write(peer / "lib/longer.so", b"c" * (BIG + 1))
    write(env / "lib/longer.so", b"c" * BIG)
    write(peer / "lib/tool", b"x" * BIG, 0o755)
    write(env / "lib/tool", b"x" * BIG, 0o644)  # one inode cannot have both modes
    write(peer / "small.py", b"s" * 10)
    write(env / "small.py", b"s" * 10)
    write(env / "only_here.so", b"o" * BIG)

    linked = link_identical_files(env, peer, min_bytes=BIG)

    assert (linked.files, linked.bytes) == (1, BIG)
    assert same_file(env / library, peer / library)
    for name in ("lib/other.so", "lib/longer.so", "lib/tool", "small.py"):
        assert not same_file(env / name, peer / name), name
    assert (env / "lib/other.so").read_bytes() == b"b" * BIG
    assert oct((peer / "lib/tool").stat().st_mode & 0o777) == "0o755"
    assert not list(env.rglob(".*.link"))  # no staged link left behind


def test_a_second_pass_links_nothing_more_and_one_environment_can_go(tmp_path):
    env, peer = tmp_path / "dev", tmp_path / "train"
    write(peer / "libcuda.so", b"c" * BIG)
    write(env / "libcuda.so", b"c" * BIG)
    assert link_identical_files(env, peer, min_bytes=BIG).files == 1
    assert link_identical_files(env, peer, min_bytes=BIG).files == 0

    (peer / "libcuda.so").unlink()  # pip uninstall or rm -rf of the peer
    assert (env / "libcuda.so").read_bytes() == b"c" * BIG


def test_without_a_peer_nothing_changes(tmp_path):
    write(tmp_path / "dev/libtorch.so", b"t" * BIG)
    assert link_identical_files(tmp_path / "dev", tmp_path / "absent", min_bytes=BIG).files == 0


def test_symlinks_are_left_as_they_are(tmp_path):
    env, peer = tmp_path / "dev", tmp_path / "train"
    write(peer / "lib/libz.so.1", b"z" * BIG)
    write(env / "lib/libz.so.1", b"z" * BIG)
    (env / "lib/libz.so").symlink_to("libz.so.1")
    (peer / "lib/libz.so").symlink_to("libz.so.1")
    link_identical_files(env, peer, min_bytes=BIG)
    assert (env / "lib/libz.so").is_symlink()


def test_the_command_says_what_it_shared(tmp_path):
    env, peer = tmp_path / "dev", tmp_path / "train"
    write(peer / "libtorch.so", b"t" * (1 << 20))
    write(env / "libtorch.so", b"t" * (1 << 20))
    result = subprocess.run([sys.executable, "-m", "scripts.engine.venv_links", str(env), str(peer)],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert "1 files (0.0 GB) shared with" in result.stdout
    assert same_file(env / "libtorch.so", peer / "libtorch.so")
