"""The serving container's entry point: ``serve``, as SageMaker runs it (``docker run IMAGE serve``).

    python code/serve.py serve [--model-dir DIR]     # DIR: the artifact (default /opt/ml/model)

Starts the model server (multi-model-server through sagemaker-inference, with our handler service
and the artifact's ``inference.py``) on private loopback ports, and the gateway SageMaker talks to
on ``SAGEMAKER_BIND_TO_PORT`` (8080): ``/ping`` is 200 only once a worker has loaded the model and
passed its warm-up; ``/invocations`` goes to the model server. SIGTERM (or Ctrl-C) stops both and
exits 0; if the model server dies on its own, or loses the process that starts its workers (it could
never replace a worker again), the exit status is 1. Settings: ``serving/settings.py``; the engine
(``SERVE_ENGINE``: OpenVINO int8 or fp32, or torch) is chosen and logged once, here, and every
worker loads that one (``classifier.engines``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from classifier import engines, sagemaker_env
from serving import model_server, worker_state
from serving.gateway import ClientLimits, Gateway, Upstream
from serving.settings import ServeSettings, available_cpus

logger = logging.getLogger("serve")

STOP_GRACE_SECONDS = 20.0
MODEL_SERVER_PORTS = (20000, 32767)  # where the model server's private ports are picked
# The gateway waits this much longer than a worker may take before it gives up on an answer.
UPSTREAM_TIMEOUT_MARGIN_SECONDS = 5
WATCH_INTERVAL_SECONDS = 1.0


def free_loopback_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now, below 32767: MMS refuses higher ones (so no ephemeral port)."""
    held: list[socket.socket] = []
    try:
        for port in random.sample(range(*MODEL_SERVER_PORTS), 200):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            held.append(sock)
            if len(held) == count:
                return [sock.getsockname()[1] for sock in held]
        raise OSError(f"no free loopback port in {MODEL_SERVER_PORTS}")
    finally:
        for sock in held:
            sock.close()


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _group_alive(group: int) -> bool:
    """Whether any process of the process group still runs (zombies do not count)."""
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == group and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False


