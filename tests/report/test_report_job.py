"""The report of a SageMaker training job, against a moto server standing in for AWS.

Jobs are created from the launcher's own requests (``scripts.aws.train_job``). A job as `make train`
starts it by default (no SageMaker Debugger) gets what a real job of ours uploads, made from a
real trainer run (``healthy_run``): ``model.tar.gz``, ``output.tar.gz`` (the trainer's evidence:
tensors, step timings, resource samples, epochs) and, under its checkpoint location, the
checkpoint and the live copy of that evidence. A job with SageMaker Debugger and our custom
rules gets a local run's tensors under the DebugHookConfig path, its artifacts and a
ProfilerReport under rule-output.
The report reads it all back through boto3 and smdebug. moto does not answer the rule
evaluation statuses, so those alone are added to DescribeTrainingJob's answer, at the AWS boundary.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import tarfile
import urllib.request
from pathlib import Path

import boto3
import numpy as np
import pytest
from report_helpers import hooked_run

from classifier import artifact
from scripts.aws import custom_rules, train_job
from scripts.report import document, profiler_rules, rules
from scripts.report.data import loss_plot
from scripts.report.rules import loss_at
from scripts.report.sources import RESOURCES_PATH, load_local_run, load_training_job, s3_join

REGION = "us-east-1"
BUCKET = "report-test-bucket"
OUTPUT_PATH = f"s3://{BUCKET}/training"
JOB = "classifier-train-report-test"
PROFILER_MARKER = "<h1>Profiler report of the fake job</h1>"


@pytest.fixture(scope="module")
def aws_env(moto_url, tmp_path_factory):
    """A clean moto account and the environment that points boto3 (and smdebug's S3 reader) at it."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")).close()
    empty_config = tmp_path_factory.mktemp("aws") / "config"
    empty_config.write_text("")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "AWS_ENDPOINT_URL": moto_url, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_CONFIG_FILE": str(empty_config), "AWS_SHARED_CREDENTIALS_FILE": str(empty_config),
        }.items():
            patch.setenv(name, value)
        patch.delenv("AWS_PROFILE", raising=False)
        patch.delenv("AWS_SESSION_TOKEN", raising=False)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield moto_url


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its relative path: a folder as SageMaker packs it (at the root)."""
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    return {str(path.relative_to(folder)): path.read_bytes() for path in files}


def _job_request(name: str, debugger: bool = True, hyperparameters: dict | None = None) -> dict:
    """The launcher's CreateTrainingJob request for ``name``."""
    spec = train_job.TrainingJobSpec(
        job_name=name, image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/train:1",
        role_arn="arn:aws:iam::123456789012:role/SageMakerExecution", region=REGION,
        data_uri=f"s3://{BUCKET}/data", output_uri=OUTPUT_PATH, checkpoint_uri=f"s3://{BUCKET}/checkpoints/{name}",
        hyperparameters=hyperparameters or {"epochs": "3", "learning-rate": "0.1"}, debugger_save_interval=10,
        sagemaker_debugger=debugger,
    )
    return train_job.training_job_request(spec)


def _upload_tensors(s3, tensors: Path, uri: str) -> None:
    bucket, prefix = uri.removeprefix("s3://").split("/", 1)
    for path in tensors.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(tensors)}")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    return hooked_run(tmp_path_factory.mktemp("job") / "run", "healthy")


@pytest.fixture(scope="module")
def job(aws_env, local_run):
    """A 'finished' training job whose S3 outputs are those of a real local run."""
    s3 = boto3.client("s3")
    request = _job_request(JOB)
    source = custom_rules.upload_rules_source(s3, f"s3://{BUCKET}/rules/")
    request["DebugRuleConfigurations"] += custom_rules.debug_rule_configurations(
        source, REGION, rule_parameters={"Overfit": {"min_rise_percent": 5}})
    hook = request["DebugHookConfig"]
    hook["CollectionConfigurations"] = custom_rules.losses_every_step(hook["CollectionConfigurations"])
    boto3.client("sagemaker").create_training_job(**request)

    # Where SageMaker writes: <hook S3OutputPath>/<job>/debug-output, <output>/<job>/output/...
    _upload_tensors(s3, local_run / "output" / "tensors", s3_join(hook["S3OutputPath"], JOB, "debug-output"))
    model = {path.name: path.read_bytes() for path in (local_run / "model").iterdir()}
    s3.put_object(Bucket=BUCKET, Key=f"training/{JOB}/output/model.tar.gz", Body=_tar_gz(model))
    resources = (local_run / RESOURCES_PATH).read_bytes()
    s3.put_object(Bucket=BUCKET, Key=f"training/{JOB}/output/output.tar.gz",
                  Body=_tar_gz({"resource_usage.jsonl": resources}))
    s3.put_object(Bucket=BUCKET, Body=f"<html><body>{PROFILER_MARKER}</body></html>".encode(),
                  Key=f"training/{JOB}/rule-output/ProfilerReport/profiler-output/profiler-report.html")
    return JOB


