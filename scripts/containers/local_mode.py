"""Run the images locally exactly as SageMaker runs them: ``docker run IMAGE train|serve``.

    python -m scripts.containers.local_mode train --data DIR --out DIR [--instances 2] [--epochs 2 ...]
    python -m scripts.containers.local_mode serve --model model.tar.gz|DIR [--port 8080]

Training: ``OUT`` is laid out as SageMaker lays out ``/opt/ml`` (``scripts.local.opt_ml.lay_out``) and its
parts are mounted where SageMaker puts them; each data channel is mounted (read-only) at
``/opt/ml/input/data/<channel>``, not linked. After a successful run ``OUT/model/`` is packed
into ``OUT/model.tar.gz`` as SageMaker packs it. The container runs as the calling user (the one
behind ``sudo`` too), so that what it writes into ``OUT`` is theirs, not root's. Serving: the
artifact is unpacked to a folder mounted read-only at ``/opt/ml/model`` and the server listens on
the host network, on 127.0.0.1 only unless ``--bind-host`` says otherwise.
into ``OUT/model.tar.gz`` as SageMaker packs it. Serving: the artifact is unpacked to a folder
mounted read-only at ``/opt/ml/model`` and the server listens on the host network.

Several instances (``--instances N``, ``make local-train INSTANCES=2``) run as a SageMaker job's
do: containers ``algo-1`` ... ``algo-N`` on a Docker network of their own, where each name
resolves, each with its own ``/opt/ml`` whose ``resourceconfig.json`` names all hosts and its own
``current_host`` (``OUT`` is algo-1's, ``OUT/algo-2/`` algo-2's ...), the checkpoint folder shared
as SageMaker's S3 sync shares it, and data-parallel training asked for as a job asks for it
(``classifier.distribution``). Rank 0, on algo-1, writes the artifact. When a container fails,
the others are given ``PEER_FAILURE_GRACE_S`` to fail by themselves, then stopped; the network and
containers are removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from classifier.dataset import COMBINED_CHANNEL
from classifier.distribution import distribution_hyperparameters
from classifier.hyperparameters import parse_name_value_pairs
from scripts.containers import images
from scripts.engine import dockerd
from scripts.engine.errors import EngineUnavailable
from scripts.local import opt_ml

CONTAINER_BASE = "/opt/ml"
MODEL_TAR = "model.tar.gz"
# DataLoader workers share tensors through /dev/shm; Docker's 64 MB default is too small for them.
SHM_SIZE = "1g"
SERVE_PORT = 8080
# Host networking: the server's address is the host's. Loopback keeps a local server local.
LOCAL_BIND_HOST = "127.0.0.1"
# HOME for a container user that has no home in the image (the training image's only user is root).
CONTAINER_HOME = "/tmp"
# SageMaker's grace between SIGTERM and SIGKILL when it stops a training job.
STOP_GRACE_S = 120
# After one container of a several-instance run failed, how long the others get to notice and fail
# by themselves (the trainers detect a lost peer at their next exchange) before they are stopped.
PEER_FAILURE_GRACE_S = 300
CLUSTER_POLL_S = 1.0


def image_name(kind: str, tag: str = images.LATEST) -> str:
    return f"{images.repository(kind)}:{tag}"


def container_name(kind: str) -> str:
    return f"{images.repository(kind)}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------- pure builders


def training_mounts(out: Path, channels: Mapping[str, Path], checkpoints: Path | None = None) -> list[str]:
    """``-v`` options: /opt/ml's parts from ``out``, each channel's data read-only at input/data/<channel>;
    ``checkpoints`` instead of ``out/checkpoints`` (one folder for all the hosts of a job)."""
    out = Path(out).resolve()
    checkpoints = Path(checkpoints).resolve() if checkpoints else out / "checkpoints"
    mounts = [
        f"{out / 'input'}:{CONTAINER_BASE}/input",
        f"{out / 'model'}:{CONTAINER_BASE}/model",
        f"{out / 'output'}:{CONTAINER_BASE}/output",
        f"{checkpoints}:{CONTAINER_BASE}/checkpoints",
    ]
    mounts += [
        f"{Path(data).resolve()}:{CONTAINER_BASE}/input/data/{channel}:ro"
        for channel, data in channels.items()
    ]
    return [option for mount in mounts for option in ("-v", mount)]


def caller_ids(environ: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """The user whose files ``OUT``'s should be: the one behind ``sudo``, else this process's."""
    if os.geteuid() == 0 and environ.get("SUDO_UID", "").isdigit() and environ.get("SUDO_GID", "").isdigit():
        return int(environ["SUDO_UID"]), int(environ["SUDO_GID"])
    return os.getuid(), os.getgid()


def user_options(owner: tuple[int, int]) -> list[str]:
    """``docker run`` options that make the container write as ``owner`` (uid, gid); none for root.

    The training image runs as root on SageMaker; locally it runs as the caller, with a writable
    HOME (the image has no home for that uid).
    """
    uid, gid = owner
    if uid == 0:
        return []
    return ["--user", f"{uid}:{gid}", "-e", f"HOME={CONTAINER_HOME}"]


def hand_over(path: Path, owner: tuple[int, int]) -> Path:
    """Gives ``path`` (and what lies below it, links not followed) to ``owner``, when we are root
    acting for another user; otherwise the files are the caller's already. Returns ``path``."""
    path = Path(path)
    if os.geteuid() != 0 or owner[0] == 0 or not path.exists():
        return path
    os.chown(path, *owner, follow_symlinks=False)
    if path.is_dir() and not path.is_symlink():
        for folder, folders, files in os.walk(path):
            for name in folders + files:
                os.chown(os.path.join(folder, name), *owner, follow_symlinks=False)
    return path


