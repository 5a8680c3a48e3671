"""One self-contained HTML report of a training run: metrics, rule checks, plots, resource use.

    python -m scripts.report --run OUT_DIR --out report.html       # a local run (make train-local)
    python -m scripts.report --job JOB_NAME --out report.html      # a SageMaker training job

It reads the smdebug output with smdebug trials (local folder or S3), runs the project's
custom rules on it (``scripts/debug_rules.py``), draws loss, accuracy, gradient-norm and
weight-update plots and resource use, and for a SageMaker job adds the rule evaluations
SageMaker ran and its ProfilerReport.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from scripts import custom_rules, debug_rules, report_data, report_render
from scripts.report_sources import RunEvidence, load_local_run, load_training_job

# What to do when one of SageMaker's built-in rules finds an issue (ours carry their own advice).
BUILT_IN_RULE_ADVICE = {
    "Overtraining": "Validation loss stopped improving: stop earlier (early-stopping-patience).",
    "ExplodingTensor": "NaN or infinite values: lower the learning rate, clip gradients, check the inputs.",
    "ClassImbalance": "Classes are unevenly represented: resample or weight the loss per class.",
    "LowGPUUtilization": "The GPU idles: raise batch-size or data-loader workers, or use a smaller instance.",
    "CPUBottleneck": "The CPU holds the GPU back: more data-loader workers, lighter preprocessing.",
    "IOBottleneck": "Waiting on data: copy data to local disk (File mode) or use faster storage.",
    "GPUMemoryIncrease": "GPU memory keeps growing: look for tensors kept across steps.",
    "BatchSize": "Utilisation is low: raise batch-size.",
    "Dataloader": "Data-loader workers do not match the vCPUs: set workers to the vCPU count.",
    "StepOutlier": "Some steps are far slower than others: look for periodic work (checkpoints, evaluation).",
    "MaxInitializationTime": "Slow start: install packages in the image, use FastFile input mode.",
    "ProfilerReport": "See the profiler report below.",
}
DEFAULT_TENSORS_CACHE = Path.home() / ".cache" / "sagemaker-classifier" / "debug-output"
RULE_ADVICE = {rule.__name__: rule.ADVICE for rule in debug_rules.RULES} | BUILT_IN_RULE_ADVICE


def advice_for(rule_configuration_name: str) -> str:
    """Advice for a rule named like ``Overfit``, ``CustomOverfit`` or ``ProfilerReport-1700000000``."""
    name = rule_configuration_name.removeprefix(custom_rules.CONFIGURATION_PREFIX)
    for known, advice in RULE_ADVICE.items():
        if name == known or name.startswith(known + "-"):
            return advice
    return ""


def job_rule_rows(statuses: list[dict]) -> list[tuple[str, str, str, str, str]]:
    """(rule, kind, status, details, advice) for each rule SageMaker evaluated; advice only for issues."""
    rows = []
    for status in statuses:
        name = status.get("RuleConfigurationName", "?")
        state = status.get("RuleEvaluationStatus", "?")
        advice = advice_for(name) if state == "IssuesFound" else ""
        rows.append((name, status.get("Kind", ""), state, status.get("StatusDetails", ""), advice))
    return rows


@dataclass
class Report:
    evidence: RunEvidence
    outcomes: list[debug_rules.RuleOutcome]
    plots: list[report_data.Plot]
    html: str

    def plot(self, key: str) -> report_data.Plot:
        return next(plot for plot in self.plots if plot.key == key)


def build_report(evidence: RunEvidence) -> Report:
    """Runs the rule checks, builds every plot's data and renders the HTML."""
    trial = evidence.trial
    outcomes = debug_rules.run_rules(trial) if trial is not None else []
    plots = []
    if trial is not None:
        plots += [report_data.loss_plot(trial)]
    if evidence.metrics:
        plots += [report_data.accuracy_plot(evidence.metrics)]
    if trial is not None:
        plots += [report_data.gradient_norm_plot(trial), report_data.weight_update_ratio_plot(trial)]
    if evidence.resource_samples:
        plots += [report_data.resource_plot(evidence.resource_samples)]
    summary = report_data.resource_summary(evidence.resource_samples)
    html = report_render.render_html(
        evidence, outcomes, plots, job_rule_rows(evidence.job_rule_statuses),
        summary, report_data.resource_findings(summary),
    )
    return Report(evidence, outcomes, plots, html)


def write_report(evidence: RunEvidence, path: str | Path) -> Report:
    report = build_report(evidence)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.html)
    return report


def print_outcomes(report: Report) -> None:
    """One line per rule: ok, not enough data, or ISSUE with its finding."""
    for outcome in report.outcomes:
        state = "ISSUE" if outcome.triggered else ("ok" if outcome.evaluated else "not enough data")
        print(f"  {outcome.rule:26s} {state}{': ' + outcome.message if outcome.triggered else ''}")


def _aws_clients(region: str | None):
    import boto3

    session = boto3.Session(region_name=region)
    if session.region_name is None:
        raise SystemExit("no AWS region: pass --region or set AWS_REGION / AWS_DEFAULT_REGION")
    # smdebug's S3 reader takes its region from AWS_REGION alone.
    os.environ.setdefault("AWS_REGION", session.region_name)
    return session.client("sagemaker"), session.client("s3")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="the OUT folder of a local training run")
    source.add_argument("--job", help="the name of a SageMaker training job")
    parser.add_argument("--out", type=Path, default=Path("report.html"), help="the HTML file to write")
    parser.add_argument("--region", help="AWS region of the job (default: your AWS configuration)")
    parser.add_argument("--tensors-cache", type=Path, default=DEFAULT_TENSORS_CACHE,
                        help="where a job's Debugger output is mirrored before it is read")
    args = parser.parse_args(argv)

    try:
        if args.run is not None:
            evidence = load_local_run(args.run)
        else:
            clients = _aws_clients(args.region)
            evidence = load_training_job(args.job, *clients, tensors_cache=args.tensors_cache)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"report: {error}") from error
    report = write_report(evidence, args.out)
    print_outcomes(report)
    print(f"report written: {args.out.resolve()}")


if __name__ == "__main__":
    main(sys.argv[1:])