def _with_rule_statuses(client):
    """Adds what moto leaves out of DescribeTrainingJob: SageMaker's verdict on each configured rule."""
    def verdict(name: str) -> dict:
        found = name in ("Overfit", "CustomOverfit")
        return {"RuleConfigurationName": name,
                "RuleEvaluationStatus": "IssuesFound" if found else "NoIssuesFound",
                "StatusDetails": "RuleEvaluationConditionMet" if found else ""}

    def add_statuses(parsed, **_):
        parsed["DebugRuleEvaluationStatuses"] = [
            verdict(rule["RuleConfigurationName"]) for rule in parsed.get("DebugRuleConfigurations", [])
        ]
        parsed["ProfilerRuleEvaluationStatuses"] = [
            {"RuleConfigurationName": "ProfilerReport", "RuleEvaluationStatus": "NoIssuesFound"},
        ]
    client.meta.events.register("after-call.sagemaker.DescribeTrainingJob", add_statuses)
    return client


def test_custom_rules_go_beside_the_launchers_built_in_ones_in_create_training_job(job):
    described = boto3.client("sagemaker").describe_training_job(TrainingJobName=job)
    configurations = {c["RuleConfigurationName"]: c for c in described["DebugRuleConfigurations"]}
    custom = {f"Custom{name}" for name in custom_rules.RULE_NAMES}
    assert custom <= set(configurations) and "Overfit" in configurations  # built-in and ours, no clash
    image = "864354269164.dkr.ecr.us-east-1.amazonaws.com/sagemaker-debugger-rule-evaluator:latest"
    for name in custom:
        parameters = configurations[name]["RuleParameters"]
        assert configurations[name]["RuleEvaluatorImage"] == image
        assert parameters["rule_to_invoke"] == name.removeprefix("Custom")
        assert parameters["source_s3_uri"] == f"s3://{BUCKET}/rules/rules.py"
    assert configurations["CustomOverfit"]["RuleParameters"]["min_rise_percent"] == "5"
    collections = {c["CollectionName"]: c["CollectionParameters"]
                   for c in described["DebugHookConfig"]["CollectionConfigurations"]}
    assert collections["losses"]["save_interval"] == "1" and collections["weights"]["save_interval"] == "10"
    source = boto3.client("s3").get_object(Bucket=BUCKET, Key="rules/rules.py")["Body"].read()
    assert source == Path(rules.__file__).read_bytes()


@pytest.fixture(scope="module")
def job_evidence(job, tmp_path_factory):
    cache = tmp_path_factory.mktemp("tensors-cache")
    sagemaker = _with_rule_statuses(boto3.client("sagemaker"))
    return load_training_job(job, sagemaker, boto3.client("s3"), cache_dir=cache)


def _tensors_uri(job: str) -> str:
    described = boto3.client("sagemaker").describe_training_job(TrainingJobName=job)
    hook_path = described["DebugHookConfig"]["S3OutputPath"]
    return s3_join(hook_path, job, "debug-output")


def test_the_job_report_reads_tensors_metrics_and_resources_back_from_s3(job, job_evidence, local_run):
    evidence, local = job_evidence, load_local_run(local_run)
    assert evidence.tensors_location == _tensors_uri(job)
    assert evidence.trial.steps() == local.trial.steps()
    s3_losses, local_losses = loss_plot(evidence.trial), loss_plot(local.trial)
    for s3_series, local_series in zip(s3_losses.series, local_losses.series, strict=True):
        assert s3_series.x == local_series.x
        np.testing.assert_allclose(s3_series.y, local_series.y)
    assert evidence.metrics == json.loads((local_run / "model" / "metrics.json").read_text())
    assert evidence.resource_samples == local.resource_samples
    assert evidence.hyperparameters == {"epochs": "3", "learning-rate": "0.1"}
    assert evidence.status == "Completed"
    assert [note for note in evidence.notes if "were not timed" not in note] == []  # the tiny loop times none


