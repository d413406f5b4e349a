"""``build_report``: PNG plots and an ``index.html`` with summary tables from result files.

Plots: certified accuracy vs ε per model (verifier results, plus the whole-box QA-IBP figures from
training metrics), certified accuracy vs L2 radius per σ and arithmetic path (smoothing), and the CDF of
seconds per sample (verifier and smoothing).
"""

from __future__ import annotations

import html
import io
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from qcert.errors import InputError  # noqa: E402
from qcert.report.results import (  # noqa: E402
    SmoothingRun,
    TrainingRun,
    VerifyRun,
    read_result,
)
from qcert.runs import RADII, VERDICTS, check_output_folder, write_atomic  # noqa: E402


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> bool:
    """Labels, grid and legend shared by every plot; write the PNG and close the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buf.getvalue())
    return True


def _plot_eps(verify: list[VerifyRun], training: list[TrainingRun], path: Path) -> bool:
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for run in verify:
        if run.eps is not None:
            series[f"{run.model} (verified)"].append((run.eps, run.certified_acc))
    for trun in training:
        for eps, acc in trun.certified.items():
            series[f"{trun.model} (QA-IBP box)"].append((eps, acc))
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in sorted(series.items()):
        pts.sort()
        style = "--" if name.endswith("(QA-IBP box)") else "-"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=name)
    ax.set_ylim(0, 1.02)
    return _finish(
        fig, ax, "ε (input levels, L∞)", "certified accuracy", "Certified accuracy vs ε", path
    )


def _plot_radius(smoothing: list[SmoothingRun], path: Path) -> bool:
    if not smoothing:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in smoothing:
        rmax = max([*run.radius, 1.0])
        grid = [rmax * i / 200 for i in range(201)]
        label = f"{run.model} σ={run.sigma} {run.arith}"
        ax.plot(grid, [run.certified_acc(r) for r in grid], label=label)
    ax.set_ylim(0, 1.02)
    title = "Randomized smoothing: certified accuracy vs radius"
    return _finish(fig, ax, "L2 radius (input scaled to [0, 1])", "certified accuracy", title, path)


def _plot_time(runs: Sequence[VerifyRun | SmoothingRun], path: Path) -> bool:
    runs = [r for r in runs if r.seconds]
    if not runs:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        xs = sorted(run.seconds)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        if isinstance(run, VerifyRun):
            label = f"verify {run.model} ε={run.eps}"
        else:
            label = f"smooth {run.model} σ={run.sigma} {run.arith}"
        ax.step(xs, ys, where="post", label=label)
    ax.set_xscale("log")
    return _finish(fig, ax, "seconds per sample", "share of samples", "Time per sample (CDF)", path)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return 0.0 if not n else (s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2)


def build_report(results: Sequence[str | Path], out: str | Path) -> Path:
    """Read the result files, write PNG plots and ``index.html`` into ``out``; return the page."""
    if not results:
        raise InputError("no result files given")
    check_output_folder(out, inputs=results)
    runs = [read_result(r) for r in results]
    verify = [r for r in runs if isinstance(r, VerifyRun)]
    smoothing = [r for r in runs if isinstance(r, SmoothingRun)]
    training = [r for r in runs if isinstance(r, TrainingRun)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    if _plot_eps(verify, training, out / "certified_vs_eps.png"):
        plots.append(("Certified accuracy vs ε", "certified_vs_eps.png"))
    if _plot_radius(smoothing, out / "certified_vs_radius.png"):
        plots.append(("Certified accuracy vs radius", "certified_vs_radius.png"))
    if _plot_time([*verify, *smoothing], out / "time_cdf.png"):
        plots.append(("Time per sample", "time_cdf.png"))

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>qcert report</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:right}th{background:#eee}</style></head><body>",
        "<h1>qcert report</h1>",
    ]
    if training:
        eps_keys = sorted({e for r in training for e in r.certified})
        rows = [
            [
                r.model,
                " ".join(str(r.data[k]) for k in ("method", "arch", "dataset") if k in r.data),
                f"{float(r.data.get('clean_acc', 0)):.4f}",
                *[f"{r.certified.get(e, float('nan')):.4f}" for e in eps_keys],
                str(r.data.get("pgd_acc", "")),
                str(r.data.get("seconds", "")),
            ]
            for r in training
        ]
        headers = [
            "model", "training", "clean", *[f"QA-IBP ε={e:g}" for e in eps_keys], "PGD", "seconds"
        ]  # fmt: skip
        parts += ["<h2>Training</h2>", _table(headers, rows)]
    if verify:
        rows = [
            [
                r.model,
                f"{r.eps:g}" if r.eps is not None else "?",
                str(r.n),
                *[str(r.count(v)) for v in VERDICTS],
                f"{r.certified_acc:.4f}",
                f"{_median(r.seconds):.3f}",
            ]
            for r in verify
        ]
        headers = ["model", "ε", "n", *VERDICTS, "certified acc", "median s"]
        parts += ["<h2>Verification</h2>", _table(headers, rows)]
    if smoothing:
        rows = [
            [
                r.model,
                str(r.sigma),
                r.arith,
                str(r.n),
                *[f"{r.certified_acc(x):.3f}" for x in RADII],
                f"{r.abstain_rate:.3f}",
            ]
            for r in smoothing
        ]
        headers = ["model", "σ", "path", "n", *[f"r={x}" for x in RADII], "abstain"]
        parts += ["<h2>Randomized smoothing</h2>", _table(headers, rows)]
    for title, png in plots:
        parts.append(f"<h2>{html.escape(title)}</h2><img src='{png}' alt='{html.escape(title)}'>")
    files = json.dumps([str(r.path) for r in runs])
    parts.append(f"<p><small>from {html.escape(files)}</small></p></body></html>")
    page = out / "index.html"
    write_atomic(page, "\n".join(parts))
    return page
