"""The report of a local run: produced, self-contained, and its plots show what was really logged."""

from __future__ import annotations

import base64
import html
import json
import re
import subprocess

import numpy as np
import pytest
from smdebug.core.modes import ModeKeys
from smdebug.trials import create_trial

from scripts.report import document, render, rules
from scripts.report.sources import RESOURCES_PATH, load_local_run, read_resource_samples

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"




@pytest.fixture(scope="module")
def healthy_run(trained_run):
    """The suite's one shared real training run (tests/conftest.py)."""
    return trained_run


@pytest.fixture(scope="module")
def healthy_report(healthy_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("html") / "report.html"
    return document.write_report(load_local_run(healthy_run), path), path


@pytest.fixture(scope="module")
def trial(healthy_run):
    return create_trial(str(healthy_run / "output" / "tensors"))


def drawn_lines(plot) -> dict[str, np.ndarray]:
    """What the figure really draws: label -> (n, 2) array of points."""
    axes = render.figure(plot).axes[0]
    return {line.get_label(): line.get_xydata() for line in axes.get_lines()}


def test_the_report_is_one_html_file_with_every_plot_embedded(healthy_report):
    built, path = healthy_report
    page = path.read_text()
    assert page == built.html and page.startswith("<!doctype html>")
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert [plot.key for plot in built.plots] == [
        "loss", "accuracy", "gradient_norms", "weight_update_ratios", "resources",
    ]
    assert len(images) == len(built.plots)
    assert all(base64.b64decode(image).startswith(PNG_MAGIC) for image in images)
    assert "http://" not in page and "https://" not in page  # nothing to fetch: it opens offline


def test_loss_plot_draws_the_losses_the_hook_saved(healthy_report, trial):
    built, _ = healthy_report
    [loss_name] = trial.tensor_names(collection="losses")
    tensor = trial.tensor(loss_name)
    lines = drawn_lines(built.plot("loss"))
    for label, mode in (("train", ModeKeys.TRAIN), ("eval", ModeKeys.EVAL)):
        expected = [
            (trial.global_step(mode, step), float(tensor.value(step, mode=mode)))
            for step in tensor.steps(mode=mode)
        ]
        assert len(expected) >= 3
        np.testing.assert_allclose(lines[label], expected, rtol=1e-6)


def test_accuracy_plot_draws_the_epochs_of_metrics_json(healthy_report, healthy_run):
    built, _ = healthy_report
    epochs = json.loads((healthy_run / "model" / "metrics.json").read_text())["epochs"]
    lines = drawn_lines(built.plot("accuracy"))
    np.testing.assert_allclose(lines["train"], [(e["epoch"], e["train_accuracy"]) for e in epochs])
    np.testing.assert_allclose(lines["validation"], [(e["epoch"], e["valid_accuracy"]) for e in epochs])
    top5 = [(e["epoch"], e["valid_top5_accuracy"]) for e in epochs]
    np.testing.assert_allclose(lines["validation top-5"], top5)


def test_gradient_norm_plot_draws_each_layers_saved_gradient_norm(healthy_report, trial):
    built, _ = healthy_report
    lines = drawn_lines(built.plot("gradient_norms"))
    names = trial.tensor_names(collection="gradients")
    assert set(lines) == {name.removeprefix("gradient/") for name in names}
    for name in names:
        tensor = trial.tensor(name)
        expected = [(step, np.linalg.norm(tensor.value(step))) for step in tensor.steps()]
        np.testing.assert_allclose(lines[name.removeprefix("gradient/")], expected, rtol=1e-5)


def test_weight_update_plot_draws_the_relative_change_between_saved_training_steps(healthy_report, trial):
    built, _ = healthy_report
    lines = drawn_lines(built.plot("weight_update_ratios"))
    weights = trial.tensor_names(collection="weights")
    drawn = sorted(lines)
    assert drawn and set(drawn) <= set(weights)
    frozen = len(weights) - len(drawn)  # fine-tune last-block: the other layers never change
    assert frozen > 0 and built.plot("weight_update_ratios").notes[0].startswith(f"{frozen} weight tensors")
    tensor = trial.tensor(drawn[0])
    steps = tensor.steps(mode=ModeKeys.TRAIN)
    values = [np.asarray(tensor.value(step, mode=ModeKeys.TRAIN), dtype=np.float64) for step in steps]
    expected = [
        (trial.global_step(ModeKeys.TRAIN, step), np.linalg.norm(now - before) / np.linalg.norm(before))
        for step, before, now in zip(steps[1:], values[:-1], values[1:], strict=True)
    ]
    np.testing.assert_allclose(lines[drawn[0]], expected, rtol=1e-6)
    assert all(0 < ratio < 1 for _, ratio in expected)


def test_resource_plot_and_table_show_the_samples_the_run_took(healthy_report, healthy_run):
    built, path = healthy_report
    samples = [json.loads(line) for line in (healthy_run / RESOURCES_PATH).read_text().splitlines()]
    lines = drawn_lines(built.plot("resources"))
    cpu = "CPU (100 per core)"
    assert set(lines) == {cpu, "memory"}  # no GPU here: no GPU line
    np.testing.assert_allclose(lines[cpu], [(s["elapsed_s"], s["cpu_percent"]) for s in samples])
    np.testing.assert_allclose(lines["memory"], [(s["elapsed_s"], s["memory_percent"]) for s in samples])
    peak_memory_mb = max(s["memory_used_mb"] for s in samples)
    assert f"<td>memory_used_mb</td><td>{np.mean([s['memory_used_mb'] for s in samples]):.1f}</td>" \
           f"<td>{peak_memory_mb:.1f}</td>" in path.read_text()


def test_the_report_summarises_hyperparameters_metrics_and_rule_outcomes(healthy_report, healthy_run):
    built, path = healthy_report
    page = path.read_text()
    metrics = json.loads((healthy_run / "model" / "metrics.json").read_text())
    for name, value in metrics["hyperparameters"].items():
        assert f"<td>{html.escape(name)}</td><td>{html.escape(str(value))}</td>" in page
    assert f"<td>{metrics['test']['test_accuracy']:.4g}</td>" in page
    assert f"<b>{metrics['best_epoch']}</b> (best)" in page
    assert [outcome.rule for outcome in built.outcomes] == [rule.__name__ for rule in rules.RULES]
    for outcome in built.outcomes:  # each rule's row says what the rule found
        row = page[page.index(f">{outcome.rule}</span>"):]
        row = row[: row.index("</tr>")]
        if outcome.triggered:
            assert "issue found" in row and html.escape(outcome.advice) in row
        elif outcome.evaluated:
            assert "no issue" in row
        else:
            assert "not enough data" in row and html.escape(outcome.message) in row


def test_an_overfit_run_reports_the_finding_and_its_advice(overfit_run, tmp_path):
    built = document.write_report(load_local_run(overfit_run), tmp_path / "report.html")
    [finding] = [outcome for outcome in built.outcomes if outcome.triggered]
    assert finding.rule == "Overfit"
    page = (tmp_path / "report.html").read_text()
    assert html.escape(rules.Overfit.ADVICE) in page
    assert html.escape(finding.message) in page and "issue found" in page
    # One training step an epoch, weights saved every 25 steps: one saved step, no ratio to draw.
    updates = built.plot("weight_update_ratios")
    assert updates.empty and "needs the weights of two training steps" in updates.notes[0]
    assert "nothing was recorded for this plot" in page


def test_make_report_writes_the_file_and_prints_its_path(healthy_run, tmp_path):
    target = tmp_path / "sub" / "run.html"
    result = make_report(f"RUN={healthy_run}", f"REPORT={target}")
    assert result.returncode == 0, result.stderr
    assert f"report written: {target}" in result.stdout
    assert target.read_text().count("data:image/png;base64,") == 5


def make_report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "report", *args],
                          capture_output=True, text=True, timeout=300)