def test_a_trial_can_also_read_the_job_tensors_from_s3_directly(job, local_run):
    evidence = load_training_job(job, boto3.client("sagemaker"), boto3.client("s3"))
    local = load_local_run(local_run).trial
    assert evidence.trial.path.rstrip("/") == _tensors_uri(job)
    assert evidence.trial.steps() == local.steps()
    # Reading S3 directly costs two requests per value: a few steps show it reads the same numbers.
    assert [loss_at(evidence.trial, step) for step in range(5)] == [loss_at(local, step) for step in range(5)]


def test_tensors_written_at_the_hook_path_itself_are_found_too(aws_env, local_run, tmp_path):
    name = "classifier-train-hook-path"
    request = _job_request(name)
    boto3.client("sagemaker").create_training_job(**request)
    hook_path = request["DebugHookConfig"]["S3OutputPath"]
    _upload_tensors(boto3.client("s3"), local_run / "output" / "tensors", hook_path)
    evidence = load_training_job(name, boto3.client("sagemaker"), boto3.client("s3"), cache_dir=tmp_path)
    assert evidence.tensors_location == hook_path
    assert evidence.trial.steps() == load_local_run(local_run).trial.steps()


def test_the_mirrored_evidence_is_not_fetched_twice(job, job_evidence):
    cache = Path(job_evidence.trial.path).parent.parent  # <cache>/<job>/debug-output
    before = {path: path.stat().st_mtime_ns for path in cache.rglob("*") if path.is_file()}
    load_training_job(job, boto3.client("sagemaker"), boto3.client("s3"), cache_dir=cache)
    assert before and {path: path.stat().st_mtime_ns for path in cache.rglob("*") if path.is_file()} == before


def test_the_job_report_shows_sagemakers_rule_verdicts_advice_and_the_profiler_report(job, job_evidence):
    evidence = job_evidence
    built = document.build_report(evidence)
    rows = {row[0]: row for row in document.job_rule_rows(evidence.job_rule_statuses)}
    issue = ("IssuesFound", "RuleEvaluationConditionMet", rules.Overfit.ADVICE)
    assert rows["Overfit"][2:] == rows["CustomOverfit"][2:] == issue
    assert rows["VanishingGradient"][2:] == rows["CustomVanishingGradient"][2:] == ("NoIssuesFound", "", "")
    assert rows["ProfilerReport"][1:3] == ("Profiler", "NoIssuesFound")
    assert evidence.profiler_report_uri == (
        f"{OUTPUT_PATH}/{job}/rule-output/ProfilerReport/profiler-output/profiler-report.html"
    )
    assert "&lt;h1&gt;Profiler report of the fake job&lt;/h1&gt;" in built.html  # embedded in an iframe
    assert [plot.key for plot in built.plots] == [
        "loss", "accuracy", "resources", "gradient_norms", "weight_update_ratios",
    ]
    assert "train:progress" in built.html  # moto's FinalMetricDataList, shown as SageMaker reports it


def test_make_report_job_writes_the_report_of_a_job(job, tmp_path):
    target = tmp_path / "job.html"
    arguments = [f"JOB={job}", f"REPORT={target}", f"REPORT_CACHE={tmp_path / 'cache'}"]
    result = subprocess.run(["make", "--no-print-directory", "report", *arguments],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"report written: {target}" in result.stdout
    assert target.read_text().count("data:image/png;base64,") == 5
    assert (tmp_path / "cache" / job / "debug-output" / "training_job_end.ts").is_file()


def test_a_job_without_debugger_output_or_artifacts_gets_a_report_saying_so(aws_env):
    sagemaker = boto3.client("sagemaker")
    sagemaker.create_training_job(**_job_request("classifier-train-bare", debugger=False))
    evidence = load_training_job("classifier-train-bare", sagemaker, boto3.client("s3"))
    assert evidence.trial is None and evidence.metrics is None and evidence.resource_samples == []
    assert any("no tensors: the job ran neither SageMaker Debugger" in note for note in evidence.notes)
    assert any("model.tar.gz not found" in note for note in evidence.notes)
    assert any("output.tar.gz nor a live copy at" in note for note in evidence.notes)
    built = document.build_report(evidence)
    assert "No tensor rule checks: the run has no Debugger tensors." in built.html
    assert "Verdict: no verdict" in built.html


# ---------------------------------------------------------------- a job as `make train` starts it
DEFAULT_JOB = "classifier-train-default"


def _upload_folder(s3, folder: Path, uri: str) -> None:
    bucket, prefix = uri.removeprefix("s3://").split("/", 1)
    for name, content in _folder_files(folder).items():
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=content)


