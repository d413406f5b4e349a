"""``qcert attack MODEL --dataset NAME --eps E``: PGD robust accuracy on the integer network.

Every counterexample is confirmed by the reference executor; ``--out FILE.jsonl`` writes them, one
JSON object per line (``index``, ``label``, ``predicted``, ``input``).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from qcert.attack import robust_accuracy
from qcert.cli.common import (
    add_command,
    add_dataset_args,
    check_outputs,
    load_dataset_for,
    positive_int,
    print_json,
)
from qcert.errors import InputError
from qcert.progress import progress_task
from qcert.quant import load_model
from qcert.quant.inputs import check_eps
from qcert.runs import COUNTEREXAMPLES, read_records, write_atomic


def _eps(text: str) -> int:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    try:
        return check_eps(int(v) if v.is_integer() else v)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "attack", "PGD robust accuracy (every counterexample re-checked exactly)", __doc__
    )
    p.add_argument("model", help="path to a .qnn file")
    add_dataset_args(p)
    p.add_argument("--eps", type=_eps, required=True, help="L∞ radius in input integer steps")
    p.add_argument("--n", type=positive_int, default=None, help="only the first N samples")
    p.add_argument("--steps", type=positive_int, default=20, help="PGD steps per restart")
    p.add_argument("--restarts", type=positive_int, default=1, help="PGD random restarts")
    p.add_argument("--loss", choices=["targeted", "margin"], default="targeted")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--out", default=None, help="write the counterexamples to this .jsonl file")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_outputs([args.model], {"--out": args.out})
    if args.out is not None and os.path.isfile(args.out) and os.path.getsize(args.out):
        read_records(args.out, COUNTEREXAMPLES)  # replaced only if it is a counterexample file
    net = load_model(args.model)
    images, labels, _ = load_dataset_for(net, args.dataset, args.split, args.data_root, args.n)
    t0 = time.perf_counter()
    with progress_task(
        f"attack ε={args.eps}", images.shape[0], enabled=None if not args.json else False
    ) as (prog, task):
        found = [0]

        def on_batch(k: int, cex: int) -> None:
            found[0] += cex
            if prog is not None:
                prog.update(task, advance=k, status=f"counterexamples {found[0]}")

        out = robust_accuracy(
            net,
            images,
            labels,
            args.eps,
            steps=args.steps,
            restarts=args.restarts,
            seed=args.seed,
            batch_size=args.batch_size,
            loss=args.loss,
            on_batch=on_batch,
        )
    seconds = time.perf_counter() - t0
    if args.out:
        write_atomic(args.out, "".join(json.dumps(rec) + "\n" for rec in out["counterexamples"]))
    summary = {
        "n": out["n"],
        "eps": args.eps,
        "clean_acc": out["clean_acc"],
        "robust_acc": out["robust_acc"],
        "counterexamples": len(out["counterexamples"]),
        "seconds": round(seconds, 3),
    }
    if args.json:
        print_json(summary)
    else:
        print(
            f"clean accuracy {summary['clean_acc']:.4f}, PGD robust accuracy "
            f"{summary['robust_acc']:.4f} at eps={args.eps} on {summary['n']} samples "
            f"({summary['counterexamples']} counterexamples, {seconds:.1f} s)"
        )
    return 0
