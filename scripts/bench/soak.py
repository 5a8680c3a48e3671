"""The serving soak of ``make bench-serve``: the production-sized model under load and faults, and the
memory each part of the stack holds. Its section of ``benchmarks/serve.md`` is :func:`report_lines`.

1. memory, for every engine (``SERVE_ENGINE`` torch, fp32, int8), each on a server of its own:
   resident (RSS) and proportional (PSS) memory of every process after the warm-up and after
   batches of ``SERVE_MAX_BATCH_IMAGES`` images (a worker's peak), against the per-worker budget of
   ``serving/settings.py`` and what the default worker count of an ml.t3.medium (2 vCPUs, 4 GiB,
   the seeds' endpoint) needs;
2. load, with the default engine: mixed good and bad requests from many threads
   (``scripts.local.load``), while a client trickles a body and another holds an idle connection;
3. a worker SIGKILLed under load: failed requests, the longest wait, /ping, recovery.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from classifier import engines, protocol
from scripts.local import load
from scripts.local.server import LocalServer

SOAK_WORKERS = 2  # one is killed; the other keeps serving
LOAD_REQUESTS = 400
LOAD_THREADS = 16
KILL_REQUESTS = 200
MAX_BATCH_IMAGES = 32  # inference.DEFAULT_MAX_BATCH_IMAGES: a worker's largest request
BATCH_ROUNDS = 3
T3_MEDIUM = {"cores": 2, "memory_mb": 4096}
MEMORY_ENGINES = (engines.TORCH, engines.FP32, engines.INT8)


def _memory_summary(roles: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per role: the largest process's RSS and PSS, and how many processes hold the role."""
    return {
        role: {"count": len(items), "rss_mb": max(item["rss_mb"] for item in items),
               "pss_mb": max(item["pss_mb"] for item in items)}
        for role, items in roles.items()
    }


def measure_memory(server: LocalServer, jpeg: bytes) -> dict:
    """Memory by role after the warm-up and after batches of the largest size (every worker's peak)."""
    after_warm_up = _memory_summary(server.memory_by_role())
    batch = load.Probe("largest batch", protocol.json_request([jpeg] * MAX_BATCH_IMAGES), protocol.JSON, 200)
    batches = load.run_load(server.port, [batch], total=BATCH_ROUNDS * SOAK_WORKERS, threads=SOAK_WORKERS)
    if batches.unexpected:
        raise RuntimeError(f"batch requests failed: {batches.unexpected[:2]}")
    return {"after_warm_up": after_warm_up, "after_batches": _memory_summary(server.memory_by_role())}


def _soak_environment(engine: str | None = None) -> dict[str, str]:
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": str(SOAK_WORKERS), "SERVE_TORCH_THREADS": "1"}
    return {**env, engines.ENGINE_ENV: engine} if engine else env


def _all_ready(status: int, body: dict) -> bool:
    return status == 200 and body["workers_ready"] == SOAK_WORKERS


def engine_memory(model_dir: Path, work: Path, jpeg: bytes, engine: str) -> dict:
    """``measure_memory`` of a server whose workers load ``engine``; ``{"error": ...}`` when it cannot
    serve the artifact (an artifact without OpenVINO models, or no torch)."""
    server = LocalServer(model_dir, work / f"server-soak-memory-{engine}.log", _soak_environment(engine))
    try:
        server.watch_ping(_all_ready)
        return measure_memory(server, jpeg)
    except (RuntimeError, TimeoutError) as error:
        return {"error": f"{error}"[:300]}
    finally:
        server.stop()


def run_soak(model_dir: Path, work: Path, jpeg: bytes) -> dict:
    """The whole soak: memory for every engine, then load and faults with the default engine
    (``SOAK_WORKERS`` workers x 1 thread, default limits)."""
    from scripts.bench.serve import chosen_engine
    from serving import settings

    results: dict = {"workers": SOAK_WORKERS, "read_timeout_s": settings.DEFAULT_REQUEST_READ_TIMEOUT_SECONDS,
                     "idle_timeout_s": settings.DEFAULT_IDLE_TIMEOUT_SECONDS, "memory": {}}
    for engine in MEMORY_ENGINES:
        print(f"soak: memory of {engine} workers", flush=True)
        results["memory"][engine] = engine_memory(model_dir, work, jpeg, engine)
    server = LocalServer(model_dir, work / "server-soak.log", _soak_environment())
    try:
        server.watch_ping(_all_ready)
        results["served_by"] = chosen_engine(server.log_text())
        kinds = load.probes(jpeg)
        print(f"soak: {LOAD_REQUESTS} mixed requests from {LOAD_THREADS} threads, a slow and an idle client",
              flush=True)
        side: dict = {}
        slow = threading.Thread(target=lambda: side.update(slow=load.slow_body(server.port)))
        idle = threading.Thread(target=lambda: side.update(idle=load.idle_close(server.port)))
        slow.start()
        idle.start()
        results["load"] = load.run_load(server.port, kinds, LOAD_REQUESTS, LOAD_THREADS)
        results["slow_pending_after_load"] = slow.is_alive()
        slow.join()
        idle.join()
        results.update(side)
        print("soak: a worker killed under load", flush=True)
        results["kill"] = load.kill_worker_under_load(server, server.port, kinds, SOAK_WORKERS,
                                                      total=KILL_REQUESTS, threads=LOAD_THREADS // 2)
    finally:
        results["exit_status"] = server.stop()
    return results


def _counts(statuses: dict[str, int]) -> str:
    return ", ".join(f"{count} x {status}" for status, count in statuses.items())


def _ms(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q) * 1000:.0f}" if values else "-"