def hand_over_layout(out: Path, owner: tuple[int, int]) -> None:
    """Gives ``out`` and the /opt/ml folders in it to ``owner``, so that the container can write there
    (an earlier root-owned run's files included); anything else in ``out`` is left alone."""
    if os.geteuid() != 0 or owner[0] == 0:
        return
    os.chown(out, *owner)
    for folder in opt_ml.SAGEMAKER_FOLDERS:
        hand_over(out / folder, owner)


def train_command(
    image: str,
    name: str,
    out: Path,
    channels: Mapping[str, Path],
    gpus: str | None = None,
    owner: tuple[int, int] = (0, 0),
) -> list[str]:
    """``docker run ... IMAGE train``, as SageMaker starts a training container (as ``owner``)."""
    command = ["run", "--rm", "--name", name, "--network", "host", "--shm-size", SHM_SIZE]
    if gpus:
        command += ["--gpus", gpus]
    command += user_options(owner)
    return [*command, *training_mounts(out, channels), image, "train"]


def cluster_train_command(
    image: str, name: str, network: str, host: str, base: Path, channels: Mapping[str, Path],
    checkpoints: Path, gpus: str | None = None, environment: Mapping[str, str] | None = None,
) -> list[str]:
    """``docker run --detach ... IMAGE train`` for one host of a several-instance job: on ``network``,
    reachable as ``host``, with ``base`` as its /opt/ml and the job's shared checkpoint folder."""
    command = [
        "run", "--detach", "--name", name, "--network", network, "--network-alias", host,
        "--hostname", host, "--shm-size", SHM_SIZE,
    ]
    if gpus:
        command += ["--gpus", gpus]
    for key, value in (environment or {}).items():
        command += ["-e", f"{key}={value}"]
    return [*command, *training_mounts(base, channels, checkpoints), image, "train"]


