"""``make clean``: runs/ goes, each entry named; the private engine's data only if confirmed and stopped.

The command runs as a child process with its own cache folder (``XDG_CACHE_HOME``) and no Docker
client (``DOCKER``), so it never touches this machine's engine or the repository's runs/.
"""

import json
import os
import subprocess
import sys

import pytest

from scripts import REPO_ROOT
from scripts.clean import confirmed, human_size


def test_sizes_read_as_docker_prints_them():
    assert [human_size(n) for n in (0, 999, 1536, 12_300_000, 14_200_000_000, 2_000_000_000_000)] == [
        "0 B", "999 B", "1.5 KB", "12.3 MB", "14.2 GB", "2000.0 GB"]


def test_confirmation_is_asked_at_a_terminal_only(capsys):
    assert confirmed("yes", "Remove?") and not confirmed("no", "Remove?")
    assert confirmed("ask", "Remove?", ask=lambda _: " Y ", interactive=True)
    assert not confirmed("ask", "Remove?", ask=lambda _: "", interactive=True)
    assert not confirmed("ask", "Remove?", ask=pytest.fail, interactive=False)
    assert "Remove? Not asked: no terminal (make clean CONFIRM=yes removes it)." in capsys.readouterr().out


@pytest.fixture
def machine(tmp_path):
    """A runs/ folder with a demo and the AWS records, and a stopped private engine's data."""
    runs = tmp_path / "runs"
    (runs / "demo" / "opt_ml").mkdir(parents=True)
    (runs / "demo" / "opt_ml" / "model.tar.gz").write_bytes(b"m" * 2000)
    (runs / "aws").mkdir()
    (runs / "aws" / "last-training-job.json").write_text(json.dumps({"training_job": "classifier-train-1"}))
    engine = tmp_path / "cache" / "sagemaker-classifier" / "docker"
    (engine / "data" / "image").mkdir(parents=True)
    (engine / "data" / "image" / "layer").write_bytes(b"x" * 5000)
    (engine / "dockerd.log").write_text("")
    return runs, engine


def clean(tmp_path, *args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"),
                   "DOCKER": str(tmp_path / "no-docker"),
                   "PYTHONPATH": f"{REPO_ROOT / 'code'}{os.pathsep}{REPO_ROOT}"}
    command = [sys.executable, "-m", "scripts.clean", "--runs", str(tmp_path / "runs"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment,
                          stdin=subprocess.DEVNULL, timeout=120)


def test_confirmed_clean_removes_runs_and_the_stopped_engines_data_saying_what_went(tmp_path, machine):
    runs, engine = machine
    record_size = (runs / "aws" / "last-training-job.json").stat().st_size
    result = clean(tmp_path, "--engine-data", "yes")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"removed {runs / 'aws'} ({record_size} B)" in lines
    assert ("  it recorded training job classifier-train-1: "
            "make deploy TRAINING_JOB=classifier-train-1 still deploys it") in lines
    assert f"removed {runs / 'demo'} (2.0 KB)" in lines
    assert "image tags: not checked (no Docker client)" in lines
    assert f"removed {engine / 'data'}" in lines and f"removed {engine / 'dockerd.log'}" in lines
    assert not runs.exists() and not (engine / "data").exists()


def test_without_a_terminal_or_confirmation_the_engines_data_stays(tmp_path, machine):
    runs, engine = machine
    result = clean(tmp_path)
    assert result.returncode == 0, result.stderr
    question = f"Remove the private Docker engine's data in {engine} (5.0 KB: every image and build cache"
    assert question in result.stdout
    assert "Not asked: no terminal (make clean CONFIRM=yes removes it)." in result.stdout
    assert not runs.exists() and (engine / "data" / "image" / "layer").is_file()


def test_the_data_of_a_running_engine_stays_and_the_engine_is_named(tmp_path, machine):
    _, engine = machine
    (engine / "docker.pid").write_text(str(os.getpid()))  # a live process: the engine "runs"
    result = clean(tmp_path, "--engine-data", "yes")
    assert result.returncode == 1
    assert f"kept: the private engine runs on it (pid {os.getpid()}" in result.stderr
    assert "make engine-stop, then make clean again" in result.stderr
    assert (engine / "data" / "image" / "layer").is_file()


def test_make_clean_passes_the_confirmation_and_refuses_other_answers(tmp_path):
    dry = subprocess.run(["make", "-n", "clean", "CONFIRM=yes"], capture_output=True, text=True,
                         cwd=REPO_ROOT)
    assert dry.returncode == 0 and "-m scripts.clean --engine-data yes" in dry.stdout
    wrong = clean(tmp_path, "--engine-data", "maybe")
    assert wrong.returncode == 2 and "invalid choice: 'maybe' (choose from" in wrong.stderr