def _create_default_job(name: str, run: Path, ended: bool) -> dict:
    """A job from the launcher's default request, with what our trainer's job uploads: the
    checkpoint folder (synced while it runs) and, once it has ended, model.tar.gz and output.tar.gz."""
    given = json.loads((run / "input" / "config" / "hyperparameters.json").read_text())
    request = _job_request(name, debugger=False, hyperparameters=given)
    assert not {"DebugHookConfig", "ProfilerConfig"} & set(request)  # what `make train` sends
    boto3.client("sagemaker").create_training_job(**request)
    s3 = boto3.client("s3")
    _upload_folder(s3, run / "checkpoints", request["CheckpointConfig"]["S3Uri"])
    if ended:
        for what, folder in (("model", run / "model"), ("output", run / "output" / "data")):
            s3.put_object(Bucket=BUCKET, Key=f"training/{name}/output/{what}.tar.gz",
                          Body=_tar_gz(_folder_files(folder)))
    return request


@pytest.fixture(scope="module")
def default_job(aws_env, healthy_run):
    """The healthy real run (tests/report/conftest.py) as a job `make train` started."""
    _create_default_job(DEFAULT_JOB, healthy_run, ended=True)
    return DEFAULT_JOB


def test_make_report_job_reports_a_job_without_debugger_in_full(default_job, healthy_run, tmp_path):
    target = tmp_path / "job.html"
    result = subprocess.run(
        ["make", "--no-print-directory", "report", f"JOB={default_job}", f"REPORT={target}",
         f"REPORT_CACHE={tmp_path / 'cache'}"], capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    page = target.read_text()
    plots = ["loss", "accuracy", "step_times", "resources", "gradient_norms"]
    assert page.count("data:image/png;base64,") == len(plots)
    assert all(f"<figure id='{key}'>" in page for key in plots)
    # 18 steps, weights saved every 25: one save, so no update ratio, and the page says why.
    assert "needs the weights of two training steps" in page
    every_rule = [rule.__name__ for rule in (*rules.RULES, *profiler_rules.PROFILER_RULES)]
    for rule in every_rule:  # each rule gave its verdict, printed and in the page
        assert re.search(rf"^  {rule} +(ok|ISSUE)", result.stdout, flags=re.MULTILINE), result.stdout
    assert "not enough data" not in page and "Verdict: " in page
    extracted = tmp_path / "cache" / default_job / "output-data"
    assert (extracted / artifact.STEP_TIMINGS_FILE).read_bytes() == (
        healthy_run / "output" / "data" / artifact.STEP_TIMINGS_FILE).read_bytes()


def test_the_job_report_judges_as_the_local_report_of_the_same_run(default_job, healthy_run, tmp_path):
    sagemaker, s3 = boto3.client("sagemaker"), boto3.client("s3")
    evidence = load_training_job(default_job, sagemaker, s3, cache_dir=tmp_path)
    local = load_local_run(healthy_run)
    assert evidence.metrics == local.metrics and evidence.step_timings == local.step_timings
    assert evidence.resource_samples == local.resource_samples
    assert evidence.trial.steps() == local.trial.steps()
    assert evidence.evidence_location == f"{OUTPUT_PATH}/{default_job}/output/output.tar.gz"
    job_report, local_report = document.build_report(evidence), document.build_report(local)
    assert job_report.all_outcomes == local_report.all_outcomes
    assert job_report.summary == local_report.summary


def test_a_running_job_is_reported_from_the_live_copy_beside_its_checkpoint(aws_env, healthy_run, tmp_path):
    name = "classifier-train-running"
    request = _create_default_job(name, healthy_run, ended=False)
    evidence = load_training_job(name, boto3.client("sagemaker"), boto3.client("s3"), cache_dir=tmp_path)
    live = f"{request['CheckpointConfig']['S3Uri']}/{artifact.LIVE_EVIDENCE_DIR}"
    assert evidence.evidence_location == live
    assert any(f"read the live copy at {live}" in note for note in evidence.notes)
    local = load_local_run(healthy_run)
    assert evidence.step_timings == local.step_timings and evidence.trial.steps() == local.trial.steps()
    # No metrics.json yet: the epochs so far, from the evidence; no test accuracy.
    assert evidence.metrics == {"epochs": local.metrics["epochs"], "best_epoch": local.metrics["best_epoch"]}
    built = document.build_report(evidence)
    assert "no test accuracy (the run has not finished)" in built.summary.facts
    assert all(outcome.evaluated for outcome in built.all_outcomes)
