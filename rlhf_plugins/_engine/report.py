"""``rlhf report RUN_DIR``: one self-contained ``report.html`` (and ``report.md``) for a run.

Read from the run directory alone, so it works for any run, finished or not:

- each stage's ``stage_state.json`` (status, time, final metrics), ``resolved_stage.json``
  (settings and plugin versions) and ``metrics.jsonl`` (curves: loss, reward, KL, KL
  coefficient, learning rate, throughput, whichever the stage logged);
- every ``eval.json`` an evaluator wrote, in the shape ``{"policies": {label: {"policy",
  "metrics", "samples"}}}``: a table of the policies' metrics, a reward-vs-KL chart when the
  metrics hold ``reward`` and ``kl``, and sample generations side by side.

Plots are PNGs made with matplotlib (the ``report`` extra) and embedded as data URIs: the page
needs no network. Without matplotlib the report has every table and no plots.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from pathlib import Path
from typing import Any

from rlhf_plugins._engine.rundir import METRICS_FILE, RESOLVED_FILE, stage_states

PANELS = {
    "loss": lambda k: "loss" in k and "time" not in k,
    "reward": lambda k: "reward" in k and not k.endswith(("_std", "/std", "samples")),
    "KL": lambda k: k in ("kl", "policy/approx_kl") or k.endswith("/kl"),
    "KL coefficient": lambda k: k == "kl_coef",
    "learning rate": lambda k: k in ("learning_rate", "lr"),
    "throughput": lambda k: k.endswith(("_per_s", "_per_second")),
}
"""Plot title -> which metrics keys go on it."""
SAMPLES_SHOWN = 5


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a kill
    return rows


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def curves(records: list[dict[str, Any]]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Panel -> metric -> (step, value) points of the numeric metrics in ``records``."""
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for record in records:
        step = record.get("step")
        if not isinstance(step, (int, float)):
            continue
        for key, value in record.items():
            if key in ("step", "time") or not isinstance(value, (int, float)):
                continue
            if isinstance(value, bool) or not math.isfinite(value):
                continue
            for panel, wanted in PANELS.items():
                if wanted(key):
                    panels.setdefault(panel, {}).setdefault(key, []).append((step, value))
    return panels


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_panel(plt: Any, title: str, series: dict[str, list[tuple[float, float]]]) -> str:
    figure, axes = plt.subplots(figsize=(4.6, 2.8))
    for key, points in sorted(series.items()):
        steps, values = zip(*points, strict=True)
        axes.plot(steps, values, marker="." if len(points) < 30 else None, label=key)
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    image = _png(figure)
    plt.close(figure)
    return image


