"""The model server behind the gateway: multi-model-server, started by sagemaker-inference.

``python -m serving.model_server`` is the child process ``serve.py`` starts: sagemaker-inference's
``start_model_server`` with our handler service. ``environment`` builds that child's environment
(a pure function): MMS listens on loopback ports only the gateway knows, keeps its config, pid
file, sockets and logs in a private run folder (so several servers can share a machine, and a
non-root user needs no write access to ``/etc``), and its workers use ``torch_threads`` threads.
The workers report their state in ``run_dir/state`` (``serving.worker_state``).

sagemaker-inference finds "the" MMS process by scanning the machine for any MMS, and on SIGTERM
stops what it found: with two servers on one machine (tests, a benchmark beside ``make
serve-local``) one server's stop killed the other's MMS. Here it finds only the MMS started with
this run's config file (:func:`own_model_server`).
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

import psutil

from serving.settings import ServeSettings
from serving.worker_state import STATE_DIR_ENV

HANDLER = "serving.handler_service:handle"  # a function entry point: see serving.handler_service
CONFIG_FILE_ENV = "SERVE_MMS_CONFIG_FILE"
# MMS answers a request body up to its own limit; the gateway enforces the real one with a JSON 413.
REQUEST_SIZE_SLACK = 64 * 1024


def environment(
    settings: ServeSettings,
    run_dir: Path,
    inference_port: int,
    management_port: int,
    base: Mapping[str, str],
) -> dict[str, str]:
    """The environment of the model-server process, from ``base`` (usually ``os.environ``)."""
    code_dir = str(Path(__file__).resolve().parent.parent)  # holds serving/, imported by the workers
    python_bin = str(Path(sys.executable).parent)  # multi-model-server is installed next to python
    env = dict(base)
    env.update({
        # sagemaker-inference reads the model from <base dir>/model (a link to settings.model_dir)
        "SAGEMAKER_BASE_DIR": str(run_dir),
        "SAGEMAKER_BIND_TO_PORT": str(inference_port),
        "SAGEMAKER_MODEL_SERVER_WORKERS": str(settings.workers),
        "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS": str(settings.timeout_seconds),
        "SAGEMAKER_STARTUP_TIMEOUT": str(settings.startup_timeout_seconds),
        CONFIG_FILE_ENV: str(run_dir / "mms.properties"),
        # MMS reads MMS_* variables over its config file (enable_envvars_config=true)
        "MMS_INFERENCE_ADDRESS": f"http://127.0.0.1:{inference_port}",
        "MMS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{management_port}",
        "MMS_MAX_REQUEST_SIZE": str(settings.max_payload_bytes + REQUEST_SIZE_SLACK),
        "OMP_NUM_THREADS": str(settings.torch_threads),
        "MKL_NUM_THREADS": str(settings.torch_threads),
        "TMPDIR": str(run_dir / "tmp"),  # MMS's pid file
        "TEMP": str(run_dir / "tmp"),  # the JVM's temp folder: the workers' sockets
        "LOG_LOCATION": str(run_dir / "logs"),
        "METRICS_LOCATION": str(run_dir / "logs"),
        STATE_DIR_ENV: str(state_dir(run_dir)),
        "PYTHONPATH": os.pathsep.join(filter(None, [code_dir, base.get("PYTHONPATH", "")])),
        "PATH": os.pathsep.join(filter(None, [python_bin, base.get("PATH", "")])),
    })
    return env


def state_dir(run_dir: Path) -> Path:
    """Where the workers report whether they are ready."""
    return run_dir / "state"


def lay_out_run_dir(run_dir: Path, model_dir: Path) -> None:
    """``run_dir/model`` -> the artifact, plus the folders MMS and the workers write into."""
    (run_dir / "model").symlink_to(Path(model_dir).resolve(), target_is_directory=True)
    for folder in ("tmp", "logs", "state"):
        (run_dir / folder).mkdir()


# The Java frontend's main class, as sagemaker-inference finds it (its MMS_NAMESPACE).
FRONTEND_CLASS = "com.amazonaws.ml.mms.ModelServer"


def find_model_server(config_file: str, namespace: str = FRONTEND_CLASS) -> list[psutil.Process]:
    """The live MMS frontends (``namespace`` in the command line) started with ``config_file``."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            command = process.cmdline()
        except psutil.Error:
            continue
        if namespace in command and any(config_file in part for part in command):
            found.append(process)
    return found


def own_model_server(namespace: str, config_file: str) -> psutil.Process:
    """The MMS frontend started with ``config_file``: this server's."""
    found = find_model_server(config_file, namespace)
    if len(found) != 1:  # sagemaker-inference retries until the start timeout
        raise RuntimeError(f"{len(found)} model servers run with {config_file}; expected one")
    return found[0]


def main() -> None:
    """Starts MMS with our handler service and waits for it (the child process of ``serve.py``)."""
    warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
    from sagemaker_inference import model_server

    # start_model_server writes its config to /etc/sagemaker-mms.properties unless told otherwise.
    model_server.MMS_CONFIG_FILE = os.environ[CONFIG_FILE_ENV]
    model_server._retrieve_mms_server_process = functools.partial(
        own_model_server, model_server.MMS_NAMESPACE, model_server.MMS_CONFIG_FILE
    )
    model_server.start_model_server(handler_service=HANDLER)


if __name__ == "__main__":
    main()
