"""Serving benchmark: today's torch engine against the default engine, side by side, on this machine.

    make bench-serve [MODEL=<artifact folder>] [BENCH_ARGS="--no-containers"]   # benchmarks/serve.md

In one run, for every workers x threads split of the cores and for both engines (``SERVE_ENGINE``
``torch``, today's path, and ``auto``, the default: OpenVINO int8 when the artifact's recorded
accuracy allows it):

1. latency of one JPEG request end to end (HTTP, gateway, MMS, handlers), one client after
   another, against the bare decode + preprocessing + forward of the same engine in one process
   with the same threads (``bare``, run in ``.venv/serve``): p50 and p99;
2. throughput with ``2 x workers`` clients in parallel;
3. time from the process start to the first healthy ``/ping``;
4. the serving images (default and torch variant, built with BuildKit's cache): size, and the first
   healthy ``/ping`` after ``docker run`` (skipped without a Docker engine, or ``--no-containers``);
5. int8 against fp32 test top-1 of a model trained on real images (``scripts.bench.int8_accuracy``:
   the UCI digits, trained once and cached);
6. the soak (``scripts.bench.soak``, skipped with ``--no-soak``): memory per process and what an
   ml.t3.medium needs, mixed good and bad requests from 16 threads with a slow and an idle client, a
   worker killed under load.

Without ``MODEL`` the served artifact is the production shape: a ResNet50 with 133 classes at 224 px
(random weights: speed does not depend on them), written by the trainer's own exporter, its int8
model calibrated on generated images.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from scripts import REPO_ROOT
from scripts.bench import soak
from scripts.bench.load_average import wait_for_load_below
from scripts.datasets.sample import make_image
from scripts.local.server import SERVE_PYTHON, LocalServer

REPORT = REPO_ROOT / "benchmarks" / "serve.md"
LATENCY_REQUESTS = 100
WARMUP_REQUESTS = 5
THROUGHPUT_REQUESTS_PER_WORKER = 40
QUIET_PATIENCE_S = 600.0
CALIBRATION_IMAGES = 64
# SERVE_ENGINE values compared: today's path, and the default.
TORCH, DEFAULT = "torch", "auto"
ENGINES = (TORCH, DEFAULT)
# The goals of issue 15, checked in the report's verdict.
GOAL_THROUGHPUT_RATIO = 2.5
GOAL_P50_RATIO = 0.45
GOAL_ACCURACY_POINTS = 0.5
GOAL_IMAGE_MB = 600
GOAL_FIRST_PING_S = 3.0


def benchmark_jpeg() -> bytes:
    """A 500x375 photo-sized JPEG (dogImages' typical size)."""
    image = make_image(0, 3, 500, np.random.default_rng(0)).crop((0, 0, 500, 375))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def generated_images(folder: Path, count: int, num_classes: int) -> list[tuple[Path, int]]:
    """``count`` generated photo-sized JPEGs with their class, for calibration and a test pass."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for index in range(count):
        label = index % num_classes
        path = folder / f"{index:04d}.jpg"
        make_image(label % 3, 3, 320, np.random.default_rng(index)).save(path, "JPEG", quality=90)
        samples.append((path, label))
    return samples


def build_artifact(model_dir: Path, num_classes: int = 133, image_size: int = 224) -> Path:
    """A ResNet50 artifact written by the trainer's exporter (random weights), OpenVINO models included."""
    import torchvision

    from classifier import export, quantize

    samples = generated_images(model_dir.parent / "images", CALIBRATION_IMAGES, num_classes)
    data = quantize.QuantizationData(calibration=[path for path, _ in samples], test=samples)
    metrics = export.metrics_document(
        hyperparameters={}, epochs=[], best_epoch=0, test={}, num_classes=num_classes, bad_images={}
    )
    export.write_artifact(
        model_dir, torchvision.models.resnet50(num_classes=num_classes),
        [f"breed_{index:03d}" for index in range(num_classes)], image_size, metrics, REPO_ROOT / "code",
        quantization=data,
    )
    return model_dir


# ---------------------------------------------------------------- measurements


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def post(connection: http.client.HTTPConnection, body: bytes, path: str = "/invocations") -> None:
    connection.request("POST", path, body=body, headers={"Content-Type": "image/jpeg"})
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"request failed ({response.status}): {payload[:300]!r}")