def plot_reward_vs_kl(plt: Any, policies: dict[str, Any]) -> str | None:
    points = {
        label: (entry["metrics"]["kl"], entry["metrics"]["reward"])
        for label, entry in policies.items()
        if isinstance(entry.get("metrics", {}).get("kl"), (int, float))
        and isinstance(entry["metrics"].get("reward"), (int, float))
    }
    if not points:
        return None
    figure, axes = plt.subplots(figsize=(4.6, 3.2))
    for label, (kl, reward) in points.items():
        axes.scatter([kl], [reward])
        axes.annotate(label, (kl, reward), textcoords="offset points", xytext=(4, 4))
    axes.set_xlabel("KL to the reference policy (per sample)")
    axes.set_ylabel("mean reward")
    axes.set_title("reward at a given KL")
    axes.grid(alpha=0.3)
    image = _png(figure)
    plt.close(figure)
    return image


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def evaluation_sections(stage_dir: Path, plt: Any) -> tuple[list[str], list[str]]:
    """HTML and markdown parts for the ``eval.json`` of a stage, if any."""
    policies = read_json(stage_dir / "eval.json").get("policies")
    if not isinstance(policies, dict) or not policies:
        return [], []
    keys = sorted({k for entry in policies.values() for k in entry.get("metrics", {})})
    rows = [
        [label, entry.get("policy", "")] + [entry.get("metrics", {}).get(k, "") for k in keys]
        for label, entry in policies.items()
    ]
    header = ["policy", "model", *keys]
    parts = ["<h3>Evaluation</h3>", _table(header, rows)]
    md = ["### Evaluation", "", _md_table(header, rows), ""]
    chart = plot_reward_vs_kl(plt, policies) if plt else None
    if chart:
        parts.append(f'<img alt="reward vs KL" src="{chart}">')
    else:
        parts.append(
            "<p>No reward-vs-KL chart: the evaluation reports no per-policy KL "
            "(give the evaluator a reference policy).</p>"
        )
    labels = list(policies)
    samples = [policies[label].get("samples", []) for label in labels]
    shown = min(SAMPLES_SHOWN, *(len(s) for s in samples)) if samples else 0
    if shown:
        sample_rows = []
        for i in range(shown):
            first = samples[0][i]
            prompt = str(first.get("prompt", ""))[-300:]
            sample_rows.append([prompt, *(s[i].get("generated", "") for s in samples)])
        parts += ["<h4>Samples</h4>", _table(["prompt (end)", *labels], sample_rows)]
        md += ["#### Samples", "", _md_table(["prompt (end)", *labels], sample_rows), ""]
    return parts, md


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } img { margin: 4px; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 1em; overflow: auto; font-size: 0.8em; }
.finished { color: #176f2c; } .failed { color: #b00020; } .running, .interrupted { color: #a15c00; }
"""


def build_report(run_dir: Path) -> tuple[str, str]:
    """The HTML page and the markdown text of the report of ``run_dir``."""
    plt = _pyplot()
    stages = stage_states(run_dir)
    title = f"rlhf run {run_dir.name}"
    made = time.strftime("%Y-%m-%d %H:%M:%S")
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(str(run_dir))}, made {made}</p>"]
    md = [f"# {title}", "", f"`{run_dir}`, made {made}", ""]
    overview = []
    for stage_dir, state in stages:
        seconds = state.get("seconds")
        overview.append(
            [stage_dir.name, state.get("status", "?"), seconds if seconds is not None else "-"]
        )
    body += ["<h2>Stages</h2>", _table(["stage", "status", "seconds"], overview)]
    md += ["## Stages", "", _md_table(["stage", "status", "seconds"], overview), ""]
    if plt is None:
        body.append("<p>No plots: install matplotlib (pip install 'rlhf-plugins[report]').</p>")
    resolved: dict[str, Any] = {}
    for stage_dir, state in stages:
        status = str(state.get("status", "?"))
        body.append(
            f'<h2>{html.escape(stage_dir.name)} <small class="{html.escape(status)}">{html.escape(status)}</small></h2>'
        )
        md += [f"## {stage_dir.name} ({status})", ""]
        if state.get("error"):
            body.append(f"<p>{html.escape(state['error'])}</p>")
        metrics = state.get("metrics") or {}
        if metrics:
            rows = [[k, v] for k, v in metrics.items()]
            body.append(_table(["final metric", "value"], rows))
            md += [_md_table(["final metric", "value"], rows), ""]
        if plt is not None:
            for panel, series in curves(read_jsonl(stage_dir / METRICS_FILE)).items():
                body.append(
                    f'<img alt="{html.escape(stage_dir.name)}: {html.escape(panel)}" src="{plot_panel(plt, panel, series)}">'
                )
        html_parts, md_parts = evaluation_sections(stage_dir, plt)
        body += html_parts
        md += md_parts
        resolved.update(read_json(stage_dir / RESOLVED_FILE).get("stages", {}))
    plugins = sorted({c for stage in resolved.values() for c in _plugins(stage)})
    body += [
        "<h2>Plugins</h2>",
        "<ul>" + "".join(f"<li>{html.escape(p)}</li>" for p in plugins) + "</ul>",
    ]
    body += [
        "<h2>Resolved recipe</h2>",
        f"<pre>{html.escape(json.dumps(resolved, indent=1))}</pre>",
    ]
    md += ["## Plugins", "", *(f"- {p}" for p in plugins), ""]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>"
    )
    return page, "\n".join(md)


def _plugins(table: Any) -> list[str]:
    """Every ``plugin`` entry in a resolved stage table, nested components included."""
    if isinstance(table, dict):
        found = [table["plugin"]] if isinstance(table.get("plugin"), str) else []
        return found + [p for value in table.values() for p in _plugins(value)]
    if isinstance(table, list):
        return [p for value in table for p in _plugins(value)]
    return []


def write_report(run_dir: Path) -> Path:
    """Write ``report.html`` and ``report.md`` into ``run_dir``; returns the HTML path."""
    page, text = build_report(run_dir)
    (run_dir / "report.md").write_text(text)
    path = run_dir / "report.html"
    path.write_text(page)
    return path
