"""The private engine's data: when ``make clean`` removes it, its size, and removing it."""

import os

import pytest

from scripts.engine import dockerd, engine_data
from scripts.engine.engine_data import Removal


@pytest.mark.parametrize(("has_data", "confirmed", "running_pid", "expected"), [
    (False, True, None, Removal.NOTHING),
    (True, False, None, Removal.KEEP),
    (True, False, 4242, Removal.KEEP),
    (True, True, 4242, Removal.ENGINE_RUNNING),
    (True, True, None, Removal.REMOVE),
])
def test_the_data_goes_only_when_confirmed_and_no_engine_runs(has_data, confirmed, running_pid, expected):
    assert engine_data.removal(has_data, confirmed, running_pid) is expected


def fake_engine_folder(root):
    """What a stopped private dockerd leaves: data-root, exec-root, log, start lock."""
    (root / "data" / "overlay2" / "abc" / "diff").mkdir(parents=True)
    (root / "data" / "overlay2" / "abc" / "diff" / "layer").write_bytes(b"x" * 3000)
    os.symlink("/etc/hostname", root / "data" / "overlay2" / "abc" / "link")  # a link: not followed
    (root / "exec").mkdir()
    (root / "dockerd.log").write_text("log\n")
    (root / "start.lock").write_text("")
    return dockerd.PrivateEngine(root)


def test_size_and_removal_of_a_stopped_engines_data(tmp_path):
    private = fake_engine_folder(tmp_path)
    outputs = engine_data.engine_outputs(private)
    assert outputs == [tmp_path / "data", tmp_path / "exec", tmp_path / "dockerd.log"]
    assert 3004 <= engine_data.size_of(outputs) < 3100
    assert engine_data.remove_engine_outputs(private) == outputs
    # The lock other starters take stays.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["start.lock"]
    assert engine_data.engine_outputs(private) == []


def test_the_data_of_a_running_engine_is_never_removed(tmp_path):
    private = fake_engine_folder(tmp_path)
    private.pidfile.write_text(str(os.getpid()))  # a live process holds the pidfile
    assert engine_data.running_pid(private) == os.getpid()
    with pytest.raises(RuntimeError, match=f"the private engine runs \\(pid {os.getpid()}\\)"):
        engine_data.remove_engine_outputs(private)
    assert (tmp_path / "data" / "overlay2" / "abc" / "diff" / "layer").is_file()