def test_make_report_without_a_run_or_job_says_how_to_call_it():
    result = make_report()
    assert result.returncode != 0 and "usage: make report RUN=" in result.stderr


def test_a_missing_run_folder_is_named(tmp_path):
    result = make_report(f"RUN={tmp_path / 'nope'}", f"REPORT={tmp_path / 'r.html'}")
    assert result.returncode != 0
    assert f"run folder not found: {tmp_path / 'nope'}" in result.stderr
    assert not (tmp_path / "r.html").exists()


def test_a_run_that_failed_early_still_gets_a_report_that_says_what_is_missing(tmp_path):
    out = tmp_path / "failed"
    (out / "output").mkdir(parents=True)
    (out / "output" / "failure").write_text("ValueError: no images in train/\n")
    built = document.write_report(load_local_run(out), tmp_path / "r.html")
    page = built.html
    assert "status <b>Failed</b>" in page and "no images in train/" in page
    assert "no model/metrics.json" in page and "no Debugger output" in page and "not sampled" in page
    assert built.plots == [] and built.outcomes == []


def test_malformed_inputs_are_named_with_their_place():
    with pytest.raises(ValueError, match=r"usage.jsonl: line 2 is not JSON"):
        read_resource_samples('{"elapsed_s": 1}\n{oops\n', "usage.jsonl")
    with pytest.raises(ValueError, match="line 1 is not a resource sample"):
        read_resource_samples('{"cpu_percent": 3}\n', "usage.jsonl")


def test_make_report_writes_next_to_the_run_by_default(overfit_run):
    result = make_report(f"RUN={overfit_run}")
    assert result.returncode == 0, result.stderr
    assert f"report written: {overfit_run / 'report.html'}" in result.stdout
