"""``qcert verify MODEL``: complete verification of the integer network.

Dataset mode (``--dataset NAME --eps E``): one JSON line per sample, written as soon as it is
decided (``--out FILE.jsonl``; rerunning with the same file skips the samples already there).
VNN-LIB mode (``--vnnlib PROP.vnnlib``): prints ``unsat`` / ``sat`` / ``timeout`` on the first line,
then for ``sat`` the counterexample in the VNN-COMP format (also written to ``--cex FILE``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from qcert.cli import common
from qcert.errors import InputError
from qcert.progress import progress_task
from qcert.quant import load_model
from qcert.runs import VERDICTS, VNNLIB_RESULTS, write_atomic
from qcert.verify import DEFAULT_METHOD, METHODS, RULES, BabOptions, verify_dataset
from qcert.verify.split import parse_rule
from qcert.verify.vnnlib import verify_vnnlib


def _split_rule(text: str) -> str:
    try:
        parse_rule(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def register(sub: argparse._SubParsersAction) -> None:
    p = common.add_command(
        sub,
        "verify",
        "complete verification (branch and bound or MILP), datasets or VNN-LIB",
        __doc__,
        raw=True,
    )
    p.add_argument("model", help="path to a .qnn file")
    p.add_argument(
        "--dataset",
        default=None,
        help="mnist, digits, mnist-idx, fashion-mnist, cifar10, image-folder",
    )
    p.add_argument("--data-root", default=None, help="folder with the dataset files (IDX, CIFAR)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument(
        "--eps", type=common.nonneg_int, default=None, help="L∞ radius in input integer steps"
    )
    p.add_argument("--n", type=common.positive_int, default=None, help="number of samples")
    p.add_argument("--start", type=common.nonneg_int, default=0, help="index of the first sample")
    p.add_argument("--vnnlib", default=None, help="a VNN-LIB property file instead of a dataset")
    p.add_argument("--cex", default=None, help="VNN-LIB mode: write the result/counterexample here")
    p.add_argument("--timeout", type=common.finite_float, default=20.0, help="seconds per query")
    p.add_argument(
        "--method",
        choices=list(METHODS),
        default=DEFAULT_METHOD,
        help="branch and bound, the HiGHS MILP, or the portfolio (BaB for 30%% of the timeout, then "
        "MILP on what is still open)",
    )
    p.add_argument(
        "--split-rule",
        type=_split_rule,
        default=None,
        help=f"branch-and-bound split rule: {', '.join(RULES)} (bound:K tries K dimensions)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON Lines file of per-sample results (resumable)")
    common.add_ray_args(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def _check_cex_file(path: str) -> None:
    """An existing ``--cex`` file is replaced only if it is a VNN-COMP result."""
    p = Path(path)
    if p.exists() and p.stat().st_size:
        with open(p, "rb") as f:
            first = f.read(64).split(b"\n", 1)[0].strip()
        if first.decode(errors="replace") not in VNNLIB_RESULTS:
            raise InputError(f"--cex {p} exists and is not a VNN-COMP result file; name another")


def run(args: argparse.Namespace) -> int:
    common.check_outputs([args.model, args.vnnlib], {"--out": args.out, "--cex": args.cex})
    if args.vnnlib is not None:
        if args.dataset is not None or args.eps is not None:
            raise InputError("--vnnlib takes no --dataset or --eps")
        if args.cex is not None:
            _check_cex_file(args.cex)
    elif args.dataset is None or args.eps is None:
        raise InputError("give --dataset and --eps (or --vnnlib PROP.vnnlib)")
    net = load_model(args.model)
    options = BabOptions(seed=args.seed, **({"split": args.split_rule} if args.split_rule else {}))
    if args.vnnlib is not None:
        res = verify_vnnlib(
            net, Path(args.vnnlib), timeout=args.timeout, method=args.method, options=options
        )
        text = res.vnncomp()
        sys.stdout.write(text)
        if args.cex:
            write_atomic(args.cex, text)
        return 0
    dataset, eps = args.dataset, args.eps
    assert dataset is not None and eps is not None  # checked above
    n = None if args.n is None else args.start + args.n
    images, labels, _ = common.load_dataset_for(net, dataset, args.split, args.data_root, n)
    if args.start >= images.shape[0]:
        raise InputError(f"--start {args.start} is past the {images.shape[0]} samples")
    total = images.shape[0] - args.start
    counts = dict.fromkeys(VERDICTS, 0)
    t0 = time.perf_counter()
    with progress_task(f"verify ε={args.eps}", total, enabled=None if not args.json else False) as (
        prog,
        task,
    ):

        def on_result(rec: dict) -> None:
            counts[rec["verdict"]] += 1
            if prog is not None:
                prog.update(
                    task,
                    advance=1,
                    status=" ".join(f"{k[:4]} {v}" for k, v in counts.items()),
                )
            if not args.json and args.out is None:
                print(json.dumps(rec), flush=True)

        summary = verify_dataset(
            net, images, labels, eps, out=args.out, start=args.start, timeout=args.timeout,
            method=args.method, options=options, on_result=on_result,
            extra={"model": str(args.model)}, ray=args.ray is not None, ray_address=args.ray,
            workers=args.workers,
        )  # fmt: skip
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    if args.json:
        common.print_json(summary)
    else:
        print(
            f"certified {summary['robust']}/{summary['n']} ({summary['certified_acc']:.4f}) at "
            f"eps={args.eps}: vulnerable {summary['vulnerable']}, timeout {summary['timeout']}, "
            f"misclassified {summary['misclassified']}; median {summary['median_seconds']:.3f} s"
        )
    return 0