def memory_fit(engine: str, memory: dict) -> dict:
    """A worker's measured peak against its budget in ``serving/settings.py``, and what an
    ml.t3.medium with its default worker count for ``engine`` needs."""
    from serving import settings

    peak = memory["after_batches"]
    budget = settings.WORKER_MEMORY_MB[engine]
    worker_peak = peak["worker"]["rss_mb"]
    others = sum(item["rss_mb"] * item["count"] for role, item in peak.items() if role != "worker")
    t3_workers = settings.default_workers(T3_MEDIUM["cores"], T3_MEDIUM["memory_mb"], budget)
    t3_total = others + t3_workers * worker_peak
    return {"budget_mb": budget, "worker_peak_mb": worker_peak, "others_mb": others,
            "within_budget": worker_peak <= budget, "t3_workers": t3_workers, "t3_total_mb": t3_total,
            "t3_fits": t3_total <= T3_MEDIUM["memory_mb"]}


def _fits(results: dict) -> dict[str, dict]:
    return {engine: memory_fit(engine, memory) for engine, memory in results["memory"].items()
            if "error" not in memory}


def _failed_during_kill(kill) -> list:
    return [outcome for outcome in kill.during.outcomes if outcome.status != outcome.expected]


def _faults_ok(results: dict) -> bool:
    loaded, kill = results["load"], results["kill"]
    failed = _failed_during_kill(kill)
    return (not loaded.unexpected and kill.recovered_s is not None and not kill.after.unexpected
            and all(o.status and o.status >= 500 and o.json_error for o in failed)
            and results.get("slow") is not None and results["slow"].status == 408
            and results.get("idle") is not None)


def verdict(results: dict) -> str:
    """One line: whether the server took the load and the faults, and whether each engine's workers
    stay within their memory budget and fit an ml.t3.medium."""
    loaded, fits = results["load"], _fits(results)
    memory_ok = bool(fits) and all(fit["within_budget"] and fit["t3_fits"] for fit in fits.values())
    ok = _faults_ok(results) and memory_ok
    needs = ", ".join(f"{engine} {fit['t3_total_mb']:.0f}" for engine, fit in fits.items())
    return (f"load and faults {'passed' if ok else 'FAILED'}: {len(loaded.unexpected)} unexpected answers in "
            f"{len(loaded.outcomes)}, a killed worker cost {len(_failed_during_kill(results['kill']))} JSON "
            f"5xx; an ml.t3.medium with its default workers needs (MB of 4096) {needs or 'not measured'}")


