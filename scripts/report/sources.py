"""Collect what a training run left behind, from a local OUT folder or a SageMaker training job.

The trainer keeps its evidence in the output data folder (``classifier.evidence``): resource
samples, step timings, the epochs so far and, without SageMaker Debugger, its own smdebug hook's
tensors. A local run's OUT folder is laid out like /opt/ml after a job (``scripts/local/opt_ml.py``):
``model/metrics.json``, ``output/success|failure`` and that folder, ``output/data/``.

A SageMaker job keeps the same things in S3. The model artifact (``model.tar.gz``) holds
``metrics.json``; ``output.tar.gz`` holds the output data folder once the job has ended (completed,
failed or stopped); while it runs, the live copy of that folder is under the job's checkpoint
location (``<CheckpointConfig.S3Uri>/evidence``). A job with SageMaker Debugger has its tensors
under ``<DebugHookConfig.S3OutputPath>/<job>/debug-output`` (or the hook path itself) and its rule
outputs (the ProfilerReport's HTML) under ``<output path>/<job>/rule-output``. A job's S3 evidence
is mirrored to a local cache folder and read from there.
Whatever is missing becomes a note in the report rather than an error.
"""

from __future__ import annotations

import atexit
import json
import math
import shutil
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from smdebug.trials import create_trial

from classifier.artifact import (
    EPOCHS_FILE,
    LIVE_EVIDENCE_DIR,
    METRICS_FILE,
    RESOURCE_USAGE_FILE,
    STEP_TIMINGS_FILE,
    TENSORS_DIR,
)
from classifier.step_timing import FIELDS as STEP_TIMING_FIELDS

EVIDENCE_DIR = "output/data"  # in a local run's OUT folder
RESOURCES_PATH = f"{EVIDENCE_DIR}/{RESOURCE_USAGE_FILE}"
STEP_TIMINGS_PATH = f"{EVIDENCE_DIR}/{STEP_TIMINGS_FILE}"
# Where a SageMaker Debugger hook config (input/config/debughookconfig.json) makes the hook write.
DEBUGGER_TENSORS_DIR = "output/tensors"
PROFILER_REPORT_SUFFIX = "profiler-output/profiler-report.html"


@dataclass
class RunEvidence:
    """Everything the report is made from; ``notes`` says what could not be found and why."""

    name: str
    location: str
    status: str
    failure_reason: str = ""
    hyperparameters: dict[str, str] = field(default_factory=dict)
    metrics: dict | None = None  # metrics.json
    final_metrics: dict[str, float] = field(default_factory=dict)  # SageMaker's FinalMetricDataList
    trial: object | None = None  # smdebug trial
    tensors_location: str = ""
    evidence_location: str = ""  # where the trainer's evidence (output data folder) was read
    resource_samples: list[dict] = field(default_factory=list)
    step_timings: list[dict] = field(default_factory=list)
    job_rule_statuses: list[dict] = field(default_factory=list)  # SageMaker's rule evaluations
    profiler_report_uri: str = ""
    profiler_report_html: str = ""
    notes: list[str] = field(default_factory=list)


def read_json_lines(
    lines: str, source: str, required: tuple[str, ...] = (), what: str = "a record"
) -> list[dict]:
    """Parses a JSON Lines file; a malformed line is named with its place, not skipped silently."""
    records = []
    for number, line in enumerate(lines.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{source}: line {number} is not JSON: {error}") from error
        missing = [name for name in required if not isinstance(record, dict) or name not in record]
        if missing:
            raise ValueError(f"{source}: line {number} is not {what} (no {', '.join(missing)}): {line[:80]}")
        records.append(record)
    return records


def read_resource_samples(lines: str, source: str) -> list[dict]:
    """Parses ``resource_usage.jsonl`` (``classifier.resources``)."""
    return read_json_lines(lines, source, ("elapsed_s",), "a resource sample")


def read_step_timings(lines: str, source: str) -> list[dict]:
    """Parses ``step_timings.jsonl`` (``classifier.step_timing``)."""
    return read_json_lines(lines, source, STEP_TIMING_FIELDS, "a step timing")


def metrics_from_epochs(epochs: list[dict]) -> dict:
    """A metrics.json-like document from ``epochs.jsonl``: the epochs so far and the best one (no test)."""
    judged = [e for e in epochs if isinstance(e.get("valid_loss"), int | float)
              and math.isfinite(e["valid_loss"])]
    best = min(judged, key=lambda e: e["valid_loss"])["epoch"] if judged else None
    return {"epochs": epochs, "best_epoch": best}


def read_metrics(text: str, source: str) -> dict:
    try:
        metrics = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source} is not valid JSON: {error}") from error
    if not isinstance(metrics, dict) or not isinstance(metrics.get("epochs", []), list):
        raise ValueError(f"{source} does not hold the trainer's metrics (an object with an 'epochs' list)")
    return metrics


