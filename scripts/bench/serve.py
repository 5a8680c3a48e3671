"""Serving benchmark: what the serving stack costs on top of the model, on this machine.

    make bench-serve [MODEL=<artifact folder>]      # writes benchmarks/serve.md

1. latency of one JPEG request end to end (HTTP, gateway, MMS, handlers), one client after
   another, against the bare decode + preprocessing + forward in one process with the same torch
   threads (``bare``, run in ``.venv/serve``): p50 and p99, and their ratio;
2. throughput with 1..N workers (N = cores), ``2 x workers`` clients in parallel;
3. time from the process start to the first healthy ``/ping``;
4. the soak (``scripts.bench.soak``): memory per process and what an ml.t3.medium needs, mixed good
   and bad requests from 16 threads with a slow and an idle client, a worker killed under load.

Without ``MODEL`` the artifact is the production shape: a ResNet50 with 133 classes at 224 px
(random weights: speed does not depend on them).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import os
import platform
import statistics
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
from scripts.datasets.sample import make_image
from scripts.local.server import SERVE_PYTHON, LocalServer

REPORT = REPO_ROOT / "benchmarks" / "serve.md"
LATENCY_REQUESTS = 100
WARMUP_REQUESTS = 5
THROUGHPUT_REQUESTS_PER_WORKER = 40
QUIET_PATIENCE_S = 600.0


def benchmark_jpeg() -> bytes:
    """A 500x375 photo-sized JPEG (dogImages' typical size)."""
    image = make_image(0, 3, 500, np.random.default_rng(0)).crop((0, 0, 500, 375))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def build_artifact(model_dir: Path, num_classes: int = 133, image_size: int = 224) -> Path:
    """A ResNet50 artifact written by the trainer's own exporter (random weights)."""
    import torchvision

    from classifier import export

    metrics = export.metrics_document(
        hyperparameters={}, epochs=[], best_epoch=0, test={}, num_classes=num_classes, bad_images={}
    )
    export.write_artifact(
        model_dir, torchvision.models.resnet50(num_classes=num_classes),
        [f"breed_{index:03d}" for index in range(num_classes)], image_size, metrics, REPO_ROOT / "code",
    )
    return model_dir


# ---------------------------------------------------------------- measurements


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def post(connection: http.client.HTTPConnection, body: bytes) -> None:
    connection.request("POST", "/invocations", body=body, headers={"Content-Type": "image/jpeg"})
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"request failed ({response.status}): {payload[:300]!r}")


