"""The main job behind ``make demo``, end to end on MNIST in about ten minutes on two CPU cores:

1. train (or reuse from the output folder) a small QA-IBP model and a QAT model of the same size;
2. verify a few hundred test inputs at ε = 1 and ε = 4 with the complete verifier (the QAT model:
   a few dozen with a short timeout, since it is not trained for certification);
3. certify them with integer randomized smoothing (σ = 0.25);
4. export the QA-IBP model to an integer-only ONNX graph and check it in onnxruntime on the whole
   MNIST test set;
5. write the report (PNG plots and index.html) and print where it is.

Run with ``python -m qcert.demo [--out DIR] [--n N] [--fresh]``. Every result is saved as it comes;
rerunning reuses the trained models and finished verification / smoothing rows. Each model has one
name everywhere: its folder (``qa-ibp``, ``qat``), the closing table's rows and the report's plots.
The closing table is plain text under 80 columns, so it reads the same on a terminal and in a log.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console

from qcert.data import load
from qcert.quant import load_model
from qcert.quant.files import write_atomic

console = Console()


def _train(out: Path, method: str, minutes: float, fresh: bool) -> Path:
    """Train a cnn-small MNIST model with ``method`` in ``minutes`` unless ``out`` has one."""
    from qcert.train import TrainConfig, train

    model, metrics = out / "model.qnn", out / "metrics.json"
    if model.exists() and metrics.exists() and not fresh:
        console.print(f"reusing {model} (delete it or pass --fresh to retrain)")
        return out
    console.rule(f"training {method} ({minutes:g} min budget)")
    cfg = TrainConfig(
        dataset="mnist", out=str(out), arch="cnn-small", method=method, eps=4, epochs=50,
        time_budget=minutes, n_test=1000, pgd_n=200, eval_eps=[1, 4],
    )  # fmt: skip
    train(cfg, progress=True)
    return out


def _verify(net, images, labels, eps: int, path: Path, timeout: float, model: Path) -> dict:
    from qcert.progress import progress_task
    from qcert.verify import verify_dataset

    with progress_task(f"verify ε={eps} {path.parent.name}", images.shape[0]) as (prog, task):
        return verify_dataset(
            net, images, labels, eps, out=path, timeout=timeout, extra={"model": str(model)},
            on_result=(lambda r: prog.advance(task)) if prog is not None else None,
        )  # fmt: skip


def _smooth(net, images, labels, path: Path, model: Path) -> dict:
    from qcert.progress import progress_task
    from qcert.smoothing.run import certify_dataset

    with progress_task(f"smooth σ=0.25 {path.parent.name}", images.shape[0]) as (prog, task):
        summary = certify_dataset(
            net, images, labels, 0.25, n=1000, n0=100, alpha=0.001, arith="int", executor="torch",
            out=path, on_row=(lambda r: prog.advance(task)) if prog is not None else None,
        )  # fmt: skip
    side = {**summary, "sigma": 0.25, "model": str(model)}
    write_atomic(path.with_name(path.name + ".json"), json.dumps(side, indent=2) + "\n")
    return summary


#: the closing table's columns: (heading, width); every line is at most 80 characters
COLUMNS = [
    ("model", 8), ("clean", 6), ("box ε=1", 8), ("box ε=4", 8), ("verified", 9),
    ("ver ε=1", 8), ("ver ε=4", 8), ("timeouts", 9), ("smoothed", 9),
]  # fmt: skip


def closing_table(rows: dict[str, dict]) -> str:
    """The demo's closing table as plain text (no terminal width, no truncation): a heading that
    says what each column is, then one line per model."""

    def line(cells: list[str]) -> str:
        head = cells[0].ljust(COLUMNS[0][1])
        return head + "".join(c.rjust(w) for c, (_, w) in zip(cells[1:], COLUMNS[1:]))

    out = [
        "MNIST, cnn-small 8-bit. clean, box ε: accuracy and QA-IBP box certified",
        "accuracy on the first 1000 test inputs. verified: the first N inputs verified",
        "completely; ver ε: their certified accuracy; timeouts: at both ε. smoothed:",
        "integer smoothing (σ = 0.25), certified accuracy at radius 0.25.",
        "",
        line([h for h, _ in COLUMNS]),
    ]
    for name, r in rows.items():
        v1, v4 = r["verified1"], r["verified4"]
        out.append(
            line(
                [
                    name,
                    f"{r['clean']:.3f}",
                    f"{r['box'].get('1', float('nan')):.3f}",
                    f"{r['box'].get('4', float('nan')):.3f}",
                    f"{r['n']}",
                    f"{v1['certified_acc']:.3f}",
                    f"{v4['certified_acc']:.3f}",
                    f"{v1['timeout'] + v4['timeout']}",
                    f"{r['smooth']['certified_acc']['0.25']:.3f}",
                ]
            )
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qcert.demo", description=__doc__)
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--n", type=int, default=200, help="test inputs to verify and smooth (QA-IBP)")
    p.add_argument(
        "--n-qat",
        type=int,
        default=20,
        help="test inputs to verify for the QAT model (most of its queries time out: it is not "
        "trained for certification)",
    )
    p.add_argument("--qaibp-minutes", type=float, default=2.5)
    p.add_argument("--qat-minutes", type=float, default=1.0)
    p.add_argument("--fresh", action="store_true", help="retrain even if models exist")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    test = load("mnist", "test")
    runs = {  # the name of each model is its folder's, in the table and in the report
        "qa-ibp": _train(out / "qa-ibp", "qa-ibp", args.qaibp_minutes, args.fresh),
        "qat": _train(out / "qat", "qat", args.qat_minutes, args.fresh),
    }

    results: list[Path] = []
    rows = {}
    for name, folder in runs.items():
        net = load_model(folder / "model.qnn")
        metrics = json.loads((folder / "metrics.json").read_text())
        row = {"clean": metrics["clean_acc"], "box": metrics["ibp_certified_acc"]}
        n = args.n if name == "qa-ibp" else args.n_qat
        x, y = test.images[:n], test.labels[:n]
        row["n"] = n
        for eps in (1, 4):
            path = folder / f"verify-eps{eps}.jsonl"
            timeout = 5.0 if name == "qa-ibp" else 2.0
            row[f"verified{eps}"] = _verify(net, x, y, eps, path, timeout, folder / "model.qnn")
            results.append(path)
        tsv = folder / "smooth-sigma0.25-int.tsv"
        row["smooth"] = _smooth(
            net, test.images[: args.n], test.labels[: args.n], tsv, folder / "model.qnn"
        )
        results += [tsv, folder / "metrics.json"]
        rows[name] = row

    console.rule("ONNX export")
    from qcert.export import compare_onnx, to_onnx

    onnx_path = runs["qa-ibp"] / "model.onnx"
    qaibp = load_model(runs["qa-ibp"] / "model.qnn")
    to_onnx(qaibp, onnx_path)
    check = compare_onnx(qaibp, onnx_path, test.images)
    console.print(
        f"{onnx_path}: onnxruntime logits equal the reference executor on "
        f"{check['equal_logits']}/{check['n']} MNIST test images"
    )

    from qcert.report import build_report

    page = build_report(results, out / "report")

    print(closing_table(rows), flush=True)
    summary = {
        "models": {k: str(v / "model.qnn") for k, v in runs.items()},
        "onnx_equal_logits": check["equal_logits"],
        "onnx_n": check["n"],
        "seconds": round(time.perf_counter() - t0, 1),
        "report": str(page),
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    console.print(f"done in {summary['seconds']} s; the report is at {page}")
    return 0 if check["equal_logits"] == check["n"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
