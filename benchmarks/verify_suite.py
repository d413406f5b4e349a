"""The verifier benchmark suite of ordinary (not certification-trained) quantized networks.

    python benchmarks/verify_suite.py [--networks qnn6,mlp8,cnn-qat] [--methods bab,milp,...]
        [--eps 1,2,3,4] [--per-eps 100] [--timeout 60] [--truth-timeout 600]
        [--cache runs/verify-suite] [--json] [--no-truth]

Networks (trained and quantized with qcert, cached under ``--cache``; see verify_suite_models.py):
``qnn6`` (a) the published QNN benchmark's layout, 784-64-32 at 6 bits with requantized logits;
``mlp8`` (b) 784-100-100-10 at 8 bits from ``from_float``; ``cnn-qat`` (c) the demo's cnn-small
trained with ``qat``. Queries: ``--per-eps`` MNIST test images per ε, images 0.. at ε = 1, 100.. at
ε = 2, and so on (always the first images of each block of 100, so smaller runs are prefixes of
larger ones); robustness of the true label, misclassified images are reported as such.

Methods: every name the verifier registers (``qcert.verify.METHODS``, found at run time), or
``--methods``. Each query's record is appended to
``CACHE/NET/results/METHOD-epsE-tTIMEOUT.jsonl`` as it is decided; a rerun resumes (a torn last
line is redone). Ground truth: the MILP with ``--truth-timeout`` (``truth-epsE-tT.jsonl``); a
query the ``milp`` method already decided is not solved again (the same solver, a longer limit:
the verdict is reused and marked so).

Per network, ε and method it prints robust / vulnerable / timeout counts, median, p90, max and
total seconds of the queries (misclassified images excluded), the largest overrun of the timeout,
and the disagreements: any decided verdict that contradicts another decided verdict (ground truth
or another method) on the same query is a DISAGREEMENT, printed loudly; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from verify_suite_models import NETWORKS, get_network, mnist_test

import qcert.verify as qv
from qcert.progress import make_progress

BLOCK = 100  # test images per ε block: ε = k uses images 100 (k-1) ..
TRUTH = "truth"
DECIDED = ("robust", "vulnerable")
ALIASES = {"a": "qnn6", "b": "mlp8", "c": "cnn-qat"}


def registered_methods() -> list[str]:
    """The method names the verifier's dispatch accepts, in its order."""
    return [str(m) for m in qv.METHODS]


def queries(eps: int, per_eps: int) -> range:
    return range(BLOCK * (eps - 1), BLOCK * (eps - 1) + per_eps)


def result_path(cache: Path, net: str, method: str, eps: int, timeout: float) -> Path:
    return cache / net / "results" / f"{method}-eps{eps}-t{timeout:g}.jsonl"