class BareModel:
    """``bare`` running in ``.venv/serve`` (the serving environment): one inference per call."""

    def __init__(self, model_dir: Path, jpeg: Path, threads: int, engine: str):
        # The artifact's code first, as in a worker.
        python_path = os.pathsep.join([str(model_dir / "code"), str(REPO_ROOT / "code"), str(REPO_ROOT)])
        self.process = subprocess.Popen(
            [str(SERVE_PYTHON), "-m", "scripts.bench.serve", "bare", str(model_dir), str(jpeg),
             "--threads", str(threads)],
            cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": python_path, "OMP_NUM_THREADS": str(threads),
                 "SERVE_ENGINE": engine},
        )
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the bare model did not start")

    def once(self) -> float:
        """Seconds of one decode + transform + forward + top k, timed inside that process."""
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def interleaved_latencies(port: int, body: bytes, bare_model: BareModel, count: int = LATENCY_REQUESTS,
                          path: str = "/invocations") -> tuple[list[float], list[float]]:
    """Served and bare seconds, one of each in turn, so that both see the same machine load."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(WARMUP_REQUESTS):
        post(connection, body, path)
        bare_model.once()
    served, bare_run = [], []
    for _ in range(count):
        started = time.perf_counter()
        post(connection, body, path)
        served.append(time.perf_counter() - started)
        bare_run.append(bare_model.once())
    connection.close()
    return served, bare_run


def served_throughput(port: int, body: bytes, clients: int, total: int, path: str = "/invocations") -> float:
    """Requests per second with ``clients`` connections sending ``total`` requests between them."""
    remaining = iter(range(total))
    lock = threading.Lock()
    errors: list[Exception] = []

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            post(connection, body, path)  # warm the connection before the clock matters
            barrier.wait()
            while True:
                with lock:
                    if next(remaining, None) is None:
                        return
                post(connection, body, path)
        except threading.BrokenBarrierError:
            return  # another client failed before the start: reported by it
        except Exception as error:  # reported after the run
            errors.append(error)
            barrier.abort()  # nobody waits for a client that will never come
        finally:
            connection.close()

    barrier = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed: {errors[0]}")
    return total / elapsed


def bare(model_dir: Path, jpeg: Path, threads: int) -> None:
    """Decode + evaluation transform + forward + top k of one JPEG per ``go`` line on stdin."""
    import inference  # the artifact's handlers: the very code a worker runs

    model = inference.model_fn(str(model_dir))
    body = jpeg.read_bytes()
    inference.predict_fn(inference.input_fn(body, "image/jpeg"), model)
    print("ready", flush=True)
    for _ in sys.stdin:
        started = time.perf_counter()
        inference.predict_fn(inference.input_fn(body, "image/jpeg"), model)
        print(time.perf_counter() - started, flush=True)


def chosen_engine(log: str) -> str:
    """The engine the server said it chose (``classifier.engines.CHOICE_LOG_PREFIX``)."""
    from classifier.engines import CHOICE_LOG_PREFIX

    line = next((line for line in log.splitlines() if CHOICE_LOG_PREFIX in line), "")
    return line.split(CHOICE_LOG_PREFIX, 1)[1].split()[0] if line else "?"


# ---------------------------------------------------------------- the run


def wait_for_quiet(cores: int) -> None:
    """Waits (a while, at most) for the machine's load to drop below its cores: others share it."""
    wait_for_load_below(0.75 * cores, QUIET_PATIENCE_S)


