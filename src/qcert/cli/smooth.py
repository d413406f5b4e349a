"""``qcert smooth certify|predict MODEL --dataset NAME --sigma S``: randomized smoothing.

σ and radii are in units of the input scaled to [0, 1] by x/255 (σ = 0.25 ≈ 64 pixel levels), as in
Cohen et al.'s tables. ``--arith int`` smooths the integer network with discrete Gaussian noise (sound
radius for the noise sampled); ``--arith float`` is Cohen's float baseline on the float twin network.
"""

from __future__ import annotations

import argparse
import json

from qcert.cli.common import (
    add_dataset_args,
    add_ray_args,
    check_outputs,
    finite_float,
    load_dataset_for,
    nonneg_int,
    positive_int,
    print_json,
)
from qcert.progress import progress_task
from qcert.quant.executor import EXECUTORS


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="path to a .qnn file")
    add_dataset_args(p)
    p.add_argument("--sigma", type=finite_float, required=True, help="noise level in [0,1] units")
    p.add_argument("--alpha", type=finite_float, default=0.001, help="failure probability")
    p.add_argument("--batch", type=positive_int, default=1000, help="noisy samples per pass")
    p.add_argument("--arith", choices=["int", "float"], default="int")
    p.add_argument(
        "--engine",
        dest="executor",
        choices=list(EXECUTORS),
        default="int8",
        help="exact integer executor of the int path: torch's int8 products where provably exact "
        "(default, fastest), the reference executor, or onnxruntime's integer kernels; all give "
        "the same results",
    )
    p.add_argument("--n-samples", type=positive_int, default=None, help="how many test inputs")
    p.add_argument("--skip", type=positive_int, default=1, help="use every SKIP-th input")
    p.add_argument("--seed", type=nonneg_int, default=0, help="noise seed (default 0)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "smooth", help="randomized smoothing: certify or predict", description=__doc__
    )
    ss = p.add_subparsers(dest="smooth_command", metavar="{certify,predict}", required=True)
    c = ss.add_parser("certify", help="CERTIFY (Cohen et al.): class and certified L2 radius")
    _common(c)
    c.add_argument("--n", type=positive_int, default=100_000, help="samples for the estimate")
    c.add_argument("--n0", type=positive_int, default=100, help="samples to pick the class")
    c.add_argument("--out", default=None, help="TSV file (idx label predict radius correct time)")
    add_ray_args(c)
    c.set_defaults(func=run_certify)
    q = ss.add_parser("predict", help="PREDICT with the binomial-test abstain rule")
    _common(q)
    q.add_argument("--n", type=positive_int, default=10_000)
    q.set_defaults(func=run_predict)


def _load(args: argparse.Namespace):
    from qcert.quant import load_model

    net = load_model(args.model)
    images, labels, _ = load_dataset_for(net, args.dataset, args.split, args.data_root)
    total = len(range(0, images.shape[0], args.skip))
    if args.n_samples is not None:
        total = min(total, args.n_samples)
    return net, images, labels, total


def run_certify(args: argparse.Namespace) -> int:
    from qcert.runs import write_atomic
    from qcert.smoothing.run import certify_dataset

    summary_file = None if args.out is None else args.out + ".json"
    check_outputs([args.model], {"--out": args.out, "the summary file": summary_file})
    net, images, labels, total = _load(args)
    counts = {"correct": 0, "abstain": 0}
    with progress_task(f"certify σ={args.sigma} {args.arith}", total) as (prog, task):

        def on_row(row: dict) -> None:
            counts["correct"] += row["correct"]
            counts["abstain"] += row["predict"] == -1
            if prog is not None:
                prog.update(
                    task,
                    advance=1,
                    status=f"correct {counts['correct']} abstain {counts['abstain']}",
                )

        summary = certify_dataset(
            net, images, labels, args.sigma, n=args.n, n0=args.n0, alpha=args.alpha,
            arith=args.arith, batch=args.batch, skip=args.skip, n_samples=args.n_samples,
            seed=args.seed, out=args.out, on_row=on_row, executor=args.executor, ray=args.ray is not None,
            ray_address=args.ray, workers=args.workers,
        )  # fmt: skip
    summary.update(
        {"sigma": args.sigma, "n_noise": args.n, "alpha": args.alpha, "model": str(args.model)}
    )
    if summary_file is not None:
        write_atomic(summary_file, json.dumps(summary, indent=2) + "\n")
    if args.json:
        print_json(summary)
    else:
        accs = "  ".join(f"r={r}: {a:.3f}" for r, a in summary["certified_acc"].items())
        print(f"certified accuracy ({summary['n']} inputs, σ={args.sigma}, {args.arith}): {accs}")
        print(f"abstain {summary['abstain_rate']:.3f}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from qcert.smoothing.run import predict_dataset

    net, images, labels, total = _load(args)
    with progress_task(f"predict σ={args.sigma} {args.arith}", total) as (prog, task):
        summary = predict_dataset(
            net, images, labels, args.sigma, n=args.n, alpha=args.alpha, arith=args.arith,
            batch=args.batch, skip=args.skip, n_samples=args.n_samples, seed=args.seed,
            executor=args.executor, on_row=(lambda r: prog.advance(task)) if prog is not None else None,
        )  # fmt: skip
    rows = summary.pop("rows")
    if args.json:
        print_json({**summary, "predictions": [r["predict"] for r in rows]})
    else:
        print(
            f"smoothed accuracy {summary['accuracy']:.4f}, abstain {summary['abstain_rate']:.3f} "
            f"on {summary['n']} inputs"
        )
    return 0