# ---------------------------------------------------------------- the trainer's evidence folder
def read_evidence_folder(folder: Path, evidence: RunEvidence, label: str) -> None:
    """Fills ``evidence`` from a copy of the trainer's output data folder (``classifier.evidence``);
    ``label`` names the folder in notes. Tensors are taken from it only if none were found yet."""
    evidence.evidence_location = label
    resources = folder / RESOURCE_USAGE_FILE
    if resources.is_file():
        source = f"{label}/{RESOURCE_USAGE_FILE}"
        evidence.resource_samples = read_resource_samples(resources.read_text(), source)
    else:
        evidence.notes.append(f"no {RESOURCE_USAGE_FILE} in {label}: resource use was not sampled")
    timings = folder / STEP_TIMINGS_FILE
    if timings.is_file():
        evidence.step_timings = read_step_timings(timings.read_text(), f"{label}/{STEP_TIMINGS_FILE}")
    else:
        evidence.notes.append(f"no {STEP_TIMINGS_FILE} in {label}: training steps were not timed")
    epochs = folder / EPOCHS_FILE
    if evidence.metrics is None and epochs.is_file():
        records = read_json_lines(epochs.read_text(), f"{label}/{EPOCHS_FILE}", ("epoch",), "an epoch")
        if records:
            evidence.metrics = metrics_from_epochs(records)
            evidence.notes.append(f"no {METRICS_FILE}: the epochs so far are from {label}/{EPOCHS_FILE}")
    tensors = folder / TENSORS_DIR
    if evidence.trial is None and _holds_trial(tensors):
        evidence.trial = create_trial(str(tensors))
        evidence.tensors_location = f"{label}/{TENSORS_DIR}"


def _holds_trial(folder: Path) -> bool:
    return (folder / "index").is_dir() and any((folder / "index").iterdir())


# ---------------------------------------------------------------- a local run
def load_local_run(out_dir: str | Path) -> RunEvidence:
    """What a local run's OUT folder holds."""
    out = Path(out_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"run folder not found: {out} (expected the OUT folder of a training run)")
    out = out.resolve()
    evidence = RunEvidence(name=out.name, location=str(out), status=_local_status(out))
    if (out / "output" / "failure").is_file():
        evidence.failure_reason = (out / "output" / "failure").read_text(errors="replace").strip()

    metrics_path = out / "model" / METRICS_FILE
    if metrics_path.is_file():
        evidence.metrics = read_metrics(metrics_path.read_text(), str(metrics_path))

    # A SageMaker Debugger hook config makes the hook write to output/tensors, not the evidence folder.
    debugger_tensors = out / DEBUGGER_TENSORS_DIR
    if _holds_trial(debugger_tensors):
        evidence.trial = create_trial(str(debugger_tensors))
        evidence.tensors_location = str(debugger_tensors)
    read_evidence_folder(out / EVIDENCE_DIR, evidence, str(out / EVIDENCE_DIR))
    if evidence.metrics is None:
        evidence.notes.append(f"no model/{METRICS_FILE} and no epochs recorded: the run saved no metrics")
    if evidence.trial is None:
        evidence.notes.append(
            f"no Debugger output in {EVIDENCE_DIR}/{TENSORS_DIR} or {DEBUGGER_TENSORS_DIR}: "
            "no tensors to plot or check"
        )
    evidence.hyperparameters = _local_hyperparameters(out, evidence.metrics)
    return evidence


def _local_status(out: Path) -> str:
    if (out / "output" / "success").is_file():
        return "Completed"
    if (out / "output" / "failure").is_file():
        return "Failed"
    return "Unknown (neither output/success nor output/failure)"


def _local_hyperparameters(out: Path, metrics: dict | None) -> dict[str, str]:
    if metrics and metrics.get("hyperparameters"):
        return {name: str(value) for name, value in metrics["hyperparameters"].items()}
    config = out / "input" / "config" / "hyperparameters.json"
    return json.loads(config.read_text()) if config.is_file() else {}


