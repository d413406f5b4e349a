"""``qcert quantize FLOAT_MODEL --strategy S --avg-bits B --calib-data NAME``: per-layer bit widths
and clipping ranges for a float model (Lipschitz-guided, MSE or uniform), then clean, PGD and
QA-IBP-certified accuracy of the integer network (docs/layerwise.md)."""

from __future__ import annotations

import argparse

from qcert.cli.common import (
    add_command,
    check_outputs,
    finite_float,
    nonneg_int,
    positive_int,
    print_json,
)


def eps_list(text: str) -> list[int]:
    """``"25,76"`` → ``[25, 76]``: non-negative whole numbers of input levels."""
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            v = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated whole numbers of input levels, got {text!r}"
            ) from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"eps must be non-negative, got {v}")
        out.append(v)
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "quantize", "per-layer quantization of a float model under a bit budget", __doc__
    )
    p.add_argument("float_model", help="float model file (float.safetensors)")
    p.add_argument("--strategy", required=True, choices=["lipschitz", "uniform", "mse"])
    p.add_argument(
        "--avg-bits",
        type=finite_float,
        required=True,
        help="budget: parameter-weighted average weight bit width (2..8; whole for uniform)",
    )
    p.add_argument("--calib-data", required=True, help="dataset: calibration from its train split")
    p.add_argument("--data-root", default=None, help="folder with the dataset files")
    p.add_argument("--calib-n", type=positive_int, default=512, help="calibration samples")
    p.add_argument("--eps", type=eps_list, default=[25, 76], help="evaluation radii, e.g. 25,76")
    p.add_argument(
        "--search-eps",
        type=nonneg_int,
        default=None,
        help="radius of the metric's PGD points (default: the float model's training eps)",
    )
    p.add_argument("--n-eval", type=positive_int, default=1000, help="first N test samples")
    p.add_argument("--pgd-steps", type=positive_int, default=20)
    p.add_argument("--restarts", type=positive_int, default=1)
    p.add_argument("--pgd-loss", choices=["targeted", "margin"], default="targeted")
    p.add_argument("--norm", choices=["2", "inf"], default="2", help="norm of the metric")
    p.add_argument(
        "--weight-term",
        choices=["operator", "data"],
        default="operator",
        help="metric's weight term: ‖ΔW‖·E‖a‖ (operator) or E‖ΔW a‖ (data, tighter)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the quantized network to this .qnn file")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qcert.layerwise.pipeline import quantize_float_model

    check_outputs([args.float_model, args.data_root], {"--out": args.out})
    res = quantize_float_model(
        args.float_model,
        args.strategy,
        args.avg_bits,
        args.calib_data,
        eps=args.eps,
        search_eps=args.search_eps,
        data_root=args.data_root,
        calib_n=args.calib_n,
        n_eval=args.n_eval,
        out=args.out,
        norm=args.norm,
        weight_term=args.weight_term,
        pgd_steps=args.pgd_steps,
        restarts=args.restarts,
        pgd_loss=args.pgd_loss,
        seed=args.seed,
        progress=not args.json,
    )
    if args.json:
        print_json(res)
        return 0
    print(f"{res['strategy']}: bits {res['bits']} (average {res['avg_bits']:.3f})")
    print(f"clean accuracy {res['clean_acc']:.4f} on {res['n_eval']} samples")
    for e, acc in res["pgd_acc"].items():
        cert = res["ibp_certified_acc"][e]
        print(f"ε={e}: PGD accuracy {acc:.4f}, QA-IBP certified {cert:.4f}")
    if res["out"]:
        print(f"wrote {res['out']}")
    return 0