def start_healthy(
    model_dir: Path, log: Path, env: dict[str, str], attempts: int = 3
) -> tuple[LocalServer, float]:
    """A healthy server and the seconds it took. sagemaker-inference refuses to start MMS while
    another MMS runs on the machine (another user's, on a shared machine): then it tries again."""
    for attempt in range(1, attempts + 1):
        server = LocalServer(model_dir, log, env)
        try:
            return server, server.wait_healthy()
        except RuntimeError as error:  # the server exited
            server.stop()
            if attempt == attempts or "multiple mms model servers" not in server.log_text():
                raise
            print(f"another MMS runs on this machine; starting again in 30 s ({error!s:.80})", flush=True)
            time.sleep(30)
    raise AssertionError("unreachable")


def measure_config(model_dir: Path, work: Path, jpeg: Path, engine: str, workers: int, threads: int,
                   cores: int) -> dict:
    """Startup, latency (against bare) and throughput of one server."""
    body = jpeg.read_bytes()
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": str(workers), "SERVE_TORCH_THREADS": str(threads),
           "SERVE_ENGINE": engine}
    wait_for_quiet(cores)
    server, startup_s = start_healthy(model_dir, work / f"server-{engine}-{workers}.log", env)
    try:
        row = {"engine": engine, "workers": workers, "threads": threads, "startup_s": startup_s}
        row["served_by"] = chosen_engine(server.log_text())
        bare_model = BareModel(model_dir, jpeg, threads, engine)
        try:
            wait_for_quiet(cores)
            load_before = os.getloadavg()[0]
            row["served"], row["bare"] = interleaved_latencies(
                server.port, body, bare_model, LATENCY_REQUESTS
            )
            row["load"] = (load_before, os.getloadavg()[0])
        finally:
            bare_model.close()
        wait_for_quiet(cores)
        clients = 2 * workers
        row["clients"] = clients
        row["requests_per_s"] = served_throughput(
            server.port, body, clients, THROUGHPUT_REQUESTS_PER_WORKER * workers
        )
    finally:
        server.stop()
    print(f"{engine} ({row['served_by']}), {workers} x {threads}: healthy after {row['startup_s']:.1f} s, "
          f"p50 {percentile(row['served'], 50) * 1000:.1f} ms, {row['requests_per_s']:.2f} requests/s",
          flush=True)
    return row


def measure_torchserve(model_dir: Path, work: Path, jpeg: Path, workers: int, threads: int,
                       cores: int) -> dict:
    """The same measurements of TorchServe serving the artifact with its torch engine."""
    from scripts.bench.torchserve import TorchServeProcess

    body = jpeg.read_bytes()
    wait_for_quiet(cores)
    server = TorchServeProcess(model_dir, work / f"torchserve-{workers}", workers, threads)
    try:
        row = {"engine": "TorchServe", "served_by": TORCH, "workers": workers, "threads": threads,
               "startup_s": server.wait_answering(body)}
        bare_model = BareModel(model_dir, jpeg, threads, TORCH)
        try:
            wait_for_quiet(cores)
            load_before = os.getloadavg()[0]
            row["served"], row["bare"] = interleaved_latencies(
                server.port, body, bare_model, LATENCY_REQUESTS, server.path
            )
            row["load"] = (load_before, os.getloadavg()[0])
        finally:
            bare_model.close()
        wait_for_quiet(cores)
        row["clients"] = 2 * workers
        row["requests_per_s"] = served_throughput(
            server.port, body, 2 * workers, THROUGHPUT_REQUESTS_PER_WORKER * workers, server.path
        )
    finally:
        server.stop()
    print(f"TorchServe, {workers} x {threads}: first answer after {row['startup_s']:.1f} s, "
          f"p50 {percentile(row['served'], 50) * 1000:.1f} ms, {row['requests_per_s']:.2f} requests/s",
          flush=True)
    return row