def stop_process_group(process: subprocess.Popen, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM to the model server and everything it started; SIGKILL what is left after the grace."""
    group = process.pid  # the child leads its own session and group
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and _group_alive(group):
        time.sleep(0.2)
    if _group_alive(group):
        logger.warning("model server still running %.0f s after SIGTERM: killing it", grace_seconds)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    process.wait()


def choose_engine(model_dir: Path, environ: dict[str, str]) -> str | None:
    """The engine the workers load, chosen and logged once; None (logged) for a setting that means nothing.

    An engine that cannot serve this artifact (its model file or torch missing) is passed on all the
    same: the workers fail to load it and ``/ping`` answers 503 with the reason, as for any broken
    artifact.
    """
    try:
        requested = engines.requested_engine(environ)
        choice = engines.engine_choice(model_dir, environ)
    except engines.EngineSettingError as error:
        logger.error("%s", error)
        return None
    except engines.EngineUnavailable as error:
        logger.error("%s", error)
        return requested
    logger.info("%s", choice.log_line())
    return choice.engine


def serve(settings: ServeSettings, engine: str) -> int:
    """Runs the model server and the gateway until SIGTERM/SIGINT (0) or the model server dies (1)."""
    run_dir = Path(tempfile.mkdtemp(prefix="serve-"))
    model_server.lay_out_run_dir(run_dir, settings.model_dir)
    inference_port, management_port = free_loopback_ports(2)
    launcher: subprocess.Popen | None = None
    upstream = Upstream(
        inference_port=inference_port,
        timeout_seconds=settings.timeout_seconds + UPSTREAM_TIMEOUT_MARGIN_SECONDS,
        state_dir=model_server.state_dir(run_dir),
        is_running=lambda: launcher is not None and launcher.poll() is None,
    )
    limits = ClientLimits(
        idle_timeout=settings.idle_timeout_seconds,
        read_timeout=settings.request_read_timeout_seconds,
        max_connections=settings.max_connections,
    )
    try:
        gateway = Gateway((settings.bind_host, settings.port), upstream, settings.max_payload_bytes,
                          settings.workers, limits)
    except OSError as error:
        logger.error("cannot listen on %s:%d: %s", settings.bind_host, settings.port, error)
        shutil.rmtree(run_dir, ignore_errors=True)
        return 1

    stop = threading.Event()
    exit_code = 0

    def on_signal(signum: int, frame) -> None:
        logger.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # The workers load the engine chosen here rather than choosing again.
    base = {**os.environ, engines.ENGINE_ENV: engine}
    env = model_server.environment(settings, run_dir, inference_port, management_port, base)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "serving.model_server"], env=env, start_new_session=True
    )

    def watch_model_server() -> None:
        nonlocal exit_code
        code = launcher.wait()
        if not stop.is_set():
            logger.error("the model server exited on its own (status %s): stopping", code)
            exit_code = 1
            stop.set()

    def watch_worker_parent() -> None:
        nonlocal exit_code
        while not stop.wait(WATCH_INTERVAL_SECONDS):
            lost = worker_state.lost_worker_parent(upstream.state_dir)
            if lost:
                logger.error("%s: stopping", lost)
                exit_code = 1
                stop.set()

    def watch_frontend() -> None:
        # sagemaker-inference waits on the Java frontend only once it has found it (it looks once a
        # second): a frontend that died before that look would go unnoticed until its start timeout.
        nonlocal exit_code
        config_file = env[model_server.CONFIG_FILE_ENV]
        frontend: psutil.Process | None = None
        while not stop.wait(WATCH_INTERVAL_SECONDS):
            if frontend is None:
                found = model_server.find_model_server(config_file)
                frontend = found[0] if len(found) == 1 else None
            elif not _alive(frontend) and not stop.is_set():
                logger.error("the model server exited on its own (its frontend, pid %d, is gone): stopping",
                             frontend.pid)
                exit_code = 1
                stop.set()

    threading.Thread(target=gateway.serve_forever, name="gateway", daemon=True).start()
    threading.Thread(target=watch_frontend, name="watch-frontend", daemon=True).start()
    threading.Thread(target=watch_model_server, name="watch-model-server", daemon=True).start()
    threading.Thread(target=watch_worker_parent, name="watch-worker-parent", daemon=True).start()
    logger.info(
        "serving %s on http://%s:%d: %d worker(s) x %d thread(s), timeout %d s, payload limit %d MB",
        settings.model_dir, settings.bind_host, settings.port, settings.workers, settings.torch_threads,
        settings.timeout_seconds, settings.max_payload_bytes // (1024 * 1024),
    )
    try:
        stop.wait()
    finally:
        gateway.shutdown()
        gateway.server_close()
        stop_process_group(launcher)
        shutil.rmtree(run_dir, ignore_errors=True)
        logger.info("stopped")
    return exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", nargs="?", default="serve", choices=["serve"],
                        help="what SageMaker asks of a serving container")
    parser.add_argument("--model-dir", type=Path, default=sagemaker_env.base_dir() / "model",
                        help="the model artifact (default: $SAGEMAKER_BASE_DIR/model, else /opt/ml/model)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = choose_engine(args.model_dir, dict(os.environ))
    if engine is None:
        return 2
    try:  # the engine first: the default worker count depends on its memory
        settings = ServeSettings.from_environ(os.environ, args.model_dir, available_cpus(), engine=engine)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    cpus = available_cpus()
    if settings.workers * settings.torch_threads > cpus:
        logger.warning("%d workers x %d threads exceed the %d cores", settings.workers,
                       settings.torch_threads, cpus)
    return serve(settings, engine)


if __name__ == "__main__":
    sys.exit(main())