def report_lines(results: dict) -> list[str]:
    """The soak's section of benchmarks/serve.md, verdict first."""
    from serving import settings

    loaded, kill, fits = results["load"], results["kill"], _fits(results)
    failed = _failed_during_kill(kill)
    longest = max(outcome.seconds for outcome in kill.during.outcomes)
    slow, idle = results.get("slow"), results.get("idle")
    verdicts = [
        f"{len(loaded.unexpected)} unexpected answers in {len(loaded.outcomes)} mixed requests",
        f"slow client: {slow.status} after {slow.seconds:.1f} s" if slow else "slow client: not measured",
        f"idle connection closed after {idle:.1f} s" if idle is not None else "idle connection: not closed",
        f"worker killed: {len(failed)} request(s) failed, all JSON 5xx: "
        f"{all(o.status and o.status >= 500 and o.json_error for o in failed)}; "
        f"back in {kill.recovered_s:.1f} s" if kill.recovered_s is not None else "worker killed: not back",
        *(f"{engine} workers: peak {fit['worker_peak_mb']:.0f} MB "
          f"({'within' if fit['within_budget'] else 'OVER'} the {fit['budget_mb']} MB budget), "
          f"an ml.t3.medium with its default {fit['t3_workers']} worker(s) "
          f"{fit['t3_total_mb']:.0f} MB of 4096 "
          f"({'fits' if fit['t3_fits'] else 'DOES NOT FIT'})" for engine, fit in fits.items()),
    ]
    lines = [
        "## Load and faults (soak)",
        "",
        f"Servers of {results['workers']} workers x 1 thread, default limits (request read timeout "
        f"{results['read_timeout_s']} s, idle timeout {results['idle_timeout_s']} s). Verdict: "
        + "; ".join(verdicts) + ".",
        "",
        "### Memory per process and engine (MB)",
        "",
        f"One server per engine (`SERVE_ENGINE`). After the warm-up, and after {BATCH_ROUNDS} rounds of "
        f"{MAX_BATCH_IMAGES}-image JSON batches per worker (the largest request, `SERVE_MAX_BATCH_IMAGES`): "
        "a worker's peak. RSS counts shared pages in full, PSS splits them between the processes that "
        "share them.",
        "",
        "| engine | process | count | RSS after warm-up | PSS after warm-up | RSS peak | PSS peak |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for engine, memory in results["memory"].items():
        if "error" in memory:
            lines.append(f"| {engine} | not measured: {memory['error']} | | | | | |")
            continue
        for role, item in memory["after_batches"].items():
            warm = memory["after_warm_up"].get(role, {"rss_mb": float("nan"), "pss_mb": float("nan")})
            lines.append(f"| {engine} | {role} | {item['count']} | {warm['rss_mb']:.0f} | "
                         f"{warm['pss_mb']:.0f} | {item['rss_mb']:.0f} | {item['pss_mb']:.0f} |")
    lines += [
        "",
        "Each engine's worker peak against the per-worker budget `serving/settings.py` (`WORKER_MEMORY_MB`) "
        "uses to pick the default worker count, with "
        f"{settings.RESERVED_MEMORY_MB} MB reserved for the rest of the stack; an ml.t3.medium (2 vCPUs, "
        "4 GiB) with that default:",
        "",
        "| engine | worker peak RSS | budget | rest of the stack (measured) | ml.t3.medium workers "
        "| ml.t3.medium total |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for engine, fit in fits.items():
        lines.append(
            f"| {engine} | {fit['worker_peak_mb']:.0f} | {fit['budget_mb']} "
            f"({'within' if fit['within_budget'] else 'OVER'}) | {fit['others_mb']:.0f} | "
            f"{fit['t3_workers']} | {fit['t3_total_mb']:.0f} "
            f"({'fits' if fit['t3_fits'] else 'DOES NOT FIT'}) |"
        )
    lines += [
        "",
        f"### {len(loaded.outcomes)} mixed requests from {LOAD_THREADS} threads "
        f"(default engine: {results.get('served_by', '?')})",
        "",
        "Kinds in turn: a JPEG and the same in JSON (200), and bad inputs each with its status: empty "
        "body, not an image, truncated image, malformed JSON, bad base64 (400), CSV, no Content-Type "
        "(415), 6 MB + 1 byte (413). Meanwhile a client sent a body at 4 bytes/s and another held an "
        "idle connection.",
        "",
        "| answers | unexpected | seconds | requests/s | p50 of 200s (ms) | p99 of 200s (ms) |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {_counts(loaded.statuses())} | {len(loaded.unexpected)} | {loaded.seconds:.1f} | "
        f"{len(loaded.outcomes) / loaded.seconds:.1f} | {_ms(loaded.latencies(), 50)} | "
        f"{_ms(loaded.latencies(), 99)} |",
        "",
        f"Slow client: answered {slow.status if slow else '-'} after {slow.seconds:.1f} s "
        f"({slow.bytes_sent} bytes sent); still pending when the {len(loaded.outcomes)} requests were all "
        f"answered: {results['slow_pending_after_load']}. Idle connection closed after "
        f"{f'{idle:.1f} s' if idle is not None else 'never'}." if slow else "",
        "",
        f"### A worker SIGKILLed under load ({len(kill.during.outcomes)} requests, "
        f"{LOAD_THREADS // 2} threads)",
        "",
        "| answers | failed | failures | longest wait (s) | ready again after (s) | afterwards |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {_counts(kill.during.statuses())} | {len(failed)} | "
        f"{sorted({o.status for o in failed}) or '-'} | "
        f"{longest:.1f} | {f'{kill.recovered_s:.1f}' if kill.recovered_s is not None else 'never'} | "
        f"{_counts(kill.after.statuses())}; {len(kill.after.unexpected)} unexpected |",
        "",
        f"/ping while recovering: {_ping_summary(kill.pings)}. Server exit status on SIGTERM: "
        f"{results['exit_status']}.",
        "",
    ]
    return lines


def _ping_summary(pings: list[tuple[float, int, int]]) -> str:
    """Runs of equal (status, ready workers), e.g. "200 with 1 ready for 3.1 s, then 200 with 2"."""
    runs: list[list] = []
    for seconds, status, ready in pings:
        if runs and runs[-1][0] == (status, ready):
            runs[-1][2] = seconds
        else:
            runs.append([(status, ready), seconds, seconds])
    parts = [f"{status} with {ready} ready for {end - start:.1f} s" for (status, ready), start, end in runs]
    return ", then ".join(parts) if parts else "not watched"

