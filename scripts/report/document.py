"""One self-contained HTML report of a training run: verdict, rule checks, plots, metrics, resources.

It runs the project's tensor rules on the smdebug output (``scripts/report/rules.py``) and its
profiler rules on the trainer's own step timings, resource samples and epochs
(``scripts/report/profiler_rules.py``), sums them up in a verdict (``scripts/report/summary.py``),
draws loss, accuracy, step-time and resource plots and per-layer heatmaps, and for a SageMaker job
adds the rule evaluations SageMaker ran and its ProfilerReport.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scripts.report import data, profiler_rules, render, rules
from scripts.report.sources import RunEvidence
from scripts.report.summary import Summary, summarise

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
RULE_ADVICE = BUILT_IN_RULE_ADVICE | {
    rule.__name__: rule.ADVICE for rule in (*rules.RULES, *profiler_rules.PROFILER_RULES)
}


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
    summary: Summary
    outcomes: list[rules.RuleOutcome]  # the tensor rules' (on smdebug output)
    profiler_outcomes: list[rules.RuleOutcome]  # the profiler rules' (on the trainer's own evidence)
    plots: list[data.Plot | data.Heatmap]
    html: str

    def plot(self, key: str) -> data.Plot | data.Heatmap:
        return next(plot for plot in self.plots if plot.key == key)

    @property
    def all_outcomes(self) -> list[rules.RuleOutcome]:
        return [*self.outcomes, *self.profiler_outcomes]


def trainer_record(evidence: RunEvidence) -> profiler_rules.TrainerRecord:
    """What the profiler rules read, from the evidence; the hyperparameters are the trainer's own
    (defaults included) when metrics.json has them, else those the run or job was given."""
    metrics = evidence.metrics or {}
    hyperparameters = metrics.get("hyperparameters") or evidence.hyperparameters
    return profiler_rules.TrainerRecord(
        samples=evidence.resource_samples, steps=evidence.step_timings, epochs=metrics.get("epochs", []),
        hyperparameters={name: str(value) for name, value in hyperparameters.items()},
    )


def build_report(evidence: RunEvidence) -> Report:
    """Runs the rule checks, builds every plot's data, sums it up and renders the HTML."""
    trial = evidence.trial
    outcomes = rules.run_rules(trial) if trial is not None else []
    profiler_outcomes = profiler_rules.run_profiler_rules(trainer_record(evidence))
    summary = summarise([*outcomes, *profiler_outcomes], evidence.metrics, evidence.status)
    plots = []
    if trial is not None:
        plots += [data.loss_plot(trial)]
    if evidence.metrics:
        plots += [data.accuracy_plot(evidence.metrics)]
    if evidence.step_timings:
        plots += [data.step_time_plot(evidence.step_timings)]
    if evidence.resource_samples:
        plots += [data.resource_plot(evidence.resource_samples)]
    if trial is not None:
        plots += [data.gradient_norm_plot(trial), data.weight_update_ratio_plot(trial)]
    resources = data.resource_summary(evidence.resource_samples)
    html = render.render_html(
        evidence, summary, outcomes, profiler_outcomes, plots, job_rule_rows(evidence.job_rule_statuses),
        data.step_summary(evidence.step_timings), resources, data.resource_findings(resources),
    )
    return Report(evidence, summary, outcomes, profiler_outcomes, plots, html)


def write_report(evidence: RunEvidence, path: str | Path) -> Report:
    report = build_report(evidence)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.html)
    return report


def print_outcomes(report: Report) -> None:
    """The verdict, then one line per rule: ok, not enough data, or ISSUE with its finding."""
    summary = report.summary
    also = f" (also: {', '.join(summary.also)})" if summary.also else ""
    print(f"verdict: {summary.verdict}{also}: {summary.headline}")
    for change in summary.changes:
        print(f"  change: {change}")
    for outcome in report.all_outcomes:
        state = "ISSUE" if outcome.triggered else ("ok" if outcome.evaluated else "not enough data")
        print(f"  {outcome.rule:26s} {state}{': ' + outcome.message if outcome.triggered else ''}")
