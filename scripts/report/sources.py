"""Collect what a training run left behind, from a local OUT folder or a SageMaker training job.

A local run's OUT folder is laid out like /opt/ml after a job (``scripts/local/opt_ml.py``):
``model/metrics.json``, ``output/success|failure``, ``output/tensors/`` (smdebug) and
``output/data/resource_usage.jsonl``. A SageMaker job keeps the same things in S3: the
model artifact (``model.tar.gz`` holds ``metrics.json``), ``output.tar.gz`` (holds
``output/data``), the Debugger tensors under ``<DebugHookConfig.S3OutputPath>/<job>/debug-output``
(or the hook path itself, when it holds the tensors) and the rule outputs (the ProfilerReport's
HTML) under ``<output path>/<job>/rule-output``.
Whatever is missing becomes a note in the report rather than an error.
"""

from __future__ import annotations

import json
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from smdebug.trials import create_trial

from classifier.artifact import METRICS_FILE, RESOURCE_USAGE_FILE

TENSORS_DIR = "output/tensors"
RESOURCES_PATH = f"output/data/{RESOURCE_USAGE_FILE}"
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
    resource_samples: list[dict] = field(default_factory=list)
    job_rule_statuses: list[dict] = field(default_factory=list)  # SageMaker's rule evaluations
    profiler_report_uri: str = ""
    profiler_report_html: str = ""
    notes: list[str] = field(default_factory=list)


def read_resource_samples(lines: str, source: str) -> list[dict]:
    """Parses ``resource_usage.jsonl``; a malformed line is named, not skipped silently."""
    samples = []
    for number, line in enumerate(lines.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            sample = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{source}: line {number} is not JSON: {error}") from error
        if not isinstance(sample, dict) or "elapsed_s" not in sample:
            raise ValueError(f"{source}: line {number} is not a resource sample (no elapsed_s): {line[:80]}")
        samples.append(sample)
    return samples


def read_metrics(text: str, source: str) -> dict:
    try:
        metrics = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source} is not valid JSON: {error}") from error
    if not isinstance(metrics, dict) or not isinstance(metrics.get("epochs", []), list):
        raise ValueError(f"{source} does not hold the trainer's metrics (an object with an 'epochs' list)")
    return metrics


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
    else:
        evidence.notes.append(f"no model/{METRICS_FILE}: the run saved no metrics (did it finish?)")
    evidence.hyperparameters = _local_hyperparameters(out, evidence.metrics)

    tensors = out / TENSORS_DIR
    evidence.tensors_location = str(tensors)
    if tensors.is_dir() and any(tensors.iterdir()):
        evidence.trial = create_trial(str(tensors))
    else:
        evidence.notes.append(f"no Debugger output in {TENSORS_DIR}: no tensors to plot or check")

    resources = out / RESOURCES_PATH
    if resources.is_file():
        evidence.resource_samples = read_resource_samples(resources.read_text(), str(resources))
    else:
        evidence.notes.append(f"no {RESOURCES_PATH}: resource use was not sampled")
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
    job_name: str, sagemaker_client, s3_client, tensors_cache: str | Path | None = None
) -> RunEvidence:
    """What a SageMaker training job left: its description, metrics, tensors, resources and rules.

    With ``tensors_cache``, the Debugger output is first mirrored to ``<tensors_cache>/<job>``
    (in parallel, files already there are kept) and read as a local trial; without it, the
    trial reads S3 directly, which costs two requests per tensor value and step.
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
    output_path = job["OutputDataConfig"]["S3OutputPath"]

    model_uri = job.get("ModelArtifacts", {}).get("S3ModelArtifacts", "")
    metrics_text = _tar_member_text(s3_client, model_uri, METRICS_FILE, evidence.notes) if model_uri else None
    if metrics_text is not None:
        evidence.metrics = read_metrics(metrics_text, f"{METRICS_FILE} in {model_uri}")

    hook_path = job.get("DebugHookConfig", {}).get("S3OutputPath")
    if hook_path:
        # SageMaker writes under <S3OutputPath>/<job>/debug-output; a hook path that already
        # names the job's own folder is read as it is.
        candidates = [s3_join(hook_path, job_name, "debug-output"), hook_path]
        tensors_uri = next((uri for uri in candidates if _holds_tensors(s3_client, uri)), None)
        evidence.tensors_location = tensors_uri or candidates[0]
        if tensors_uri is None:
            evidence.notes.append(f"no Debugger output at {' or '.join(candidates)}")
        elif tensors_cache is None:
            evidence.trial = create_trial(tensors_uri)
        else:
            local = mirror_s3_prefix(s3_client, tensors_uri, Path(tensors_cache) / job_name)
            evidence.trial = create_trial(str(local))
    else:
        evidence.notes.append("the job has no DebugHookConfig: no tensors to plot or check")

    output_tar = s3_join(output_path, job_name, "output", "output.tar.gz")
    resources_text = _tar_member_text(s3_client, output_tar, RESOURCE_USAGE_FILE, evidence.notes)
    if resources_text is not None:
        source = f"{RESOURCE_USAGE_FILE} in {output_tar}"
        evidence.resource_samples = read_resource_samples(resources_text, source)

    _find_profiler_report(s3_client, job, output_path, evidence)
    return evidence


def mirror_s3_prefix(s3_client, uri: str, target: Path, workers: int = 8) -> Path:
    """Downloads every object under ``uri`` into ``target`` (same relative paths); returns ``target``.

    Objects already there with the same size are not fetched again, so a second report is quick.
    """
    bucket, prefix = split_s3_uri(uri)
    prefix = prefix.rstrip("/") + "/"
    wanted = []
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            local = target / item["Key"][len(prefix):]
            if not (local.is_file() and local.stat().st_size == item["Size"]):
                wanted.append((item["Key"], local))

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


def _holds_tensors(s3_client, uri: str) -> bool:
    """Whether smdebug output lies directly under ``uri`` (its ``index/`` folder)."""
    bucket, prefix = split_s3_uri(uri)
    listing = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix.rstrip("/") + "/index/", MaxKeys=1)
    return listing["KeyCount"] > 0


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
