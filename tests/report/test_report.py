"""The report of a local run: produced, self-contained, read at a glance, and its plots show what was
really logged; a real browser renders it without a broken image or a console error."""

from __future__ import annotations

import base64
import html
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from smdebug.core.modes import ModeKeys
from smdebug.trials import create_trial

from scripts.report import browser, document, profiler_rules, render, rules, summary
from scripts.report.sources import (
    RESOURCES_PATH,
    STEP_TIMINGS_PATH,
    load_local_run,
    read_resource_samples,
    read_step_timings,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ["loss", "accuracy", "step_times", "resources", "gradient_norms", "weight_update_ratios"]


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
    return create_trial(str(healthy_run / "output" / "data" / "tensors"))


def drawn_lines(plot) -> dict[str, np.ndarray]:
    """What the figure really draws: label -> (n, 2) array of points."""
    axes = render.figure(plot).axes[0]
    return {line.get_label(): line.get_xydata() for line in axes.get_lines()}


def drawn_heatmap(plot) -> tuple[list[str], list[str], np.ma.MaskedArray]:
    """What the heatmap figure really draws: row labels, column tick labels, the coloured matrix."""
    axes = render.figure(plot).axes[0]
    rows = [label.get_text() for label in axes.get_yticklabels()]
    columns = [label.get_text() for label in axes.get_xticklabels()]
    return rows, columns, axes.images[0].get_array()


def test_the_report_is_one_html_file_with_every_plot_embedded(healthy_report):
    built, path = healthy_report
    page = path.read_text()
    assert page == built.html and page.startswith("<!doctype html>")
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert [plot.key for plot in built.plots] == PLOTS
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


def test_gradient_norms_are_a_heatmap_of_layer_by_step(healthy_report, trial):
    built, _ = healthy_report
    heatmap = built.plot("gradient_norms")
    names = trial.tensor_names(collection="gradients")
    assert sorted(heatmap.rows) == sorted(name.removeprefix("gradient/") for name in names)
    assert len(names) > 10  # one row each: no legend of a dozen lines
    matrix = heatmap.matrix()
    for name in names:
        tensor = trial.tensor(name)
        row = heatmap.rows.index(name.removeprefix("gradient/"))
        for step in tensor.steps():
            column = heatmap.columns.index(step)
            assert matrix[row, column] == pytest.approx(np.linalg.norm(tensor.value(step)), rel=1e-5)
    rows, _, drawn = drawn_heatmap(heatmap)
    np.testing.assert_allclose(drawn.filled(np.nan), matrix, rtol=1e-6)  # every cell is coloured
    # Labelled without the network's class name, layers in order; the extremes named under it.
    assert rows == [row.removeprefix("ResNet_") for row in heatmap.rows] and "layer4.0.conv1.weight" in rows
    assert heatmap.notes[0].startswith("largest median gradient norm: ")


def test_weight_update_heatmap_shows_the_relative_change_between_saved_training_steps(healthy_report, trial):
    built, _ = healthy_report
    heatmap = built.plot("weight_update_ratios")
    weights = trial.tensor_names(collection="weights")
    assert heatmap.rows and set(heatmap.rows) <= set(weights)
    frozen = len(weights) - len(heatmap.rows)  # fine-tune last-block: the other layers never change
    assert frozen > 0 and heatmap.notes[-1].startswith(f"{frozen} weight tensors did not change")
    name = heatmap.rows[0]
    tensor = trial.tensor(name)
    steps = tensor.steps(mode=ModeKeys.TRAIN)
    values = [np.asarray(tensor.value(step, mode=ModeKeys.TRAIN), dtype=np.float64) for step in steps]
    expected = {
        trial.global_step(ModeKeys.TRAIN, step): np.linalg.norm(now - before) / np.linalg.norm(before)
        for step, before, now in zip(steps[1:], values[:-1], values[1:], strict=True)
    }
    drawn = dict(zip(heatmap.columns, heatmap.matrix()[0], strict=True))
    assert drawn == pytest.approx(expected, rel=1e-6)
    assert all(0 < ratio < 1 for ratio in expected.values())


def test_step_time_plot_draws_each_training_steps_duration_and_wait_for_data(healthy_report, healthy_run):
    built, page = healthy_report
    steps = read_step_timings((healthy_run / STEP_TIMINGS_PATH).read_text(), "timings")
    lines = drawn_lines(built.plot("step_times"))
    np.testing.assert_allclose(lines["step"], [(s["step"], s["step_s"]) for s in steps])
    np.testing.assert_allclose(lines["waiting for data"], [(s["step"], s["wait_s"]) for s in steps])
    assert f"<td>training steps</td><td>{len(steps)}</td>" in page.read_text()


def test_resource_plot_and_table_show_the_samples_the_run_took(healthy_report, healthy_run):
    built, path = healthy_report
    samples = [json.loads(line) for line in (healthy_run / RESOURCES_PATH).read_text().splitlines()]
    lines = drawn_lines(built.plot("resources"))
    cpu = "CPU (% of all cores)"
    assert set(lines) == {cpu, "memory", "I/O wait"}  # no GPU here: no GPU lines
    cpu_share = [(s["elapsed_s"], s["cpu_percent"] / s["cpu_count"]) for s in samples]
    np.testing.assert_allclose(lines[cpu], cpu_share)
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
    assert [outcome.rule for outcome in built.profiler_outcomes] == [
        rule.__name__ for rule in profiler_rules.PROFILER_RULES]
    for outcome in built.all_outcomes:  # each rule's row says what the rule found
        row = page[page.index(f">{outcome.rule}</span>"):]
        row = row[: row.index("</tr>")]
        if outcome.triggered:
            assert "issue found" in row and html.escape(outcome.advice) in row
        elif outcome.evaluated:
            assert "no issue" in row
        else:
            assert "not enough data" in row and html.escape(outcome.message) in row
    assert all(outcome.evaluated for outcome in built.all_outcomes), [
        (outcome.rule, outcome.message) for outcome in built.all_outcomes if not outcome.evaluated]


def test_the_verdict_comes_first_with_the_best_epoch_test_accuracy_and_what_to_change(
    healthy_report, overfit_run, no_learning_run, tmp_path
):
    built, path = healthy_report
    page = path.read_text()
    assert page.index("id='summary'") < page.index("<h2>Rule checks</h2>") < page.index("<h2>Plots</h2>")
    metrics = built.evidence.metrics
    best = next(e for e in metrics["epochs"] if e["epoch"] == metrics["best_epoch"])
    assert f"best epoch {best['epoch']} of 3" in page
    assert f"test accuracy {100 * metrics['test']['test_accuracy']:.1f}%" in page
    expected = summary.LEARNED if not any(o.triggered for o in built.all_outcomes) else built.summary.verdict
    assert f"Verdict: {expected}" in page

    overfit = document.write_report(load_local_run(overfit_run), tmp_path / "overfit.html")
    assert overfit.summary.verdict == summary.OVERFITTING
    assert overfit.summary.changes[0] == f"Overfit: {rules.Overfit.FIX}"
    assert "What to change" in overfit.html and html.escape(rules.Overfit.FIX) in overfit.html
    stuck = document.build_report(load_local_run(no_learning_run))
    assert stuck.summary.verdict == summary.NOT_LEARNING
    assert stuck.summary.changes[0] == f"LossNotDecreasing: {rules.LossNotDecreasing.FIX}"


def test_a_real_browser_renders_the_report_with_every_image_and_no_console_error(
    healthy_report, chromium, tmp_path
):
    built, path = healthy_report
    checked = browser.check_page(path, chromium)
    assert checked.problems == []
    assert len(checked.images) == len(built.plots) and all(image["width"] > 0 for image in checked.images)
    assert checked.png.startswith(PNG_MAGIC)
    (tmp_path / "report.png").write_bytes(checked.png)
    with Image.open(tmp_path / "report.png") as shot:
        assert shot.width >= browser.VIEWPORT_WIDTH and shot.height > 2000  # the whole page, not the window


def test_the_browser_check_catches_a_broken_image_and_a_script_error(chromium, tmp_path):
    page = tmp_path / "broken.html"
    good = (tmp_path / "dot.png")
    Image.new("RGB", (4, 4), "red").save(good)
    page.write_text(
        "<!doctype html><html><body><img alt='fine' src='dot.png'>"
        "<img alt='truncated' src='data:image/png;base64,iVBORw0KGgo='>"
        "<img alt='missing' src='missing.png'>"
        "<script>console.error('drawn wrong'); undefinedFunction();</script></body></html>"
    )
    problems = browser.check_page(page, chromium).problems
    text = "\n".join(problems)
    assert "image 'truncated' did not load" in text and "image 'missing' did not load" in text
    assert "console.error: drawn wrong" in text and "undefinedFunction" in text
    assert "'fine'" not in text
    result = subprocess.run([sys.executable, "-m", "scripts.report.browser", str(page)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "PROBLEM" in result.stdout
    assert (tmp_path / "broken.png").read_bytes().startswith(PNG_MAGIC)


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
    assert target.read_text().count("data:image/png;base64,") == len(PLOTS)
    assert "\nverdict: " in result.stdout  # first, after make's echo of the command


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
    assert "were not timed" in page and "Verdict: no verdict" in page
    assert built.plots == [] and built.outcomes == []
    assert not any(outcome.evaluated for outcome in built.profiler_outcomes)


def test_malformed_inputs_are_named_with_their_place():
    with pytest.raises(ValueError, match=r"usage.jsonl: line 2 is not JSON"):
        read_resource_samples('{"elapsed_s": 1}\n{oops\n', "usage.jsonl")
    with pytest.raises(ValueError, match="line 1 is not a resource sample"):
        read_resource_samples('{"cpu_percent": 3}\n', "usage.jsonl")
    with pytest.raises(ValueError, match=r"timings.jsonl: line 1 is not a step timing \(no wait_s, step_s\)"):
        read_step_timings('{"epoch": 1, "step": 0, "elapsed_s": 2}\n', "timings.jsonl")


def test_make_report_writes_next_to_the_run_by_default(overfit_run):
    result = make_report(f"RUN={overfit_run}")
    assert result.returncode == 0, result.stderr
    assert f"report written: {overfit_run / 'report.html'}" in result.stdout