def read_jsonl(path: Path) -> dict[int, dict[str, Any]]:
    """Records by index (complete lines only)."""
    out: dict[int, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines(keepends=True):
            if line.endswith("\n") and line.strip():
                rec = json.loads(line)
                out[int(rec["index"])] = rec
    return out


class Runner:
    """Runs (or resumes) one network's queries for a method, reporting progress."""

    def __init__(self, args: argparse.Namespace, console: Console) -> None:
        self.args, self.console = args, console
        self.progress = make_progress(console) if console.is_terminal else None

    def run(
        self, name: str, net: Any, data: tuple, eps: int, method: str, timeout: float, path: Path
    ) -> dict[int, dict[str, Any]]:
        images, labels = data
        idx = queries(eps, self.args.per_eps)
        path.parent.mkdir(parents=True, exist_ok=True)
        got: dict[int, dict[str, Any]] = {}
        counts = dict.fromkeys(("robust", "vulnerable", "timeout", "misclassified"), 0)
        label = f"{name} ε={eps} {method}"
        task = self.progress.add_task(label, total=len(idx), status="") if self.progress else None
        t0 = time.monotonic()

        def on_result(rec: dict[str, Any]) -> None:
            i = int(rec["index"])
            if i in idx and i not in got:
                got[i] = rec
                counts[rec["verdict"]] += 1
                if self.progress is not None and task is not None:
                    status = " ".join(f"{k[0]}{v}" for k, v in counts.items())
                    self.progress.update(task, advance=1, status=status)

        qv.verify_dataset(
            net, images[: idx.stop], labels[: idx.stop], eps, out=path, start=idx.start,
            timeout=timeout, method=method, on_result=on_result,
        )  # fmt: skip
        if self.progress is None:
            c = " ".join(f"{k} {v}" for k, v in counts.items())
            self.console.print(f"{label}: {c} ({time.monotonic() - t0:.0f} s)")
        return got

    def truth(
        self, name: str, net: Any, data: tuple, eps: int, path: Path, reuse: dict[int, dict]
    ) -> dict[int, dict[str, Any]]:
        """The MILP with the long timeout on every query that ``reuse`` (decided records of the
        ``milp`` method) does not already decide."""
        images, labels = data
        T = self.args.truth_timeout
        out: dict[int, dict[str, Any]] = {}
        done = read_jsonl(path)
        todo = [i for i in queries(eps, self.args.per_eps) if i not in done]
        for i in queries(eps, self.args.per_eps):
            if i in done:
                out[i] = done[i]
            elif i in reuse and reuse[i]["verdict"] in (*DECIDED, "misclassified"):
                out[i] = {**reuse[i], "reused_from": "milp"}
        todo = [i for i in todo if i not in out]
        label = f"{name} ε={eps} ground truth (MILP, {T:g} s)"
        task = self.progress.add_task(label, total=len(todo), status="") if self.progress else None
        for i in todo:
            qv.verify_dataset(
                net, images[: i + 1], labels[: i + 1], eps, out=path, start=i, timeout=T,
                method="milp", on_result=lambda r, i=i: out.__setitem__(i, r),
            )  # fmt: skip
            if self.progress is not None and task is not None:
                self.progress.update(task, advance=1, status=out[i]["verdict"])
            elif out[i]["verdict"] == "timeout" or out[i]["seconds"] > 10:
                self.console.print(f"{label} #{i}: {out[i]['verdict']} {out[i]['seconds']:.1f} s")
        return out


def stats(recs: list[dict[str, Any]], timeout: float | None) -> dict[str, Any]:
    """Counts and times over the queries (misclassified images are counted, not timed)."""
    q = [r for r in recs if r["verdict"] != "misclassified"]
    secs = sorted(float(r["seconds"]) for r in q)
    row: dict[str, Any] = {
        "images": len(recs),
        "misclassified": len(recs) - len(q),
        "queries": len(q),
        **{v: sum(r["verdict"] == v for r in q) for v in ("robust", "vulnerable", "timeout")},
        "median_s": statistics.median(secs) if secs else 0.0,
        "p90_s": secs[math.ceil(0.9 * len(secs)) - 1] if secs else 0.0,
        "max_s": secs[-1] if secs else 0.0,
        "total_s": sum(secs),
    }
    if timeout is not None:
        over = max([s - timeout for s in secs], default=0.0)
        row["max_overrun_s"] = max(0.0, over)
        row["max_overrun_pct"] = 100.0 * max(0.0, over) / timeout
    return row


def disagreements(
    results: dict[str, dict[int, dict[str, Any]]], network: str, eps: int
) -> list[dict[str, Any]]:
    """Queries on which decided verdicts (methods and ground truth) contradict each other."""
    out = []
    indices = sorted({i for recs in results.values() for i in recs})
    for i in indices:
        verdicts = {src: recs[i]["verdict"] for src, recs in results.items() if i in recs}
        decided = {v for v in verdicts.values() if v in DECIDED}
        if len(decided) > 1:
            out.append({"network": network, "eps": eps, "index": i, "verdicts": verdicts})
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--networks", default=",".join(NETWORKS), help="comma-separated (a,b,c ok)")
    p.add_argument("--methods", default=None, help="comma-separated (default: all registered)")
    p.add_argument("--eps", default="1,2,3,4")
    p.add_argument("--per-eps", type=int, default=100, help=f"queries per ε (≤ {BLOCK})")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per query and method")
    p.add_argument("--truth-timeout", type=float, default=600.0, help="ground-truth MILP limit")
    p.add_argument("--no-truth", action="store_true", help="skip the ground truth")
    p.add_argument("--cache", default="runs/verify-suite", help="models and results")
    p.add_argument("--cnn-minutes", type=float, default=3.0, help="QAT budget of cnn-qat")
    p.add_argument("--threads", type=int, default=1, help="torch threads (HiGHS has its own)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = p.parse_args(argv)
    known = registered_methods()
    args.network_list = [ALIASES.get(n, n) for n in args.networks.split(",") if n]
    args.method_list = args.methods.split(",") if args.methods else known
    args.eps_list = [int(e) for e in args.eps.split(",") if e]
    for n in args.network_list:
        if n not in NETWORKS:
            p.error(f"unknown network {n!r}; known: {', '.join(NETWORKS)} (or a, b, c)")
    for m in args.method_list:
        if m not in known:
            p.error(f"unknown method {m!r}; the verifier registers {', '.join(known)}")
    if not 1 <= args.per_eps <= BLOCK or any(e < 1 for e in args.eps_list):
        p.error(f"--per-eps must be in 1..{BLOCK} and every ε ≥ 1")
    return args


def table(rows: list[dict[str, Any]], title: str) -> Table:
    t = Table(title=title)
    cols = ["network", "ε", "method", "n", "miscl.", "robust", "vuln.", "timeout", "median s"]
    for c in [*cols, "p90 s", "max s", "total s", "max over", "disagree"]:
        t.add_column(c, justify="left" if c in ("network", "method") else "right")
    for r in rows:
        over = f"{r['max_overrun_pct']:.0f} %" if "max_overrun_pct" in r else ""
        t.add_row(
            r["network"], str(r["eps"]), r["method"], str(r["queries"]), str(r["misclassified"]),
            str(r["robust"]), str(r["vulnerable"]), str(r["timeout"]), f"{r['median_s']:.3f}",
            f"{r['p90_s']:.3f}", f"{r['max_s']:.2f}", f"{r['total_s']:.1f}", over,
            str(r.get("disagreements", "")),
        )  # fmt: skip
    return t


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    cache = Path(args.cache)
    runner = Runner(args, console)
    rows: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    models: dict[str, Any] = {}
    results: dict[tuple[str, int], dict[str, dict[int, dict[str, Any]]]] = {}
    ctx = runner.progress if runner.progress is not None else contextlib.nullcontext()
    with ctx:
        nets = {}
        for name in args.network_list:
            net, info = get_network(name, cache, args.cnn_minutes, console.print)
            nets[name], models[name] = (net, mnist_test(net)), info
        # every method first (the table), then the ground truth
        for name, (net, data) in nets.items():
            for eps in args.eps_list:
                res = results.setdefault((name, eps), {})
                for m in args.method_list:
                    path = result_path(cache, name, m, eps, args.timeout)
                    res[m] = runner.run(name, net, data, eps, m, args.timeout, path)
        if not args.no_truth:
            for name, (net, data) in nets.items():
                for eps in args.eps_list:
                    res = results[(name, eps)]
                    reuse: dict[int, dict] = {}
                    for p in sorted((cache / name / "results").glob(f"milp-eps{eps}-t*.jsonl")):
                        reuse.update(read_jsonl(p))
                    path = (
                        cache / name / "results" / f"{TRUTH}-eps{eps}-t{args.truth_timeout:g}.jsonl"
                    )
                    res[TRUTH] = runner.truth(name, net, data, eps, path, reuse)
    for (name, eps), res in results.items():
        dis = disagreements(res, name, eps)
        bad += dis
        for src, recs in res.items():
            t = args.truth_timeout if src == TRUTH else args.timeout
            row = {"network": name, "eps": eps, "method": src, "timeout_s": t}
            row.update(stats(list(recs.values()), t))
            row["disagreements"] = sum(src in d["verdicts"] for d in dis)
            if src == TRUTH:
                row["reused"] = sum("reused_from" in r for r in recs.values())
            rows.append(row)
    for name in args.network_list:  # all ε together, per method
        for src in [*args.method_list, *([] if args.no_truth else [TRUTH])]:
            recs = [
                r for (n, _), res in results.items() if n == name for r in res.get(src, {}).values()
            ]
            t = args.truth_timeout if src == TRUTH else args.timeout
            row = {"network": name, "eps": "all", "method": src, "timeout_s": t}
            row.update(stats(recs, t))
            row["disagreements"] = sum(src in d["verdicts"] for d in bad if d["network"] == name)
            rows.append(row)
    out = Console(stderr=args.json)
    if not out.is_terminal:
        out = Console(stderr=args.json, width=160)
    title = f"verify suite: {args.per_eps} queries per ε, timeout {args.timeout:g} s"
    if not args.no_truth:
        title += f", ground truth MILP {args.truth_timeout:g} s"
    out.print(table(rows, title))
    for d in bad:
        console.print(
            f"[bold red]DISAGREEMENT[/] {d['network']} ε={d['eps']} #{d['index']}: {d['verdicts']}"
        )
    if bad:
        console.print(f"[bold red]{len(bad)} DISAGREEMENTS between decided verdicts[/]")
    if args.json:
        print(
            json.dumps(
                {
                    "settings": {
                        k: v
                        for k, v in vars(args).items()
                        if k not in ("networks", "methods", "eps")
                    },
                    "models": models,
                    "rows": rows,
                    "disagreements": bad,
                },
                indent=1,
            )
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