# ---------------------------------------------------------------- a SageMaker training job
def s3_join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(part.strip("/") for part in parts)])


def split_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def load_training_job(
    job_name: str, sagemaker_client, s3_client, cache_dir: str | Path | None = None
) -> RunEvidence:
    """What a SageMaker training job left: its description, metrics, evidence, tensors and rules.

    S3 evidence is mirrored to ``<cache_dir>/<job>/`` (files already there are kept) and read
    locally: ``output-data/`` (from ``output.tar.gz``) or ``live-evidence/`` (the checkpoint copy of
    a running job), and ``debug-output/`` for a job with SageMaker Debugger. Without ``cache_dir`` a
    temporary folder holds the evidence, and the Debugger tensors are read from S3 directly, which
    costs two requests per tensor value and step.
    """
    job = sagemaker_client.describe_training_job(TrainingJobName=job_name)
    evidence = RunEvidence(
        name=job_name,
        location=job["TrainingJobArn"],
        status=job["TrainingJobStatus"],
        failure_reason=job.get("FailureReason", ""),
        hyperparameters=dict(job.get("HyperParameters", {})),
        final_metrics={m["MetricName"]: float(m["Value"]) for m in job.get("FinalMetricDataList", [])},
        job_rule_statuses=[
            *({"Kind": "Debugger", **status} for status in job.get("DebugRuleEvaluationStatuses", [])),
            *({"Kind": "Profiler", **status} for status in job.get("ProfilerRuleEvaluationStatuses", [])),
        ],
    )
    local = Path(cache_dir) / job_name if cache_dir is not None else _temporary_folder()
    output_path = job["OutputDataConfig"]["S3OutputPath"]

    model_uri = job.get("ModelArtifacts", {}).get("S3ModelArtifacts", "")
    metrics_text = _tar_member_text(s3_client, model_uri, METRICS_FILE, evidence.notes) if model_uri else None
    if metrics_text is not None:
        evidence.metrics = read_metrics(metrics_text, f"{METRICS_FILE} in {model_uri}")

    hook_path = job.get("DebugHookConfig", {}).get("S3OutputPath")
    if hook_path:
        tensors_cache = local / "debug-output" if cache_dir is not None else None
        _read_debugger_tensors(s3_client, job_name, hook_path, tensors_cache, evidence)
    _read_job_evidence(s3_client, job, output_path, local, evidence)
    if evidence.trial is None and not hook_path:
        evidence.notes.append("no tensors: the job ran neither SageMaker Debugger nor the trainer's own hook")

    _find_profiler_report(s3_client, job, output_path, evidence)
    return evidence


def _temporary_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="report-job-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _read_debugger_tensors(
    s3_client, job_name: str, hook_path: str, cache: Path | None, evidence: RunEvidence
) -> None:
    # SageMaker writes under <S3OutputPath>/<job>/debug-output; a hook path that already names
    # the job's own folder is read as it is.
    candidates = [s3_join(hook_path, job_name, "debug-output"), hook_path]
    tensors_uri = next((uri for uri in candidates if _holds_tensors(s3_client, uri)), None)
    evidence.tensors_location = tensors_uri or candidates[0]
    if tensors_uri is None:
        evidence.notes.append(f"no Debugger output at {' or '.join(candidates)}")
    elif cache is None:
        evidence.trial = create_trial(tensors_uri)
    else:
        evidence.trial = create_trial(str(mirror_s3_prefix(s3_client, tensors_uri, cache)))


def _read_job_evidence(s3_client, job: dict, output_path: str, local: Path, evidence: RunEvidence) -> None:
    """The output data folder from ``output.tar.gz``, or, before the job has ended, its live copy."""
    job_name = job["TrainingJobName"]
    output_tar = s3_join(output_path, job_name, "output", "output.tar.gz")
    if extract_s3_tar(s3_client, output_tar, local / "output-data"):
        read_evidence_folder(local / "output-data", evidence, output_tar)
        return
    checkpoint_uri = job.get("CheckpointConfig", {}).get("S3Uri")
    live_uri = s3_join(checkpoint_uri, LIVE_EVIDENCE_DIR) if checkpoint_uri else None
    if live_uri and _holds_objects(s3_client, live_uri):
        evidence.notes.append(
            f"{output_tar} not found (the job has not ended?): read the live copy at {live_uri}, "
            "as of the last finished epoch"
        )
        folder = mirror_s3_prefix(s3_client, live_uri, local / "live-evidence")
        read_evidence_folder(folder, evidence, live_uri)
        return
    where = f" nor a live copy at {live_uri}" if live_uri else " (and the job has no CheckpointConfig)"
    evidence.notes.append(f"no {output_tar}{where}: no resource samples, step timings or epochs")


