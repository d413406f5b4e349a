"""``qcert train``: QA-IBP certified training and the qat / float / float-ibp baselines, noise
training for randomized smoothing (``--method noise --sigma S``) and PGD adversarial training of a
float network (``--method pgd``, for ``qcert quantize``), all on one training loop.

Writes DIR/model.qnn (``--method pgd``: DIR/float.safetensors), DIR/metrics.json and
DIR/checkpoint.safetensors (every epoch; --resume continues it). See docs/training.md.
"""

from __future__ import annotations

import argparse

from qcert.cli.common import (
    add_command,
    check_outputs,
    console,
    finite_float,
    nonneg_int,
    positive_int,
    print_json,
)


def _bits(text: str) -> int | list[int]:
    try:
        vals = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a bit width or a comma list of widths, got {text!r}"
        ) from None
    return vals[0] if len(vals) == 1 else vals


def register(sub: argparse._SubParsersAction) -> None:
    from qcert.quant.floatmodel import ARCHS, DEFAULT_ARCH
    from qcert.train.config import METHODS, TrainConfig

    d = TrainConfig(dataset="", out="")
    p = add_command(
        sub,
        "train",
        "train a quantized network (QA-IBP certified training or a baseline)",
        __doc__,
        raw=True,
    )
    p.add_argument(
        "--dataset", required=True, help="mnist, digits, mnist-idx, fashion-mnist, cifar10"
    )
    p.add_argument("--data-root", default=None, help="folder with the dataset files (IDX, CIFAR)")
    p.add_argument("--arch", default=DEFAULT_ARCH, help=f"one of {', '.join(ARCHS)}")
    p.add_argument("--method", default="qa-ibp", help=f"one of {', '.join(METHODS)}")
    p.add_argument(
        "--sigma",
        type=finite_float,
        default=d.sigma,
        help="noise level of --method noise, in [0,1] units (as qcert smooth)",
    )
    p.add_argument(
        "--pgd-train-steps",
        type=positive_int,
        default=d.pgd_train_steps,
        help="PGD steps of --method pgd",
    )
    p.add_argument(
        "--pgd-step-size", type=finite_float, default=None, help="PGD step of --method pgd"
    )
    p.add_argument(
        "--eps", type=int, default=d.eps, help="training radius in input steps (pixel levels)"
    )
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--time-budget", type=finite_float, default=None, metavar="MINUTES")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.safetensors")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--lr", type=finite_float, default=None, help="learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=finite_float, default=None, help="default 5e-5 (pgd: 0)")
    p.add_argument("--seed", type=nonneg_int, default=d.seed)
    p.add_argument(
        "--bits", type=_bits, default=d.bits, help="one width for all layers, or a comma list"
    )
    p.add_argument("--n-train", type=positive_int, default=None)
    p.add_argument(
        "--n-test", type=positive_int, default=None, help="first N test samples (pgd: 1000)"
    )
    p.add_argument("--robust-loss", default=d.robust_loss, help="ce or hinge")
    p.add_argument("--kappa", type=finite_float, default=d.kappa, help="final robust-loss weight")
    p.add_argument(
        "--lambda", dest="lam", type=finite_float, default=d.lam, help="final width weight"
    )
    p.add_argument(
        "--warmup", type=finite_float, default=None, help="share of plain training (0.1; pgd: 0)"
    )
    p.add_argument(
        "--ramp", type=finite_float, default=None, help="share of the ε/κ/λ ramp (0.5; pgd: 0.3)"
    )
    p.add_argument(
        "--augment",
        type=nonneg_int,
        default=d.augment,
        metavar="PIXELS",
        help="pad-and-crop shift (0: off)",
    )
    p.add_argument(
        "--eval-eps", type=nonneg_int, nargs="*", default=[], help="more radii to certify"
    )
    p.add_argument("--pgd-steps", type=nonneg_int, default=d.pgd_steps, help="0: skip PGD")
    p.add_argument(
        "--pgd-n", type=positive_int, default=None, help="PGD on the first N test samples only"
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads for torch (1 is fastest on a CPU shared with other jobs)",
    )
    p.add_argument("--json", action="store_true", help="print metrics.json to stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from qcert.train import TrainConfig, train

    check_outputs([args.data_root], {}, folders={"--out": args.out})
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        dataset=args.dataset,
        out=args.out,
        arch=args.arch,
        method=args.method,
        eps=args.eps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        bits=args.bits,
        n_train=args.n_train,
        n_test=args.n_test,
        robust_loss=args.robust_loss,
        kappa=args.kappa,
        lam=args.lam,
        warmup=args.warmup,
        ramp=args.ramp,
        augment=args.augment,
        time_budget=args.time_budget,
        resume=args.resume,
        data_root=args.data_root,
        eval_eps=list(args.eval_eps),
        pgd_steps=args.pgd_steps,
        pgd_n=args.pgd_n,
        sigma=args.sigma,
        pgd_train_steps=args.pgd_train_steps,
        pgd_step_size=args.pgd_step_size,
    )
    quiet = args.json
    res = train(
        cfg,
        progress=None if not quiet else False,
        log=None if quiet else (lambda m: console.print(m, highlight=False)),
    )
    m = res.metrics
    if args.json:
        print_json(m)
        return 0
    print(
        f"{m['method']} {m['arch']} on {m['dataset']}: {m['epochs']} epochs, {m['seconds']:.0f} s"
    )
    if "ibp_certified_acc" in m:
        cert = ", ".join(f"ε={k}: {v:.4f}" for k, v in m["ibp_certified_acc"].items())
        pgd = "-"
        if m["pgd_acc"] is not None:
            pgd = f"{m['pgd_acc']:.4f} (ε={m['pgd_eps']}, {m['pgd_n']} samples)"
        print(f"clean accuracy {m['clean_acc']:.4f} on {m['n_test']} test samples")
        print(f"certified (exact QA-IBP) {cert}")
        print(f"PGD accuracy {pgd}")
    else:  # pgd: a float model, measured as a float model
        print(f"float clean accuracy {m['clean_acc']:.4f} on {m['n_eval']} test samples")
        print(f"float PGD accuracy {m['pgd_acc']:.4f} (ε={m['eps']}, {m['pgd_steps_eval']} steps)")
    print(f"wrote {res.model_path} and {res.metrics_path}")
    return 0