def shared_machine_environment(instances: int, cores: int | None = None) -> dict[str, str]:
    """The "instances" share this machine's cores: each container's torch gets its part (every one
    would take them all, and oversubscribed cores slow training down many times over)."""
    cores = cores or os.cpu_count() or 1
    return {"OMP_NUM_THREADS": str(max(1, cores // instances))}


def host_folder(out: Path, host: str, hosts: list[str]) -> Path:
    """A host's /opt/ml on this machine: ``out`` for the first host, ``out/<host>`` for the others."""
    return Path(out) if host == hosts[0] else Path(out) / host


def serve_command(
    image: str,
    name: str,
    model_dir: Path,
    port: int,
    environment: Mapping[str, str] | None = None,
    detach: bool = False,
    remove: bool = True,
    bind_host: str = LOCAL_BIND_HOST,
) -> list[str]:
    """``docker run ... IMAGE serve`` with the artifact at /opt/ml/model, listening on ``bind_host:port``
    of the host (host networking)."""
    command = ["run", "--name", name, "--network", "host"]
    if remove:
        command.append("--rm")
    if detach:
        command.append("--detach")
    env = {"SAGEMAKER_BIND_TO_PORT": str(port), "SERVE_BIND_HOST": bind_host, **(environment or {})}
    for key, value in env.items():
        command += ["-e", f"{key}={value}"]
    return [*command, "-v", f"{Path(model_dir).resolve()}:{CONTAINER_BASE}/model:ro", image, "serve"]


def pack_model(model_dir: Path, tar_path: Path) -> Path:
    """Packs the folder's contents (not the folder) into a gzipped tar, as SageMaker packs /opt/ml/model."""
    model_dir = Path(model_dir)
    with tarfile.open(tar_path, "w:gz") as tar:
        for path in sorted(model_dir.rglob("*")):
            if "__pycache__" not in path.parts:
                tar.add(path, arcname=str(path.relative_to(model_dir)), recursive=False)
    return Path(tar_path)


def unpack_model(tar_path: Path, target: Path) -> Path:
    """Unpacks ``model.tar.gz`` into ``target`` as SageMaker does into /opt/ml/model."""
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: refuse links and paths out of target
            tar.extractall(target, filter="data")
        else:
            tar.extractall(target)
    return target


# ---------------------------------------------------------------- edges


def train_in_container(
    engine: dockerd.Engine,
    data: Mapping[str, Path] | Path,
    out: Path,
    hyperparameters: Mapping[str, object],
    image: str = image_name("train"),
    gpus: str | None = None,
    capture: bool = False,
    name: str | None = None,
    owner: tuple[int, int] | None = None,
) -> subprocess.CompletedProcess:
    """Lays out ``out`` like /opt/ml, runs the training container, packs ``out/model.tar.gz`` on success.

    ``data`` is one folder for the ``training`` channel or a ``{channel: folder}`` mapping. ``owner``
    (uid, gid; default: the caller, see :func:`caller_ids`) is who the container runs as and whose
    ``out``'s files are.
    """
    channels = {COMBINED_CHANNEL: Path(data)} if isinstance(data, str | Path) else dict(data)
    for channel, folder in channels.items():
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"data folder for channel {channel!r} not found: {folder}")
    owner = owner or caller_ids()
    out = Path(out).resolve()
    opt_ml.lay_out(out, dict.fromkeys(channels), hyperparameters)
    hand_over_layout(out, owner)
    name = name or container_name("train")
    command = train_command(image, name, out, channels, gpus, owner)
    result = engine.run(*command, check=False, capture=capture)
    if result.returncode == 0:
        hand_over(pack_model(out / "model", out / MODEL_TAR), owner)
    return result


@dataclass
class ClusterRun:
    """How a several-instance run ended: each host's exit status, and those stopped for a peer's failure."""

    exit_codes: dict[str, int]
    stopped: list[str] = field(default_factory=list)

    @property
    def returncode(self) -> int:
        """0 if every host succeeded, else the first host's failing status (algo-1 first)."""
        return next((code for code in self.exit_codes.values() if code != 0), 0)


def _stream_logs(
    engine: dockerd.Engine, name: str, host: str, emit: Callable[[str], None]
) -> threading.Thread:
    """Follows a container's log in the background, each line prefixed with its host."""
    def follow() -> None:
        process = subprocess.Popen(
            engine.command("logs", "--follow", name), env=engine.env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, errors="replace",
        )
        for line in process.stdout:
            emit(f"{host} | {line.rstrip()}")
        process.wait()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    return thread


def _exit_code(engine: dockerd.Engine, name: str) -> int | None:
    """A container's exit status, or None while it runs."""
    found = engine.run("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name, check=False)
    status, _, code = found.stdout.strip().partition(" ")
    if found.returncode != 0:
        return 125  # gone (removed by someone else): count it as a failure
    return int(code) if status in ("exited", "dead") else None


def train_cluster(
    engine: dockerd.Engine,
    data: Mapping[str, Path] | Path,
    out: Path,
    hyperparameters: Mapping[str, object],
    instances: int,
    image: str = image_name("train"),
    gpus: str | None = None,
    emit: Callable[[str], None] = print,
    name_prefix: str | None = None,
    peer_failure_grace_s: float = PEER_FAILURE_GRACE_S,
) -> ClusterRun:
    """Runs a job on ``instances`` training containers (``algo-1`` ...) as SageMaker runs one.

    Each log line goes to ``emit`` prefixed with its host. Containers are named
    ``<name_prefix>-<host>``; they and their network are removed afterwards. On success
    ``out/model.tar.gz`` holds algo-1's ``/opt/ml/model``.
    """
    channels = {COMBINED_CHANNEL: Path(data)} if isinstance(data, str | Path) else dict(data)
    for channel, folder in channels.items():
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"data folder for channel {channel!r} not found: {folder}")
    out = Path(out).resolve()
    hosts = opt_ml.host_names(instances)
    job_hyperparameters = {**hyperparameters, **distribution_hyperparameters(True)}
    for host in hosts:
        base = opt_ml.lay_out(
            host_folder(out, host, hosts), dict.fromkeys(channels), job_hyperparameters,
            resource_config=opt_ml.resource_config_json(host, hosts, opt_ml.CLUSTER_INTERFACE),
        )
        for outcome in ("success", "failure"):  # each container starts without them, as on SageMaker
            (base / "output" / outcome).unlink(missing_ok=True)
    (out / MODEL_TAR).unlink(missing_ok=True)
    prefix = name_prefix or container_name("train")
    names = {host: f"{prefix}-{host}" for host in hosts}
    network = f"{prefix}-net"
    engine.run("network", "create", network)
    run = ClusterRun(exit_codes={})
    try:
        for host in hosts:
            engine.run(*cluster_train_command(
                image, names[host], network, host, host_folder(out, host, hosts), channels,
                out / "checkpoints", gpus, shared_machine_environment(instances),
            ))
        followers = [_stream_logs(engine, names[host], host, emit) for host in hosts]
        failed_at: float | None = None
        while len(run.exit_codes) < len(hosts):
            for host in hosts:
                if host not in run.exit_codes and (code := _exit_code(engine, names[host])) is not None:
                    run.exit_codes[host] = code
                    if code != 0 and failed_at is None:
                        failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > peer_failure_grace_s:
                for host in hosts:
                    if host not in run.exit_codes:
                        emit(f"[local-train] {host} still runs {peer_failure_grace_s:.0f} s after a peer "
                             "failed: stopping it")
                        engine.run("stop", "--time", "30", names[host], check=False)
                        run.stopped.append(host)
                failed_at = None  # the stopped ones are collected on the next rounds
            time.sleep(CLUSTER_POLL_S)
        for follower in followers:
            follower.join(timeout=10)
    except BaseException:
        for host in hosts:  # interrupted: stop the job as SageMaker does (SIGTERM, checkpoint)
            if host not in run.exit_codes:
                engine.run("stop", "--time", str(STOP_GRACE_S), names[host], check=False)
        raise
    finally:
        engine.run("rm", "--force", *names.values(), check=False)
        engine.run("network", "rm", network, check=False)
    run.exit_codes = {host: run.exit_codes[host] for host in hosts}
    if run.returncode == 0:
        pack_model(out / "model", out / MODEL_TAR)
    return run


def wait_until_healthy(port: int, timeout: float, is_running=lambda: True) -> None:
    """Polls ``/ping`` until it answers 200; raises TimeoutError (or RuntimeError if the server died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running():
            raise RuntimeError("the serving container exited before answering /ping")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response,
        ):
            if response.status == 200:
                return
        time.sleep(1)
    raise TimeoutError(f"/ping on port {port} did not answer 200 within {timeout:.0f}s")


def container_running(engine: dockerd.Engine, name: str) -> bool:
    result = engine.run("inspect", "--format", "{{.State.Running}}", name, check=False)
    return result.returncode == 0 and result.stdout.strip() == "true"


@contextlib.contextmanager
def model_folder(model: Path) -> Iterator[Path]:
    """The artifact as a folder: ``model`` itself if it is one, else a model.tar.gz unpacked for the block."""
    model = Path(model)
    if model.is_dir():
        yield model
        return
    if not model.is_file():
        raise FileNotFoundError(f"no model artifact at {model}")
    with tempfile.TemporaryDirectory(prefix="sagemaker-classifier-model-") as scratch:
        folder = unpack_model(model, Path(scratch) / "model")
        os.chmod(scratch, 0o755)  # the serving container's non-root user must read it
        yield folder


@contextlib.contextmanager
def serving_container(
    engine: dockerd.Engine,
    model: Path,
    port: int,
    image: str = image_name("serve"),
    environment: Mapping[str, str] | None = None,
    startup_timeout: float = 180,
    remove: bool = True,
) -> Iterator[str]:
    """Starts the serving container in the background, waits for a healthy /ping, yields its name,
    and stops it (``docker stop``, i.e. SIGTERM) afterwards; ``remove=False`` keeps the stopped
    container for inspection."""
    with model_folder(model) as folder:
        name = container_name("serve")
        engine.run(*serve_command(image, name, folder, port, environment, detach=True, remove=remove))
        try:
            wait_until_healthy(port, startup_timeout, lambda: container_running(engine, name))
            yield name
        except BaseException:
            print(engine.run("logs", "--tail", "60", name, check=False).stdout, file=sys.stderr)
            raise
        finally:
            engine.run("stop", name, check=False)


def train_several(engine: dockerd.Engine, args: argparse.Namespace, hyperparameters: dict[str, str]) -> int:
    """``local-train INSTANCES=N``: the job on N containers; its exit status."""
    try:
        run = train_cluster(
            engine, args.data, args.out, hyperparameters, args.instances, args.image, args.gpus,
            emit=lambda line: print(line, flush=True),
        )
    except KeyboardInterrupt:
        print("[local-train] stopped: the trainers saved a checkpoint", file=sys.stderr)
        return 130
    out = args.out.resolve()
    for host, code in run.exit_codes.items():
        folder = host_folder(out, host, list(run.exit_codes))
        outcome = "success" if code == 0 else "failure"
        detail = (folder / "output" / "failure").read_text().strip() if code else ""
        print(f"[local-train] {host}: exit {code}, {folder / 'output' / outcome} {detail}", file=sys.stderr)
    if run.returncode == 0:
        print(f"[local-train] artifact: {out / MODEL_TAR}", file=sys.stderr)
    return run.returncode


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    # Unknown options are the hyperparameters (--epochs 2 ...): no abbreviations may swallow them.
    train = commands.add_parser("train", help="train in the training container", allow_abbrev=False)
    train.add_argument("--data", type=Path, required=True, help="folder holding train/ valid/ test/")
    train.add_argument("--out", type=Path, required=True, help="folder laid out like /opt/ml")
    train.add_argument("--image", default=image_name("train"))
    train.add_argument("--gpus", default=os.environ.get("GPUS") or None, help='e.g. "all" (needs nvidia)')
    train.add_argument("--instances", type=int, default=1,
                       help="training containers (algo-1 ...) on a Docker network, data-parallel")
    serve = commands.add_parser(
        "serve", help="serve an artifact in the serving container (foreground)", allow_abbrev=False
    )
    serve.add_argument("--model", type=Path, required=True, help="model.tar.gz or an artifact folder")
    serve.add_argument("--port", type=int, default=SERVE_PORT)
    serve.add_argument("--bind-host", default=os.environ.get("BIND_HOST") or LOCAL_BIND_HOST,
                       help="the host address to listen on (default 127.0.0.1: this machine only; "
                            "0.0.0.0 exposes the server to the network)")
    serve.add_argument("--image", default=image_name("serve"))
    args, hyperparameter_args = parser.parse_known_args()

    try:
        with dockerd.engine_session() as engine:
            if args.command == "train":
                hyperparameters = parse_name_value_pairs(hyperparameter_args)
                if args.instances < 1:
                    parser.error(f"--instances must be at least 1, got {args.instances}")
                if args.instances > 1:
                    sys.exit(train_several(engine, args, hyperparameters))
                name = container_name("train")
                try:
                    result = train_in_container(
                        engine, args.data, args.out, hyperparameters, args.image, args.gpus, name=name
                    )
                except KeyboardInterrupt:
                    print("[local-train] stopping: the trainer saves a checkpoint", file=sys.stderr)
                    engine.run("stop", "--time", str(STOP_GRACE_S), name, check=False)
                    sys.exit(130)
                status = "success" if result.returncode == 0 else "failure"
                print(f"[local-train] {status}: {args.out.resolve() / 'output' / status}", file=sys.stderr)
                if result.returncode == 0:
                    print(f"[local-train] artifact: {args.out.resolve() / MODEL_TAR}", file=sys.stderr)
                sys.exit(result.returncode)
            if hyperparameter_args:
                parser.error(f"unrecognized arguments: {' '.join(hyperparameter_args)}")
            with model_folder(args.model) as folder:
                name = container_name("serve")
                print(
                    f"[local-serve] http://127.0.0.1:{args.port}/invocations (Ctrl-C stops it)",
                    file=sys.stderr,
                )
                if args.bind_host != LOCAL_BIND_HOST:
                    print(f"[local-serve] listening on {args.bind_host}: other machines can reach it",
                          file=sys.stderr)
                command = serve_command(args.image, name, folder, args.port, bind_host=args.bind_host)
                try:
                    engine.run(*command, check=False, capture=False)
                except KeyboardInterrupt:
                    engine.run("stop", name, check=False)
    except EngineUnavailable as error:
        sys.exit(f"docker engine: {error}")


if __name__ == "__main__":
    main()