def extract_s3_tar(s3_client, tar_uri: str, target: Path) -> bool:
    """Streams a .tar.gz from S3 into ``target`` (plain files and folders only, nothing outside it);
    False if there is no such object. An extraction of the same object (ETag) is reused."""
    bucket, key = split_s3_uri(tar_uri)
    try:
        head = s3_client.head_object(Bucket=bucket, Key=key)
    except s3_client.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    marker = target.with_name(target.name + ".etag")
    if target.is_dir() and marker.is_file() and marker.read_text() == head["ETag"]:
        return True
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"]
    with tarfile.open(fileobj=body, mode="r|gz") as archive:
        archive.extractall(target, filter="data")
    marker.write_text(head["ETag"])
    return True


def mirror_s3_prefix(s3_client, uri: str, target: Path, workers: int = 8) -> Path:
    """Makes ``target`` a copy of every object under ``uri`` (same relative paths); returns ``target``.

    Objects already there with the same size are not fetched again, so a second report is quick;
    local files no longer in S3 are removed.
    """
    bucket, prefix = split_s3_uri(uri)
    prefix = prefix.rstrip("/") + "/"
    wanted, listed = [], set()
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            local = target / item["Key"][len(prefix):]
            listed.add(local)
            if not (local.is_file() and local.stat().st_size == item["Size"]):
                wanted.append((item["Key"], local))
    if target.is_dir():
        for stale in [path for path in target.rglob("*") if path.is_file() and path not in listed]:
            stale.unlink()

    def fetch(key_and_path: tuple[str, Path]) -> None:
        key, local = key_and_path
        local.parent.mkdir(parents=True, exist_ok=True)
        s3_client.download_file(bucket, key, str(local))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(fetch, wanted))
    return target


def _tar_member_text(s3_client, tar_uri: str, member_name: str, notes: list[str]) -> str | None:
    """Streams a .tar.gz from S3 and returns the text of the member called ``member_name``."""
    bucket, key = split_s3_uri(tar_uri)
    try:
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"]
    except s3_client.exceptions.NoSuchKey:
        notes.append(f"{tar_uri} not found: no {member_name}")
        return None
    with tarfile.open(fileobj=body, mode="r|gz") as archive:
        for member in archive:
            if member.isfile() and PurePosixPath(member.name).name == member_name:
                return archive.extractfile(member).read().decode()
    notes.append(f"{tar_uri} holds no {member_name}")
    return None


def _holds_objects(s3_client, uri: str) -> bool:
    bucket, prefix = split_s3_uri(uri)
    listing = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix.rstrip("/") + "/", MaxKeys=1)
    return listing["KeyCount"] > 0


def _holds_tensors(s3_client, uri: str) -> bool:
    """Whether smdebug output lies directly under ``uri`` (its ``index/`` folder)."""
    return _holds_objects(s3_client, s3_join(uri, "index"))


def _find_profiler_report(s3_client, job: dict, output_path: str, evidence: RunEvidence) -> None:
    """The ProfilerReport rule writes ``<rule output>/<rule name>/profiler-output/profiler-report.html``."""
    job_name = job["TrainingJobName"]
    prefixes = [s3_join(output_path, job_name, "rule-output")]
    profiler_path = job.get("ProfilerConfig", {}).get("S3OutputPath")
    if profiler_path:
        prefixes.append(s3_join(profiler_path, job_name, "rule-output"))
    rules = job.get("ProfilerRuleConfigurations", [])
    prefixes += [rule["S3OutputPath"] for rule in rules if rule.get("S3OutputPath")]
    for prefix in dict.fromkeys(prefixes):
        bucket, key_prefix = split_s3_uri(prefix)
        paginator = s3_client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=key_prefix.rstrip("/") + "/"):
            for item in page.get("Contents", []):
                if item["Key"].endswith(PROFILER_REPORT_SUFFIX):
                    evidence.profiler_report_uri = f"s3://{bucket}/{item['Key']}"
                    body = s3_client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                    evidence.profiler_report_html = body.decode(errors="replace")
                    return
    if any(status["Kind"] == "Profiler" for status in evidence.job_rule_statuses):
        evidence.notes.append("the ProfilerReport HTML was not found (yet) under " + ", ".join(prefixes))
