"""``qcert export MODEL --onnx OUT.onnx``: write a bit-exact ONNX model and check it in onnxruntime.

The ``integer`` flavour (default) uses integer operators only; ``qdq`` uses QuantizeLinear /
DequantizeLinear around float operators and is refused where it would not be bit-exact (see
docs/export.md). After writing, onnxruntime's logits are compared with the reference executor on
random inputs (the corners of the input range included) and, with --dataset, on a dataset.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import torch

from qcert.cli.common import (
    add_onnx_checks,
    check_outputs,
    load_dataset_for,
    positive_int,
    print_json,
)
from qcert.export import FLAVOURS, compare_onnx, qdq_problems, random_inputs, to_onnx
from qcert.export.runtime import OPTIMIZATION_LEVELS
from qcert.quant import load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to bit-exact ONNX", description=__doc__)
    p.add_argument("model", help="path to a .qnn file")
    p.add_argument("--onnx", required=True, help="output .onnx path")
    p.add_argument("--flavour", choices=FLAVOURS, default="integer")
    p.add_argument(
        "--int64-only",
        action="store_true",
        help="integer flavour: int64 MatMul everywhere, no MatMulInteger/ConvInteger",
    )
    add_onnx_checks(
        p,
        "qdq flavour: write the graph even where it is not bit-exact (with a warning)",
        "random inputs to compare in onnxruntime after writing (0: none)",
    )
    p.add_argument("--dataset", default=None, help="also compare on this dataset's images")
    p.add_argument("--data-root", default=None)
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--n", type=positive_int, default=None, help="only the first N dataset images")
    p.add_argument(
        "--optimization",
        choices=OPTIMIZATION_LEVELS,
        default="all",
        help="onnxruntime graph optimization level of the check (default: its default, all)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_outputs([args.model, args.data_root], {"--onnx": args.onnx})
    net = load_model(args.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = to_onnx(
            net,
            args.onnx,
            args.flavour,
            int8_kernels=not args.int64_only,
            strict=not args.allow_inexact,
        )
    notes = [str(w.message) for w in caught]
    if args.flavour == "qdq" and args.optimization in ("extended", "all"):
        fused = [p for p in qdq_problems(net, fused_kernels=True) if p not in qdq_problems(net)]
        notes += fused
    ops = sorted({n.op_type for n in model.graph.node})
    result: dict = {"onnx": args.onnx, "flavour": args.flavour, "operators": ops, "checks": []}
    inputs = []
    if args.check:
        inputs.append(("random", random_inputs(net, args.check)))
    if args.dataset:
        images, _, _ = load_dataset_for(net, args.dataset, args.split, args.data_root, args.n)
        inputs.append((f"{args.dataset} {args.split}", images.to(torch.int64)))
    ok = True
    for label, x in inputs:
        r = compare_onnx(net, model, x, optimization=args.optimization)
        r["inputs"] = label
        result["checks"].append(r)
        ok = ok and r["equal_logits"] == r["n"]
    result["notes"] = notes
    if args.json:
        print_json(result)
    else:
        print(f"wrote {args.onnx} ({args.flavour}; operators: {', '.join(ops)})")
        for r in result["checks"]:
            print(
                f"onnxruntime ({args.optimization}) vs integer_forward on {r['n']} {r['inputs']} "
                f"inputs: {r['equal_logits']} equal logit rows, max |diff| {r['max_abs_diff']}; "
                f"{r['onnxruntime_images_per_s']:.0f} vs {r['reference_images_per_s']:.0f} images/s"
            )
    for note in notes:
        print(f"qcert export: warning: {note}", file=sys.stderr)
    if not ok:
        print(
            "qcert export: the ONNX model's logits differ from the reference executor "
            "(see the warnings above)",
            file=sys.stderr,
        )
        return 1
    return 0
