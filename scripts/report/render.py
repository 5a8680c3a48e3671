"""Draw the report's plots (matplotlib, Agg) and write the one-file HTML report.

The page reads top down: the verdict and what to change, every rule's outcome, the plots (lines
for a few series, heatmaps for per-layer data), then the details (metrics, hyperparameters,
resource figures, what SageMaker itself evaluated).
"""

from __future__ import annotations

import base64
import html
import io
import math
from datetime import UTC, datetime

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from scripts.report.data import Heatmap, Plot, short_labels

LEGEND_ROWS = 18  # beyond this many series the legend wraps into more columns
MAX_X_TICKS = 12


def figure(plot: Plot | Heatmap) -> Figure:
    """The plot drawn on its own Figure (no pyplot state: safe in tests and threads)."""
    if isinstance(plot, Heatmap):
        return heatmap_figure(plot)
    columns = max(1, math.ceil(len(plot.series) / LEGEND_ROWS))
    fig = Figure(figsize=(8 + 2.2 * columns, 4.5), layout="constrained")
    axes = fig.subplots()
    # Past the default cycle's 10 colours, a colour map keeps every line distinguishable.
    colours = colormaps["viridis"](np.linspace(0, 0.95, len(plot.series))) if len(plot.series) > 10 else None
    for index, series in enumerate(plot.series):
        axes.plot(series.x, series.y, marker="." if len(series.x) < 40 else None, label=series.label,
                  color=colours[index] if colours is not None else None)
    if plot.log_y and any(y > 0 for s in plot.series for y in s.y):
        axes.set_yscale("log")
    axes.set(title=plot.title, xlabel=plot.xlabel, ylabel=plot.ylabel)
    axes.grid(alpha=0.3)
    if plot.series:
        fontsize = "x-small" if len(plot.series) > 6 else None
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=columns, fontsize=fontsize)
    return fig


def heatmap_figure(plot: Heatmap) -> Figure:
    """Layers down, steps across, the value as colour on a log scale; grey where nothing was saved
    (or the value is 0, which a log scale cannot show)."""
    rows = len(plot.rows)
    fig = Figure(figsize=(10, min(2.0 + 0.15 * rows, 14.0)), layout="constrained")
    axes = fig.subplots()
    matrix = np.ma.masked_invalid(plot.matrix())
    matrix = np.ma.masked_less_equal(matrix, 0.0)
    norm = LogNorm(vmin=matrix.min(), vmax=matrix.max()) if matrix.count() else None
    image = axes.imshow(matrix, aspect="auto", interpolation="nearest", norm=norm,
                        cmap=colormaps["viridis"].with_extremes(bad="#d9d9d9"))
    axes.set_yticks(range(rows), short_labels(plot.rows), fontsize=6 if rows > 30 else 8)
    ticks = sorted(set(np.linspace(0, len(plot.columns) - 1, min(len(plot.columns), MAX_X_TICKS))
                       .round().astype(int).tolist()))
    axes.set_xticks(ticks, [f"{plot.columns[i]:g}" for i in ticks])
    axes.set(title=plot.title, xlabel=plot.xlabel)
    fig.colorbar(image, ax=axes, label=plot.colorbar_label)
    return fig


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def _escape(value: object) -> str:
    return html.escape(str(value))


def _table(header: tuple[str, ...], rows: list[tuple[object, ...]]) -> str:
    """A table of already-escaped cells."""
    head = "".join(f"<th>{_escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _number(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{_escape(key)}: {_number(item)}" for key, item in value.items())
    return f"{value:.4g}" if isinstance(value, float) else _escape(value)


CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2rem; } .meta { color: #666; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.triggered { background: #fde2e1; } .ok { background: #e3f5e1; } .unknown { background: #f4f4f4; }
.note { color: #8a5a00; } figure { margin: 1rem 0; } figcaption { color: #555; font-size: 0.85rem; }
figure img { max-width: 100%; }
iframe { width: 100%; height: 800px; border: 1px solid #ccc; }
.summary { border: 2px solid #999; border-radius: 8px; padding: 0.6rem 1.2rem; margin: 1rem 0; }
.summary h2 { margin: 0.2rem 0; } .summary .also { color: #555; font-weight: normal; font-size: 1rem; }
.verdict-learned { border-color: #2e7d32; background: #f1f8f1; }
.verdict-overfitting, .verdict-bottlenecked { border-color: #b26a00; background: #fff8ec; }
.verdict-not-learning { border-color: #c62828; background: #fdf0f0; }
.verdict-no-verdict { border-color: #999; background: #f7f7f7; }
"""


def render_html(
    evidence,
    summary,
    tensor_outcomes,
    profiler_outcomes,
    plots: list[Plot | Heatmap],
    job_rule_rows: list[tuple[str, str, str, str, str]],
    step_summary: dict[str, float],
    resource_summary: dict[str, tuple[float, float]],
    resource_findings: list[str],
) -> str:
    """The self-contained report: every plot is a base64 PNG inside the page."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Training report: {_escape(evidence.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>Training report: {_escape(evidence.name)}</h1>",
        f"<p class='meta'>{_escape(evidence.location)} · status <b>{_escape(evidence.status)}</b> · "
        f"written {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}</p>",
        _summary_html(summary),
    ]
    if evidence.failure_reason:
        parts.append(f"<p class='note'>Failure reason: {_escape(evidence.failure_reason)}</p>")
    parts += [f"<p class='note'>{_escape(note)}</p>" for note in evidence.notes]

    parts.append("<h2>Rule checks</h2>")
    parts.append(_outcomes_html(
        tensor_outcomes, "Training rules",
        f"smdebug custom rules (scripts/report/rules.py) on the tensors in <code>"
        f"{_escape(evidence.tensors_location)}</code>",
        "No tensor rule checks: the run has no Debugger tensors.",
    ))
    parts.append(_outcomes_html(
        profiler_outcomes, "Profiler rules",
        "scripts/report/profiler_rules.py on the trainer's own step timings, resource samples and epochs"
        + (f" from <code>{_escape(evidence.evidence_location)}</code>" if evidence.evidence_location else ""),
        "No profiler rule checks.",
    ))
    if job_rule_rows:
        parts.append("<h3>Rules evaluated by SageMaker</h3>")
        parts.append(_table(("rule", "kind", "status", "details", "advice"),
                            [(_escape(r), _escape(k), _escape(s), _escape(d), _escape(a))
                             for r, k, s, d, a in job_rule_rows]))

    parts.append("<h2>Plots</h2>")
    for plot in plots:
        parts.append(_plot_html(plot))

    parts.append("<h2>Metrics</h2>")
    parts.append(_metrics_html(evidence))
    parts.append("<h2>Hyperparameters</h2>")
    rows = [(_escape(name), _escape(value)) for name, value in sorted(evidence.hyperparameters.items())]
    parts.append(f"<details><summary>{len(rows)} hyperparameters</summary>{_table(('name', 'value'), rows)}"
                 "</details>" if rows else "<p>none recorded</p>")

    parts.append("<h2>Training steps and resource use</h2>")
    if step_summary:
        parts.append(_table(("training steps", "value"),
                            [(_escape(key), _number(value)) for key, value in step_summary.items()]))
    if resource_summary:
        parts.append(_table(("measure", "mean", "max"),
                            [(_escape(key), f"{mean:.1f}", f"{peak:.1f}")
                             for key, (mean, peak) in resource_summary.items()]))
    parts += [f"<p class='note'>{_escape(finding)}</p>" for finding in resource_findings]
    if evidence.profiler_report_uri:
        embedded = html.escape(evidence.profiler_report_html, quote=True)
        parts.append(
            f"<h3>SageMaker profiler report</h3>"
            f"<p>From <code>{_escape(evidence.profiler_report_uri)}</code></p>"
            f"<details><summary>show it here</summary>"
            f"<iframe sandbox='allow-scripts' srcdoc=\"{embedded}\"></iframe></details>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _summary_html(summary) -> str:
    css = "verdict-" + summary.verdict.replace(" ", "-")
    also = f" <span class='also'>(also: {_escape(', '.join(summary.also))})</span>" if summary.also else ""
    facts = "".join(f"<li>{_escape(fact)}</li>" for fact in summary.facts)
    changes = "".join(f"<li>{_escape(change)}</li>" for change in summary.changes)
    return (
        f"<section class='summary {css}' id='summary'><h2>Verdict: {_escape(summary.verdict)}{also}</h2>"
        f"<p>{_escape(summary.headline)}</p>" + (f"<ul>{facts}</ul>" if facts else "")
        + (f"<p><b>What to change</b></p><ol>{changes}</ol>" if changes else "") + "</section>"
    )


def _metrics_html(evidence) -> str:
    parts = []
    metrics = evidence.metrics or {}
    epochs = metrics.get("epochs", [])
    if epochs:
        keys = [key for key in epochs[0] if key != "epoch"]
        best = metrics.get("best_epoch")
        rows = [
            ((f"<b>{e['epoch']}</b> (best)" if e["epoch"] == best else _escape(e["epoch"])),
             *(_number(e.get(key)) for key in keys))
            for e in epochs
        ]
        parts.append(_table(("epoch", *keys), rows))
    if metrics.get("test"):
        parts.append(_table(tuple(metrics["test"]), [tuple(_number(v) for v in metrics["test"].values())]))
    extra = {key: metrics[key] for key in ("num_classes", "bad_images") if key in metrics}
    if extra:
        parts.append(_table(("", "value"), [(_escape(k), _number(v)) for k, v in extra.items()]))
    if evidence.final_metrics:
        parts.append("<h3>Final metrics (SageMaker)</h3>")
        rows = [(_escape(name), _number(value)) for name, value in evidence.final_metrics.items()]
        parts.append(_table(("metric", "value"), rows))
    return "\n".join(parts) or "<p>no metrics recorded</p>"


def outcome_state(outcome) -> str:
    """``issue found (3 steps, first at step 12)``, ``no issue`` or ``not enough data (4 data points)``."""
    if outcome.triggered:
        if outcome.first_step is None:
            return "issue found"
        return f"issue found ({outcome.violations} steps, first at step {outcome.first_step})"
    if outcome.evaluated:
        return "no issue"
    return f"not enough data ({outcome.datapoints} data points)"


def _outcomes_html(outcomes, title: str, caption: str, empty: str) -> str:
    if not outcomes:
        return f"<h3>{_escape(title)}</h3><p>{_escape(empty)}</p>"
    rows = []
    for outcome in outcomes:
        css = "triggered" if outcome.triggered else ("ok" if outcome.evaluated else "unknown")
        rows.append((
            f"<span class='{css}'>{_escape(outcome.rule)}</span>",
            _escape(outcome.checks),
            f"<span class='{css}'>{_escape(outcome_state(outcome))}</span>",
            _escape(outcome.message),
            _escape(outcome.advice) if outcome.triggered else "",
        ))
    return (f"<h3>{_escape(title)}</h3><p class='meta'>{caption}</p>"
            + _table(("rule", "checks that", "outcome", "finding", "advice"), rows))


def _plot_html(plot: Plot | Heatmap) -> str:
    notes = "".join(f"<p class='note'>{_escape(note)}</p>" for note in plot.notes)
    if plot.empty:
        return f"<h3>{_escape(plot.title)}</h3><p class='note'>nothing was recorded for this plot</p>{notes}"
    encoded = base64.b64encode(png_bytes(figure(plot))).decode("ascii")
    return (f"<figure id='{plot.key}'><img alt='{_escape(plot.title)}' src='data:image/png;base64,{encoded}'>"
            f"<figcaption>{_escape(plot.title)}</figcaption></figure>{notes}")
