"""``qcert info MODEL``: layers, formats, parameter count and size of a .qnn model."""

from __future__ import annotations

import argparse
import os

from rich.console import Console
from rich.table import Table

from qcert.cli.common import print_json
from qcert.quant import load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a .qnn model", description=__doc__)
    p.add_argument("model", help="path to a .qnn file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    net = load_model(args.model)
    rows = net.summary()
    info = {
        "model": args.model,
        "input_shape": list(net.input_shape),
        "input_format": net.input_format.to_dict(),
        "input_range": list(net.input_range),
        "classes": net.classes,
        "logit_frac": net.logit_frac,
        "parameters": net.num_parameters(),
        "weight_bytes": net.weight_bytes(),
        "file_bytes": os.path.getsize(args.model),
        "accumulator_bits": net.accumulator_bits(),
        "layers": [
            {
                "index": r.index,
                "type": r.kind,
                "out_shape": list(r.out_shape),
                "out_frac": r.out_frac,
                "detail": r.detail,
                "params": r.params,
            }
            for r in rows
        ],
    }
    if args.json:
        print_json(info)
        return 0
    t = Table(title=f"{args.model}")
    for col in ("#", "layer", "output", "frac", "formats", "params"):
        t.add_column(col)
    for r in rows:
        shape = "×".join(map(str, r.out_shape))
        t.add_row(str(r.index), r.kind, shape, str(r.out_frac), r.detail, str(r.params))
    out = Console()
    out.print(t)
    out.print(
        f"input {'×'.join(map(str, net.input_shape))} {net.input_format} range {net.input_range}; "
        f"{net.num_classes} classes; {info['parameters']} parameters; "
        f"{info['weight_bytes']} bytes packed, {info['file_bytes']} bytes on disk; "
        f"largest accumulator {info['accumulator_bits']} bits"
    )
    return 0
