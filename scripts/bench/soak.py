"""The serving soak of ``make bench-serve``: the production-sized model under load and faults, and the
memory each part of the stack holds. Its section of ``benchmarks/serve.md`` is :func:`report_lines`.

1. memory: resident (RSS) and proportional (PSS) memory of every process after the warm-up and after
   batches of ``SERVE_MAX_BATCH_IMAGES`` images (a worker's peak), and what the default worker count
   of an ml.t3.medium (2 vCPUs, 4 GiB, the seeds' endpoint) needs;
2. load: mixed good and bad requests from many threads (``scripts.local.load``), while a client
   trickles a body and another holds an idle connection;
3. a worker SIGKILLed under load: failed requests, the longest wait, /ping, recovery.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from classifier import protocol
from scripts.local import load
from scripts.local.server import LocalServer

SOAK_WORKERS = 2  # one is killed; the other keeps serving
LOAD_REQUESTS = 400
LOAD_THREADS = 16
KILL_REQUESTS = 200
MAX_BATCH_IMAGES = 32  # inference.DEFAULT_MAX_BATCH_IMAGES: a worker's largest request
BATCH_ROUNDS = 3
T3_MEDIUM = {"cores": 2, "memory_mb": 4096}


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


def run_soak(model_dir: Path, work: Path, jpeg: bytes) -> dict:
    """The whole soak on one server (``SOAK_WORKERS`` workers x 1 torch thread, default limits)."""
    from serving import settings

    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": str(SOAK_WORKERS), "SERVE_TORCH_THREADS": "1"}
    server = LocalServer(model_dir, work / "server-soak.log", env)
    results: dict = {"workers": SOAK_WORKERS, "read_timeout_s": settings.DEFAULT_REQUEST_READ_TIMEOUT_SECONDS,
                     "idle_timeout_s": settings.DEFAULT_IDLE_TIMEOUT_SECONDS}
    try:
        server.watch_ping(lambda status, body: status == 200 and body["workers_ready"] == SOAK_WORKERS)
        print("soak: memory", flush=True)
        results["memory"] = measure_memory(server, jpeg)
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


def verdict(results: dict) -> str:
    """One line: whether the server took the load and the faults, and whether it fits an ml.t3.medium."""
    from serving import settings

    loaded, kill, peak = results["load"], results["kill"], results["memory"]["after_batches"]
    others = sum(item["rss_mb"] * item["count"] for role, item in peak.items() if role != "worker")
    t3_total = others + settings.default_workers(**_t3()) * peak["worker"]["rss_mb"]
    failed = [outcome for outcome in kill.during.outcomes if outcome.status != outcome.expected]
    ok = (not loaded.unexpected and kill.recovered_s is not None and not kill.after.unexpected
          and all(o.status and o.status >= 500 and o.json_error for o in failed)
          and results.get("slow") is not None and results["slow"].status == 408
          and results.get("idle") is not None and t3_total <= T3_MEDIUM["memory_mb"])
    return (f"load and faults {'passed' if ok else 'FAILED'}: {len(loaded.unexpected)} unexpected answers in "
            f"{len(loaded.outcomes)}, a killed worker cost {len(failed)} JSON 5xx, an ml.t3.medium with its "
            f"default workers needs {t3_total:.0f} of 4096 MB")


def _t3() -> dict[str, int]:
    return {"cpu_count": T3_MEDIUM["cores"], "memory_mb": T3_MEDIUM["memory_mb"]}


def report_lines(results: dict) -> list[str]:
    """The soak's section of benchmarks/serve.md, verdict first."""
    from serving import settings

    memory, loaded, kill = results["memory"], results["load"], results["kill"]
    peak = memory["after_batches"]
    worker_peak = peak["worker"]["rss_mb"]
    others = sum(item["rss_mb"] * item["count"] for role, item in peak.items() if role != "worker")
    t3_workers = settings.default_workers(**_t3())
    t3_total = others + t3_workers * worker_peak
    failed = [outcome for outcome in kill.during.outcomes if outcome.status != outcome.expected]
    longest = max(outcome.seconds for outcome in kill.during.outcomes)
    slow, idle = results.get("slow"), results.get("idle")
    verdicts = [
        f"{len(loaded.unexpected)} unexpected answers in {len(loaded.outcomes)} mixed requests",
        f"slow client: {slow.status} after {slow.seconds:.1f} s" if slow else "slow client: not measured",
        f"idle connection closed after {idle:.1f} s" if idle is not None else "idle connection: not closed",
        f"worker killed: {len(failed)} request(s) failed, all JSON 5xx: "
        f"{all(o.status and o.status >= 500 and o.json_error for o in failed)}; "
        f"back in {kill.recovered_s:.1f} s" if kill.recovered_s is not None else "worker killed: not back",
        f"ml.t3.medium with its default {t3_workers} worker(s): {t3_total:.0f} MB of 4096 "
        f"({'fits' if t3_total <= T3_MEDIUM['memory_mb'] else 'DOES NOT FIT'})",
    ]
    lines = [
        "## Load and faults (soak)",
        "",
        f"One server, {results['workers']} workers x 1 torch thread, default limits (request read timeout "
        f"{results['read_timeout_s']} s, idle timeout {results['idle_timeout_s']} s). Verdict: "
        + "; ".join(verdicts) + ".",
        "",
        "### Memory per process (MB)",
        "",
        f"After the warm-up, and after {BATCH_ROUNDS} rounds of {MAX_BATCH_IMAGES}-image JSON batches per "
        "worker (the largest request, `SERVE_MAX_BATCH_IMAGES`): a worker's peak. RSS counts shared pages "
        "in full, PSS splits them between the processes that share them.",
        "",
        "| process | count | RSS after warm-up | PSS after warm-up | RSS peak | PSS peak |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for role, item in peak.items():
        warm = memory["after_warm_up"].get(role, {"rss_mb": float("nan"), "pss_mb": float("nan")})
        lines.append(f"| {role} | {item['count']} | {warm['rss_mb']:.0f} | {warm['pss_mb']:.0f} | "
                     f"{item['rss_mb']:.0f} | {item['pss_mb']:.0f} |")
    lines += [
        "",
        f"A worker's peak RSS is {worker_peak:.0f} MB against the {settings.DEFAULT_WORKER_MEMORY_MB} MB "
        f"per worker that `serving/settings.py` budgets when it picks the default worker count "
        f"({'within' if worker_peak <= settings.DEFAULT_WORKER_MEMORY_MB else 'OVER'} the budget), "
        f"with {settings.RESERVED_MEMORY_MB} MB for the rest (measured: {others:.0f} MB). An ml.t3.medium "
        f"(2 vCPUs, 4 GiB) gets {t3_workers} worker(s): {t3_total:.0f} MB.",
        "",
        f"### {len(loaded.outcomes)} mixed requests from {LOAD_THREADS} threads",
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