def run(model_dir: Path, work: Path, cores: int, torchserve: bool = True) -> list[dict]:
    """Every workers x threads split of the cores: both engines one after the other for each split,
    then TorchServe (where it installs)."""
    jpeg = work / "request.jpg"
    jpeg.write_bytes(benchmark_jpeg())
    rows = []
    for workers in range(1, cores + 1):
        threads = max(1, cores // workers)
        for engine in ENGINES:
            rows.append(measure_config(model_dir, work, jpeg, engine, workers, threads, cores))
        if torchserve:
            try:
                rows.append(measure_torchserve(model_dir, work, jpeg, workers, threads, cores))
            except (subprocess.CalledProcessError, RuntimeError, TimeoutError) as error:
                print(f"TorchServe not measured: {error}", flush=True)
                torchserve = False
    return rows


def seconds_to_healthy(port: int, started: float, timeout: float = 180) -> float:
    """Seconds from ``started`` (monotonic) to the first 200 of ``/ping``, polled every 20 ms."""
    while time.monotonic() - started < timeout:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/ping")
            if connection.getresponse().status == 200:
                return time.monotonic() - started
        except (OSError, http.client.HTTPException):
            pass
        finally:
            connection.close()
        time.sleep(0.02)
    raise TimeoutError(f"/ping on port {port} did not answer 200 within {timeout:.0f} s")


def container_cpu_seconds(engine, name: str) -> float | None:
    """CPU seconds a container has used so far (cgroup v1 accounting), None where it cannot be read.

    Until the first healthy /ping of a one-worker server, its work runs mostly one step after
    the other: the CPU seconds estimate the start on an idle machine, which the wall time on a
    shared machine does not show."""
    container_id = engine.run("inspect", "--format", "{{.Id}}", name, check=False).stdout.strip()
    for root in ("/sys/fs/cgroup/cpuacct/docker", "/sys/fs/cgroup/cpu,cpuacct/docker"):
        path = Path(root) / container_id / "cpuacct.usage"
        if container_id and path.is_file():
            return int(path.read_text()) / 1e9
    return None


def measure_images(model_dir: Path, work: Path) -> list[dict]:
    """Both serving images: size, and seconds from ``docker run`` to the first healthy ``/ping``."""
    from scripts.containers import build, images, local_mode
    from scripts.engine import dockerd
    from scripts.engine.base_image import ensure_base_image
    from scripts.local.server import free_port

    tag = os.environ.get("BENCH_IMAGE_TAG") or f"bench-{images.git_tag()}"
    results = []
    with dockerd.engine_session() as engine:
        base_image = ensure_base_image(engine, os.environ.get("BASE_IMAGE") or None)
        for variant, serve_engine in (("default", DEFAULT), (build.TORCH_VARIANT, TORCH)):
            build.build_image(engine, "serve", [tag], base_image, quiet=True, serve_variant=variant)
            image = local_mode.image_name("serve", build.variant_tags([tag], variant)[0])
            starts, cpu = [], []
            for _ in range(3):
                port = free_port()
                name = local_mode.container_name("serve")
                command = local_mode.serve_command(image, name, model_dir, port,
                                                   {"SERVE_ENGINE": serve_engine}, detach=True)
                started = time.monotonic()
                engine.run(*command)
                try:
                    starts.append(seconds_to_healthy(port, started))
                    cpu.append(container_cpu_seconds(engine, name))
                    log = engine.run("logs", name, check=False).stderr
                finally:
                    engine.run("stop", name, check=False)
            results.append({"variant": variant, "image": image, "engine": serve_engine,
                             "served_by": chosen_engine(log), "size_mb": build.image_size_mb(engine, image),
                             "first_ping_s": starts, "cpu_s": cpu})
            print(f"{image}: {results[-1]['size_mb']:.0f} MB, first healthy /ping after "
                  f"{', '.join(f'{s:.1f}' for s in starts)} s", flush=True)
    return results


# ---------------------------------------------------------------- the report


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = Path("/proc/cpuinfo").read_text()
    isa = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "no AVX2"
    vnni = ", VNNI" if (" avx512_vnni" in flags or " avx_vnni" in flags) else ", no VNNI"
    return f"{cpu}, {isa}{vnni}, {platform.system()} {platform.machine()}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def pairs(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(torch row, default row) for each workers x threads split."""
    by_split: dict[tuple[int, int], dict[str, dict]] = {}
    for row in rows:
        if row["engine"] not in ENGINES:
            continue
        by_split.setdefault((row["workers"], row["threads"]), {})[row["engine"]] = row
    return [(split[TORCH], split[DEFAULT]) for split in by_split.values() if len(split) == len(ENGINES)]


def verdict(rows: list[dict], accuracy: dict | None, images: list[dict] | None,
            soak_results: dict | None = None) -> list[str]:
    best_torch = max((t for t, _ in pairs(rows)), key=lambda row: row["requests_per_s"])
    best_default = max((d for _, d in pairs(rows)), key=lambda row: row["requests_per_s"])
    lines = []
    for torch_row, default_row in pairs(rows):
        throughput = default_row["requests_per_s"] / torch_row["requests_per_s"]
        p50 = percentile(default_row["served"], 50) / percentile(torch_row["served"], 50)
        ok = throughput >= GOAL_THROUGHPUT_RATIO and p50 <= GOAL_P50_RATIO
        lines.append(
            f"- {'**met**' if ok else '**missed**'} at {default_row['workers']} worker(s) x "
            f"{default_row['threads']} thread(s): the default engine ({default_row['served_by']}) serves "
            f"**{throughput:.2f}x** the torch engine's throughput (goal >= {GOAL_THROUGHPUT_RATIO}x) at "
            f"**{p50:.2f}x** its p50 (goal <= {GOAL_P50_RATIO}x)."
        )
    if accuracy:
        drop = -accuracy["int8_minus_fp32_points"]
        lines.append(
            f"- {'**met**' if drop <= GOAL_ACCURACY_POINTS else '**missed**'}: int8 test top-1 "
            f"{100 * accuracy['int8']['test_accuracy']:.2f}% vs fp32 "
            f"{100 * accuracy['fp32']['test_accuracy']:.2f}% on the digits (real scans): a drop of "
            f"**{drop:.2f} points** (goal <= {GOAL_ACCURACY_POINTS})."
        )
    for image in images or []:
        if image["variant"] == "default":
            first = min(image["first_ping_s"])
            ok = image["size_mb"] <= GOAL_IMAGE_MB and first <= GOAL_FIRST_PING_S
            lines.append(
                f"- {'**met**' if ok else '**missed**'}: the default serving image is "
                f"**{image['size_mb']:.0f} MB** (goal <= {GOAL_IMAGE_MB}) and answers its first healthy "
                f"`/ping` **{first:.1f} s** after `docker run` (best of 3; goal <= {GOAL_FIRST_PING_S:g} s)."
            )
    lines.append(
        f"- Default for 2 vCPUs implied: **{best_default['workers']} worker(s) x {best_default['threads']} "
        f"thread(s)** for the default engine ({best_default['requests_per_s']:.1f} requests/s); the torch "
        f"engine is best at {best_torch['workers']} x {best_torch['threads']}."
    )
    if soak_results is not None:
        lines.append(f"- {soak.verdict(soak_results)}.")
    return lines


def report(rows: list[dict], model: str, size: tuple[int, int], cores: int,
           accuracy: dict | None, images: list[dict] | None, soak_results: dict | None = None) -> str:
    lines = [
        "# Serving benchmark",
        "",
        f"`make bench-serve`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, on {cores} cores ({machine()}). "
        f"Model: {model}. Request: one {size[0]}x{size[1]} JPEG ({len(benchmark_jpeg()) // 1024} KB), "
        "`Content-Type: image/jpeg`, JSON top 5 back.",
        "",
        "## Verdict",
        "",
        *verdict(rows, accuracy, images, soak_results),
        "",
        "## Engines side by side",
        "",
        "`SERVE_ENGINE=torch` is today's path (the `torch.export` model); the default, `auto`, serves the "
        "artifact's OpenVINO int8 model when its recorded test accuracy allows (else OpenVINO fp32). "
        "TorchServe (for reference, where it installs: `scripts.bench.torchserve`) serves the same artifact "
        "with the torch engine through the artifact's own handlers; its startup is its first answered "
        "request (its `/ping` does not wait for the model). "
        f"Per split of the cores: {LATENCY_REQUESTS} requests one at a time, each followed by the same "
        "decode + evaluation transform + forward + top k in one process with the same engine and threads "
        "(`bare`), so both meet the same load; then throughput with 2 clients per worker.",
        "",
        "| workers x threads | engine | served p50 (ms) | p99 (ms) | bare p50 (ms) | served - bare p50 (ms) "
        "| requests/s | first healthy /ping (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        served_p50, bare_p50 = percentile(row["served"], 50), percentile(row["bare"], 50)
        lines.append(
            f"| {row['workers']} x {row['threads']} | {row['engine']} ({row['served_by']}) | "
            f"{ms(served_p50)} | {ms(percentile(row['served'], 99))} | {ms(bare_p50)} | "
            f"{ms(served_p50 - bare_p50)} | "
            f"{row['requests_per_s']:.2f} | {row['startup_s']:.1f} |"
        )
    lines += [
        "",
        "| workers x threads | throughput default / torch | p50 default / torch | p99 default / torch |",
        "| --- | --- | --- | --- |",
    ]
    for torch_row, default_row in pairs(rows):
        lines.append(
            f"| {torch_row['workers']} x {torch_row['threads']} | "
            f"{default_row['requests_per_s'] / torch_row['requests_per_s']:.2f}x | "
            f"{percentile(default_row['served'], 50) / percentile(torch_row['served'], 50):.2f}x | "
            f"{percentile(default_row['served'], 99) / percentile(torch_row['served'], 99):.2f}x |"
        )
    loads = [value for row in rows for value in row["load"]]
    lines += [
        "",
        f"Load average (1 min) around the latency runs: {min(loads):.2f} to {max(loads):.2f} on {cores} "
        "cores.",
        "",
    ]
    if images:
        lines += [
            "## Serving images",
            "",
            "Built with BuildKit's cache (`scripts.containers.build`), the artifact above mounted at "
            "`/opt/ml/model`; seconds from `docker run` to the first healthy `/ping`, three starts.",
            "",
            "| image | SERVE_ENGINE | served by | size (MB) | first healthy /ping (s) "
            "| CPU seconds by then |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for image in images:
            starts = ", ".join(f"{s:.1f}" for s in image["first_ping_s"])
            cpu = ", ".join("?" if c is None else f"{c:.1f}" for c in image["cpu_s"])
            lines.append(f"| `{image['image']}` ({image['variant']}) | {image['engine']} | "
                         f"{image['served_by']} | {image['size_mb']:.0f} | {starts} | {cpu} |")
        lines += [
            "",
            "One worker (the default on 2 cores) starts mostly one step after another, so the CPU "
            "seconds the container used until its first healthy `/ping` estimate that time on an "
            "idle machine; on a shared machine the wall time also counts the waits for a core.",
        ]
        lines.append("")
    if accuracy:
        lines += [
            "## int8 against fp32 on real images",
            "",
            "The trainer's own record (`metrics.json`, `quantization`) of a ResNet18 trained from scratch on "
            "the UCI digits (`scripts.bench.int8_accuracy`: 1258/269/270 scans, 10 classes, 224 px), int8 "
            f"calibrated on {accuracy['calibration']['images']} {accuracy['calibration']['split']} images; "
            f"{accuracy['test_images']} test images.",
            "",
            "| model | test top-1 |",
            "| --- | --- |",
            f"| torch fp32 (`model.pt2`) | {100 * accuracy['torch_fp32']:.2f}% |",
            f"| OpenVINO fp32 | {100 * accuracy['fp32']['test_accuracy']:.2f}% |",
            f"| OpenVINO int8 | {100 * accuracy['int8']['test_accuracy']:.2f}% |",
            "",
            f"int8 - fp32: {accuracy['int8_minus_fp32_points']:+.2f} points; int8 and fp32 agree on the "
            f"top-1 of {100 * accuracy['int8_top1_agreement']:.1f}% of the test images; largest probability "
            f"difference {accuracy['int8_max_probability_difference']:.3f}.",
            "",
        ]
    if soak_results is not None:
        lines += soak.report_lines(soak_results)
    lines += [
        "## Why OpenVINO",
        "",
        "See [engines.md](engines.md) (`make bench-engines`): ONNX Runtime and OpenVINO, fp32 and int8, "
        "on this CPU. OpenVINO's int8 is at least as fast, and neither OpenVINO nor NNCF needs protobuf, "
        "while ONNX Runtime's quantization tools (`onnx`) need protobuf >= 4: smdebug pins it to <= 3.20.3 "
        "in the training image, where the quantization runs.",
        "",
        "The machine is shared: other jobs may have run at the same time; compare runs on the same "
        "machine only.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    global LATENCY_REQUESTS, THROUGHPUT_REQUESTS_PER_WORKER, QUIET_PATIENCE_S
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command")
    bench = commands.add_parser("run", help="the whole benchmark (default)")
    bench.add_argument("--model-dir", type=Path, help="an artifact to serve (default: a ResNet50 is built)")
    bench.add_argument("--report", type=Path, default=REPORT)
    bench.add_argument("--cores", type=int, default=None, help="N for 1..N workers (default: all cores)")
    bench.add_argument("--no-containers", action="store_true", help="skip the serving images")
    bench.add_argument("--no-accuracy", action="store_true", help="skip the int8 accuracy on the digits")
    bench.add_argument("--no-torchserve", action="store_true", help="skip TorchServe")
    bench.add_argument("--no-soak", action="store_true", help="skip the load-and-faults soak")
    bench.add_argument("--requests", type=int, default=LATENCY_REQUESTS,
                       help="latency requests per server (fewer: a quick check of the benchmark itself)")
    bench.add_argument("--quiet-patience", type=float, default=QUIET_PATIENCE_S,
                       help="seconds to wait, at most, for a quiet machine before each measurement")
    bare_parser = commands.add_parser("bare", help="(internal) the in-process measurement, in .venv/serve")
    bare_parser.add_argument("model_dir", type=Path)
    bare_parser.add_argument("jpeg", type=Path)
    bare_parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args(argv if argv is not None else (sys.argv[1:] or ["run"]))

    if args.command == "bare":
        bare(args.model_dir, args.jpeg, args.threads)
        return

    from scripts.bench import int8_accuracy
    from scripts.engine.errors import EngineUnavailable
    from serving.settings import available_cpus

    cores = args.cores or available_cpus()
    LATENCY_REQUESTS, QUIET_PATIENCE_S = args.requests, args.quiet_patience
    THROUGHPUT_REQUESTS_PER_WORKER = min(THROUGHPUT_REQUESTS_PER_WORKER, 2 * args.requests)
    accuracy = None
    if not args.no_accuracy:
        accuracy = int8_accuracy.accuracy_record(int8_accuracy.trained_digits_model())
        print(f"int8 accuracy: {json.dumps(accuracy)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        work = Path(folder)
        if args.model_dir:
            model_dir, model = args.model_dir.resolve(), f"`{args.model_dir}`"
        else:
            model_dir = build_artifact(work / "model")
            os.chmod(folder, 0o755)  # the serving container's non-root user reads the artifact
            model = ("ResNet50, 133 classes, 224x224 input (random weights; OpenVINO int8 calibrated on "
                     "generated images)")
        rows = run(model_dir, work, cores, torchserve=not args.no_torchserve)
        soak_results = None if args.no_soak else soak.run_soak(model_dir, work, benchmark_jpeg())
        images = None
        if not args.no_containers:
            try:
                images = measure_images(model_dir, work)
            except EngineUnavailable as error:
                print(f"no Docker engine, serving images not measured: {error}", flush=True)
            except (subprocess.CalledProcessError, TimeoutError, RuntimeError) as error:
                print(f"serving images not measured: {error}", flush=True)
    size = Image.open(io.BytesIO(benchmark_jpeg())).size
    text = report(rows, model, size, cores, accuracy, images, soak_results)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
