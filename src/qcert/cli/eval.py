"""``qcert eval MODEL --dataset NAME``: accuracy with the reference executor."""

from __future__ import annotations

import argparse
import time

from qcert.cli.common import add_dataset_args, load_dataset_for, positive_int, print_json
from qcert.progress import progress_task
from qcert.quant import load_model
from qcert.quant.accuracy import accuracy


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="accuracy of a model with the exact integer executor", description=__doc__
    )
    p.add_argument("model", help="path to a .qnn file")
    add_dataset_args(p)
    p.add_argument("--n", type=positive_int, default=None, help="only the first N samples")
    p.add_argument("--batch-size", type=positive_int, default=1000)
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    net = load_model(args.model)
    images, labels, _ = load_dataset_for(net, args.dataset, args.split, args.data_root, args.n)
    t0 = time.perf_counter()
    with progress_task("eval", images.shape[0], enabled=None if not args.json else False) as (
        prog,
        task,
    ):
        acc = accuracy(
            net,
            images,
            labels,
            args.batch_size,
            on_batch=(lambda k: prog.advance(task, k)) if prog is not None else None,
        )
    seconds = time.perf_counter() - t0
    result = {"accuracy": acc, "n": int(images.shape[0]), "seconds": round(seconds, 3)}
    if args.json:
        print_json(result)
    else:
        print(f"accuracy {acc:.4f} on {result['n']} {args.dataset} {args.split} samples")
    return 0
