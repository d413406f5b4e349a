"""The complete verifier (batched branch and bound, exact QA-IBP) against the MILP peer (HiGHS) on
the same quantized network and samples.

    .venv/bin/python benchmarks/verify_vs_milp.py [--model M.qnn] [--n 30] [--eps 1] [--timeout 30]

Without ``--model`` it trains a small MNIST MLP for a few seconds and quantizes it with
``qcert.quant.from_float``. Prints the agreement of the two methods on the queries both decide
(must be 100 %), the number each solves within the timeout, and the median time ratio MILP / BaB
(goal: >= 100). The MILP runs without the interval pre-filter (a pure MILP peer, as QVIP); the
ratio with the pre-filter, as ``verify_sample(method="milp")`` uses it, is printed too.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch
from bench_common import train_for
from torch import nn

from qcert.bounds import eps_box
from qcert.data import load
from qcert.quant import from_float, load_model
from qcert.quant.network import QNetwork
from qcert.verify import OutputSpec, Verifier, milp_search


def train_mlp(seconds: float, hidden: int) -> QNetwork:
    torch.manual_seed(0)
    ds = load("mnist", "train", n=20000)
    x = ds.images.reshape(-1, 784).float() / 255
    model = nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    train_for(model, x, ds.labels, seconds)
    return from_float(model, ds.images[:1000].reshape(-1, 784), bits=8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a .qnn MNIST model (default: train an MLP)")
    p.add_argument("--n", type=int, default=30, help="test samples")
    p.add_argument("--eps", type=int, default=1)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per query and method")
    p.add_argument("--train-seconds", type=float, default=8.0)
    p.add_argument("--hidden", type=int, default=32)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # a fair single-thread comparison (HiGHS runs its own threads)
    net = load_model(args.model) if args.model else train_mlp(args.train_seconds, args.hidden)
    ds = load("mnist", "test", n=args.n)
    images = ds.images.reshape(-1, *net.input_shape).to(torch.int64)
    labels = ds.labels
    correct = (net.predict(images) == labels).nonzero().squeeze(1).tolist()
    print(
        f"{len(correct)} correctly classified of {args.n}; eps={args.eps}; timeout {args.timeout}s"
    )
    bab = Verifier(net)
    rows = []
    for i in correct:
        x, y = images[i : i + 1], int(labels[i])
        rb = bab.sample(x, y, args.eps, args.timeout)
        lo, hi = eps_box(net, x, args.eps)
        spec = OutputSpec.robustness(y, net.num_classes)
        t0 = time.perf_counter()
        om = milp_search(net, lo, hi, spec, timeout=args.timeout, use_bounds=False)
        tm = time.perf_counter() - t0
        t0 = time.perf_counter()
        of = milp_search(net, lo, hi, spec, timeout=args.timeout, use_bounds=True)
        tf = time.perf_counter() - t0
        vm = {"safe": "robust", "unsafe": "vulnerable"}.get(om.status, "timeout")
        vf = {"safe": "robust", "unsafe": "vulnerable"}.get(of.status, "timeout")
        rows.append((i, rb.verdict, rb.seconds, vm, tm, vf, tf))
        print(
            f"  #{i}: bab {rb.verdict} {rb.seconds:.3f}s | milp {vm} {tm:.3f}s | "
            f"milp+bounds {vf} {tf:.3f}s",
            flush=True,
        )
    both = [r for r in rows if r[1] != "timeout" and r[3] != "timeout"]
    agree = sum(r[1] == r[3] for r in both)
    both_f = [r for r in rows if r[1] != "timeout" and r[5] != "timeout"]
    agree_f = sum(r[1] == r[5] for r in both_f)
    print(
        f"agreement BaB vs MILP: {agree}/{len(both)} decided by both "
        f"({100.0 * agree / max(1, len(both)):.1f} %); with the pre-filter {agree_f}/{len(both_f)}"
    )
    for name, k in (("BaB", 1), ("MILP", 3), ("MILP+bounds", 5)):
        solved = sum(r[k] != "timeout" for r in rows)
        print(
            f"{name:12s} solved {solved}/{len(rows)}, median {statistics.median([r[k + 1] for r in rows]):.4f}s"
        )
    if both:
        med = statistics.median(r[4] for r in both) / statistics.median(r[2] for r in both)
        geo = math.exp(statistics.mean(math.log(r[4] / r[2]) for r in both))
        med_f = statistics.median(r[6] for r in both) / statistics.median(r[2] for r in both)
        print(
            f"median time ratio MILP/BaB: {med:.1f}x (geometric mean of per-sample ratios "
            f"{geo:.1f}x); MILP+bounds/BaB: {med_f:.1f}x"
        )
    return 0 if agree == len(both) and agree_f == len(both_f) else 1


if __name__ == "__main__":
    sys.exit(main())
