"""``qcert import MODEL.onnx --out MODEL.qnn``: read an ONNX graph into a .qnn model.

Reads qcert's own exports (QDQ with power-of-two scales, or integer graphs with the qcert metadata
that ``qcert export`` writes) and int8 models from onnxruntime's ``quantize_static`` (QDQ or
QOperator, any scales and zero points: the network onnxruntime's CPU kernels compute, whose input is
the quantized input codes; see docs/export.md). After reading, the imported model is compared with
onnxruntime on random inputs.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from qcert.cli.common import add_onnx_checks, check_outputs, print_json
from qcert.export import compare_onnx, from_onnx, random_inputs
from qcert.export.runtime import OPTIMIZATION_LEVELS
from qcert.quant import save_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="import an ONNX model into a .qnn file", description=__doc__)
    p.add_argument("onnx", help="path to a .onnx file")
    p.add_argument("--out", required=True, help="output .qnn path")
    add_onnx_checks(
        p,
        "accept a QDQ graph whose float32 arithmetic is not provably exact (warns)",
        "random inputs to compare with onnxruntime after reading (0: none)",
    )
    p.add_argument("--optimization", choices=OPTIMIZATION_LEVELS, default="all")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_outputs([args.onnx], {"--out": args.out})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = from_onnx(args.onnx, strict=not args.allow_inexact)
    save_model(net, args.out)
    result = {
        "out": args.out,
        "layers": [layer.kind for layer in net.layers],
        "input_shape": list(net.input_shape),
        "classes": net.num_classes,
        "notes": [str(w.message) for w in caught],
    }
    ok = True
    if args.check:
        r = compare_onnx(
            net, args.onnx, random_inputs(net, args.check), optimization=args.optimization
        )
        result["check"] = r
        ok = r["equal_logits"] == r["n"]
    if args.json:
        print_json(result)
    else:
        print(
            f"wrote {args.out}: {len(net.layers)} layers ({', '.join(result['layers'])}), "
            f"input {'×'.join(map(str, net.input_shape))}, {net.num_classes} classes"
        )
        if "check" in result:
            r = result["check"]
            print(
                f"integer_forward vs onnxruntime ({args.optimization}) on {r['n']} random inputs: "
                f"{r['equal_logits']} equal logit rows"
            )
    for note in result["notes"]:
        print(f"qcert import: warning: {note}", file=sys.stderr)
    if not ok:
        ort = net.meta.get("onnxruntime")
        why = ""
        if isinstance(ort, dict) and ort.get("pair_saturation") and ort.get("pair_saturation_cpu"):
            why = " (expected here: onnxruntime's int16 pair saturation, see the warning)"
        print(
            f"qcert import: the imported model differs from onnxruntime's results{why}",
            file=sys.stderr,
        )
        return 1
    return 0
