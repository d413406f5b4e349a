"""Cost of the per-layer quantization search against one epoch of PGD adversarial training.

On one float model (a fresh ``cnn-small`` or ``mlp-small``; the search's cost does not depend on
the weights' values much), times ``qcert.layerwise.search.quantize`` for each strategy (calibration
PGD points, per-layer candidate tables, exact knapsack, building the QNetwork) and one epoch of PGD
training (``--steps`` PGD steps per batch of 128; timed over ``--batches`` batches and scaled to the
epoch's batch count), then prints seconds and the ratio search / epoch.
Usage: python benchmarks/quantize_search_cost.py [--arch cnn-small] [--dataset mnist] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from qcert.data import load
from qcert.layerwise.search import quantize
from qcert.train.base import ScheduleValues
from qcert.train.config import TrainConfig
from qcert.train.pgd import PGDMethod


def epoch_seconds(method: PGDMethod, x: torch.Tensor, y: torch.Tensor, args) -> float:  # noqa: ANN001
    """Seconds of one PGD-training epoch over ``x`` (the ``pgd`` method's step at full ε), from
    ``args.batches`` timed batches."""
    opt = torch.optim.AdamW(method.model.parameters(), lr=1e-3, weight_decay=0.0)
    sv = ScheduleValues(args.eps, 0.0, 0.0, False)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    n = min(args.batches, math.ceil(x.shape[0] / 128))
    method.model.train()
    t0 = time.perf_counter()
    for b in range(n):
        idx = perm[b * 128 : (b + 1) * 128]
        loss, _ = method.loss(x[idx], y[idx], sv)
        opt.zero_grad()
        loss.backward()
        opt.step()
    method.model.eval()
    return (time.perf_counter() - t0) / n * math.ceil(x.shape[0] / 128)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", default="cnn-small", choices=["cnn-small", "mlp-small"])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--eps", type=float, default=76)
    p.add_argument("--steps", type=int, default=7, help="PGD steps per training batch")
    p.add_argument("--batches", type=int, default=30, help="training batches timed")
    p.add_argument("--calib", type=int, default=512, help="calibration samples of the search")
    p.add_argument("--avg-bits", type=float, default=4)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train = load(args.dataset, "train")
    x, y = train.images.float(), train.labels
    cfg = TrainConfig(
        args.dataset, "", args.arch, "pgd", args.eps, pgd_train_steps=args.steps
    ).validate()
    method = PGDMethod(cfg, tuple(x.shape[1:]), len(train.classes), list(train.classes))
    model = method.float_model
    epoch = epoch_seconds(method, x, y, args)
    n_params = sum(p.numel() for p in model.module.parameters())
    print(f"{args.arch} on {args.dataset}: {n_params} params")
    print(f"one PGD-{args.steps} training epoch ({x.shape[0]} samples): {epoch:9.2f} s")
    print(f"{'strategy':10s} {'search s':>9s} {'search/epoch':>13s}  bits")
    cx, cy = train.images[: args.calib], train.labels[: args.calib]
    b = args.avg_bits if args.avg_bits == int(args.avg_bits) else math.floor(args.avg_bits)
    for strategy in ("lipschitz", "mse", "uniform"):
        budget = b if strategy == "uniform" else args.avg_bits
        t0 = time.perf_counter()
        eps = args.eps if strategy == "lipschitz" else None  # only lipschitz needs PGD points
        _, res = quantize(model, cx, cy, strategy, budget, eps=eps)
        s = time.perf_counter() - t0
        print(f"{strategy:10s} {s:9.2f} {s / epoch:13.4f}  {res.bits}")


if __name__ == "__main__":
    main()
