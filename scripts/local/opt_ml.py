"""Lay out a folder exactly as SageMaker lays out ``/opt/ml`` for a training job.

Used by ``make train-local`` (the toolkit on the host, ``SAGEMAKER_BASE_DIR`` pointing here)
and ``make local-train`` (the same folder mounted at ``/opt/ml`` in the training container).
The JSON builders are pure; ``lay_out`` is the one function that writes.

Layout (https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-training-algo-running-container.html)::

    input/config/hyperparameters.json   every value a string, as SageMaker writes them
    input/config/resourceconfig.json
    input/config/inputdataconfig.json
    input/data/<channel>/               the data (a link to the host folder, or a mount point)
    model/  output/  checkpoints/
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

from classifier.hyperparameters import as_sagemaker_strings

# The folders of /opt/ml a training job reads and writes (``code/`` only outside an image).
SAGEMAKER_FOLDERS = ("input", "model", "output", "checkpoints")
# "algo-1" does not resolve outside SageMaker and the toolkit waits for DNS forever.
LOCAL_HOST = "localhost"
# How SageMaker names the instances of a job, and the interface their containers talk over.
HOST_PREFIX = "algo-"
CLUSTER_INTERFACE = "eth0"


def host_names(count: int) -> list[str]:
    """``algo-1`` ... ``algo-N``: the instances of an N-instance job, as SageMaker names them."""
    if count < 1:
        raise ValueError(f"a job needs at least one instance, got {count}")
    return [f"{HOST_PREFIX}{index}" for index in range(1, count + 1)]


def resource_config_json(
    host: str = LOCAL_HOST, hosts: list[str] | None = None, network_interface_name: str = "lo"
) -> dict:
    """``resourceconfig.json``: this container's host among all of the job's (one by default)."""
    hosts = hosts or [host]
    if host not in hosts:
        raise ValueError(f"current host {host!r} is not one of the job's hosts {hosts}")
    return {"current_host": host, "hosts": hosts, "network_interface_name": network_interface_name}


def input_data_config_json(channels: list[str], input_mode: str = "File") -> dict:
    return {
        channel: {
            "TrainingInputMode": input_mode,
            "S3DistributionType": "FullyReplicated",
            "RecordWrapperType": "None",
        }
        for channel in channels
    }


def _place_channel(target: Path, source: Path | None) -> None:
    """Makes ``target`` a link to ``source``, or an empty mount point when ``source`` is None.

    What this module leaves there is a link or an empty folder (a mount point of an earlier
    container run); either is replaced. Anything else is the user's and is never deleted.
    """
    if source is not None and target.resolve() == source:
        return  # the data already lies there: use it in place
    if target.is_symlink():
        target.unlink()  # a link we made; the data it pointed to stays
    elif target.is_dir() and not any(target.iterdir()):
        if source is None:
            return
        target.rmdir()
    elif target.exists():
        kind = "folder holding files" if target.is_dir() else "file"
        raise FileExistsError(
            f"{target} is a {kind} of yours, not a link or an empty mount point this tool made: it is "
            "left as it is; move it elsewhere (and pass it as the data), or choose another output folder"
        )
    if source is None:
        target.mkdir()
    else:
        target.symlink_to(source, target_is_directory=True)


def lay_out(
    base: Path,
    channels: Mapping[str, Path | None],
    hyperparameters: Mapping[str, object],
    code_dir: Path | None = None,
    input_mode: str = "File",
    resource_config: Mapping[str, object] | None = None,
) -> Path:
    """Writes the config files and creates the folders of ``base`` as SageMaker would.

    ``channels`` maps a channel name to the host folder to link in as its data, or to None
    when the data will be mounted there instead (Docker). ``code_dir`` is copied to
    ``base/code``, where the toolkit looks for ``SAGEMAKER_PROGRAM`` outside an image.
    ``input_mode`` is what ``inputdataconfig.json`` declares for every channel (the data is a
    local folder either way; the trainer reads the declaration). ``resource_config`` is one host's
    of several (:func:`resource_config_json`); default: one host.
    """
    base = Path(base).resolve()
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    files = {
        "hyperparameters.json": as_sagemaker_strings(hyperparameters),
        "resourceconfig.json": dict(resource_config or resource_config_json()),
        "inputdataconfig.json": input_data_config_json(list(channels), input_mode),
    }
    for name, content in files.items():
        (config / name).write_text(json.dumps(content, indent=2) + "\n")
    for channel, source in channels.items():
        target = base / "input" / "data" / channel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source is not None:
            source = Path(source).resolve()
            if not source.is_dir():
                raise FileNotFoundError(f"data folder for channel {channel!r} not found: {source}")
        _place_channel(target, source)
    for folder in SAGEMAKER_FOLDERS[1:]:
        (base / folder).mkdir(exist_ok=True)
    if code_dir is not None:
        shutil.rmtree(base / "code", ignore_errors=True)
        shutil.copytree(code_dir, base / "code", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return base