class BareModel:
    """``bare`` running in ``.venv/serve`` (the serving torch build): one inference per call."""

    def __init__(self, model_dir: Path, jpeg: Path, threads: int):
        # The artifact's code first, as in a worker.
        python_path = os.pathsep.join([str(model_dir / "code"), str(REPO_ROOT / "code"), str(REPO_ROOT)])
        self.process = subprocess.Popen(
            [str(SERVE_PYTHON), "-m", "scripts.bench.serve", "bare", str(model_dir), str(jpeg),
             "--threads", str(threads)],
            cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": python_path, "OMP_NUM_THREADS": str(threads)},
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


def interleaved_latencies(port: int, body: bytes, bare_model: BareModel,
                          count: int = LATENCY_REQUESTS) -> tuple[list[float], list[float]]:
    """Served and bare seconds, one of each in turn, so that both see the same machine load."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(WARMUP_REQUESTS):
        post(connection, body)
        bare_model.once()
    served, bare_run = [], []
    for _ in range(count):
        started = time.perf_counter()
        post(connection, body)
        served.append(time.perf_counter() - started)
        bare_run.append(bare_model.once())
    connection.close()
    return served, bare_run


def served_throughput(port: int, body: bytes, clients: int, total: int) -> float:
    """Requests per second with ``clients`` connections sending ``total`` requests between them."""
    remaining = iter(range(total))
    lock = threading.Lock()
    errors: list[Exception] = []

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            post(connection, body)  # warm the connection before the clock matters
            barrier.wait()
            while True:
                with lock:
                    if next(remaining, None) is None:
                        return
                post(connection, body)
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
    import torch

    import inference  # the artifact's handlers: the very code a worker runs

    torch.set_num_threads(threads)
    model = inference.model_fn(str(model_dir))
    body = jpeg.read_bytes()
    inference.predict_fn(inference.input_fn(body, "image/jpeg"), model)
    print("ready", flush=True)
    for _ in sys.stdin:
        started = time.perf_counter()
        inference.predict_fn(inference.input_fn(body, "image/jpeg"), model)
        print(time.perf_counter() - started, flush=True)


# ---------------------------------------------------------------- the run


def wait_for_quiet(cores: int, patience_s: float = QUIET_PATIENCE_S) -> None:
    """Waits (a while, at most) for the machine's load to drop below its cores: others share it."""
    deadline = time.monotonic() + patience_s
    while os.getloadavg()[0] > 0.75 * cores and time.monotonic() < deadline:
        time.sleep(5)


def run(model_dir: Path, work: Path, cores: int) -> dict:
    jpeg = work / "request.jpg"
    jpeg.write_bytes(benchmark_jpeg())
    body = jpeg.read_bytes()
    results: dict = {"cores": cores, "throughput": [], "startup_s": {}}

    for workers in range(1, cores + 1):
        threads = max(1, cores // workers)
        env = {"SAGEMAKER_MODEL_SERVER_WORKERS": str(workers), "SERVE_TORCH_THREADS": str(threads)}
        wait_for_quiet(cores)
        server = LocalServer(model_dir, work / f"server-{workers}.log", env)
        try:
            results["startup_s"][workers] = server.wait_healthy()
            print(f"{workers} worker(s) x {threads} thread(s): healthy after "
                  f"{results['startup_s'][workers]:.1f} s", flush=True)
            if workers == 1:
                bare_model = BareModel(model_dir, jpeg, threads)
                try:
                    wait_for_quiet(cores)
                    load_before = os.getloadavg()[0]
                    results["served"], results["bare"] = interleaved_latencies(server.port, body, bare_model)
                    results["load"] = (load_before, os.getloadavg()[0])
                finally:
                    bare_model.close()
                results["threads"] = threads
            clients = 2 * workers
            wait_for_quiet(cores)
            rate = served_throughput(server.port, body, clients, THROUGHPUT_REQUESTS_PER_WORKER * workers)
            results["throughput"].append({"workers": workers, "threads": threads, "clients": clients,
                                          "requests_per_s": rate})
            print(f"  throughput {rate:.2f} requests/s with {clients} clients", flush=True)
        finally:
            server.stop()
    return results


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {platform.system()} {platform.machine()}"


def report(results: dict, model: str, size: tuple[int, int], soak_results: dict | None = None) -> str:
    served, bare_run = results["served"], results["bare"]
    rows = {
        "p50": (percentile(served, 50), percentile(bare_run, 50)),
        "p99": (percentile(served, 99), percentile(bare_run, 99)),
        "mean": (statistics.fmean(served), statistics.fmean(bare_run)),
    }
    lines = [
        "# Serving benchmark",
        "",
        f"`make bench-serve`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, on {results['cores']} cores "
        f"({machine()}). Model: {model}. Request: one {size[0]}x{size[1]} JPEG "
        f"({len(benchmark_jpeg()) // 1024} KB), `Content-Type: image/jpeg`, JSON top 5 back.",
        "",
        f"**Verdict:** served p50 {rows['p50'][0] / rows['p50'][1]:.2f}x the bare decode + forward (target "
        f"<= 1.25x: {'met' if rows['p50'][0] / rows['p50'][1] <= 1.25 else 'MISSED'})"
        + (f"; {soak.verdict(soak_results)}." if soak_results is not None else "."),
        "",
        f"## Latency: served end to end vs bare in-process ({len(served)} requests, one at a time)",
        "",
        "Served and bare requests alternate, so that both meet the same load on the machine.",
        "",
        f"Served: HTTP client -> gateway -> MMS -> worker (1 worker x {results['threads']} torch threads). "
        f"Bare: the same decode + evaluation transform + forward + top k (`inference.input_fn` + "
        f"`predict_fn`) in one process with {results['threads']} torch threads.",
        "",
        "| statistic | served (ms) | bare (ms) | served / bare |",
        "| --- | --- | --- | --- |",
    ]
    for name, (served_s, bare_s) in rows.items():
        lines.append(f"| {name} | {served_s * 1000:.1f} | {bare_s * 1000:.1f} | {served_s / bare_s:.3f}x |")
    pairs = [(s_, b_) for s_, b_ in zip(served, bare_run, strict=True)]
    overhead_ms = statistics.median(s_ - b_ for s_, b_ in pairs) * 1000
    pair_ratio = statistics.median(s_ / b_ for s_, b_ in pairs)
    lines += [
        "",
        f"Per pair (served, then bare, back to back): median overhead {overhead_ms:.1f} ms, median "
        f"ratio {pair_ratio:.3f}x. Load average (1 min) before / after: {results['load'][0]:.2f} / "
        f"{results['load'][1]:.2f} on {results['cores']} cores.",
        "",
        "Target: served p50 at most 1.25x the bare p50.",
        "",
        "## Throughput with 1..N workers",
        "",
        "| workers x torch threads | clients | requests/s |",
        "| --- | --- | --- |",
    ]
    for row in results["throughput"]:
        rate = row["requests_per_s"]
        lines.append(f"| {row['workers']} x {row['threads']} | {row['clients']} | {rate:.2f} |")
    lines += [
        "",
        "## Time from process start to the first healthy /ping",
        "",
        "| workers | seconds |",
        "| --- | --- |",
    ]
    for workers, seconds in results["startup_s"].items():
        lines.append(f"| {workers} | {seconds:.1f} |")
    lines.append("")
    if soak_results is not None:
        lines += soak.report_lines(soak_results)
    lines += [
        "The machine is shared: other jobs may have run at the same time; compare runs on the same "
        "machine only.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command")
    bench = commands.add_parser("run", help="the whole benchmark (default)")
    bench.add_argument("--model-dir", type=Path, help="an artifact to serve (default: a ResNet50 is built)")
    bench.add_argument("--report", type=Path, default=REPORT)
    bench.add_argument("--cores", type=int, default=None, help="N for 1..N workers (default: all cores)")
    bench.add_argument("--skip-soak", action="store_true", help="leave out the load-and-faults soak")
    bare_parser = commands.add_parser("bare", help="(internal) the in-process measurement, in .venv/serve")
    bare_parser.add_argument("model_dir", type=Path)
    bare_parser.add_argument("jpeg", type=Path)
    bare_parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args(argv if argv is not None else (sys.argv[1:] or ["run"]))

    if args.command == "bare":
        bare(args.model_dir, args.jpeg, args.threads)
        return

    from serving.settings import available_cpus

    cores = args.cores or available_cpus()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        work = Path(folder)
        if args.model_dir:
            model_dir, model = args.model_dir.resolve(), f"`{args.model_dir}`"
        else:
            model_dir = build_artifact(work / "model")
            model = "ResNet50, 133 classes, 224x224 input (torch.export, random weights)"
        results = run(model_dir, work, cores)
        soak_results = None if args.skip_soak else soak.run_soak(model_dir, work, benchmark_jpeg())
    size = Image.open(io.BytesIO(benchmark_jpeg())).size
    text = report(results, model, size, soak_results)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
