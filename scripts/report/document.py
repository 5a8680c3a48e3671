"""One self-contained HTML report of a training run: metrics, rule checks, plots, resource use.

It reads the smdebug output with smdebug trials (local folder or S3), runs the project's
custom rules on it (``scripts/report/rules.py``), draws loss, accuracy, gradient-norm and
weight-update plots and resource use, and for a SageMaker job adds the rule evaluations
SageMaker ran and its ProfilerReport.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scripts.report import data, render, rules
from scripts.report.sources import RunEvidence

# What to do when one of SageMaker's built-in rules finds an issue (ours carry their own advice).
BUILT_IN_RULE_ADVICE = {
    "Overtraining": "Validation loss stopped improving: stop earlier (early-stopping-patience).",
    "ExplodingTensor": "NaN or infinite values: lower the learning rate, clip gradients "
                       "(gradient-clip-norm), check the inputs.",
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
RULE_ADVICE = {rule.__name__: rule.ADVICE for rule in rules.RULES} | BUILT_IN_RULE_ADVICE


def advice_for(rule_configuration_name: str) -> str:
    """Advice for a rule named like ``Overfit``, ``CustomOverfit`` or ``ProfilerReport-1700000000``."""
    name = rule_configuration_name.removeprefix(rules.SAGEMAKER_NAME_PREFIX)
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
    outcomes: list[rules.RuleOutcome]
    plots: list[data.Plot]
    html: str

    def plot(self, key: str) -> data.Plot:
        return next(plot for plot in self.plots if plot.key == key)


def build_report(evidence: RunEvidence) -> Report:
    """Runs the rule checks, builds every plot's data and renders the HTML."""
    trial = evidence.trial
    outcomes = rules.run_rules(trial) if trial is not None else []
    plots = []
    if trial is not None:
        plots += [data.loss_plot(trial)]
    if evidence.metrics:
        plots += [data.accuracy_plot(evidence.metrics)]
    if trial is not None:
        plots += [data.gradient_norm_plot(trial), data.weight_update_ratio_plot(trial)]
    if evidence.resource_samples:
        plots += [data.resource_plot(evidence.resource_samples)]
    summary = data.resource_summary(evidence.resource_samples)
    html = render.render_html(
        evidence, outcomes, plots, job_rule_rows(evidence.job_rule_statuses),
        summary, data.resource_findings(summary),
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
