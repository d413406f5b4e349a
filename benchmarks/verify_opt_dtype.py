"""float32 against float64 optimization steps in the linear-bound branch and bound
(``LinearBabOptions.opt_dtype``), side by side in one process.

    .venv/bin/python benchmarks/verify_opt_dtype.py [--model M.qnn] [--arch cnn|mlp] [--n 4]
        [--eps 2] [--timeout 10] [--batch 64]

Without ``--model`` it trains a small MNIST network (``--arch``, default a CNN) for a few seconds
and quantizes it with ``qcert.quant.from_float``. Two measurements, each setting in turn:

1. one optimization pass of ``LinearBab.bound`` (``iters`` steps, then the rigorous float64
   pass) on ``--batch`` copies of the root subproblem of the first query: seconds per pass;
2. the search on ``--n`` correctly classified test samples: verdicts (must agree where both
   decide) and subproblems explored per second.

Prints the float64 / float32 ratios (> 1: float32 is faster). Both settings return rigorous
float64 bounds; only the steps that choose the parameters differ.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from bench_common import train_for
from torch import nn

from qcert.bounds import eps_box
from qcert.data import load
from qcert.quant import from_float, load_model
from qcert.quant.network import QNetwork
from qcert.verify import OutputSpec
from qcert.verify.lbab import LinearBab, LinearBabOptions, linear_bab_search
from qcert.verify.linear import F64

DTYPES = ("float64", "float32")


def train(arch: str, seconds: float) -> QNetwork:
    torch.manual_seed(0)
    ds = load("mnist", "train", n=20000)
    x = ds.images.reshape(-1, 1, 28, 28).float() / 255
    if arch == "cnn":
        model: nn.Module = nn.Sequential(
            nn.Conv2d(1, 8, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 4, 2, 1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 7 * 7, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )
    else:
        model = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
            nn.Linear(64, 10),
        )  # fmt: skip
    train_for(model, x, ds.labels, seconds)
    return from_float(model, ds.images[:1000].reshape(-1, 1, 28, 28), bits=8)


def pass_seconds(
    search: LinearBab, lo: torch.Tensor, hi: torch.Tensor, spec: OutputSpec, batch: int, reps: int
) -> float:
    """Median seconds of one ``bound`` pass (``iters`` steps) on ``batch`` root copies."""
    flo, fhi = lo.reshape(1, -1), hi.reshape(1, -1)
    root = search.lb.refine(flo, fhi)
    bounds = [(l.expand(batch, -1).clone(), u.expand(batch, -1).clone()) for l, u in root]
    blo, bhi = flo.expand(batch, -1), fhi.expand(batch, -1)
    C = spec.A.to(F64).unsqueeze(0).expand(batch, -1, -1)
    thr = spec.b.to(F64).unsqueeze(0)
    mask = [torch.zeros_like(l, dtype=torch.bool) for l, _ in bounds]
    times = []
    for _ in range(reps):
        params = search.init_params(bounds, C.shape[1])
        t0 = time.perf_counter()
        with torch.enable_grad():
            search.bound(C, blo, bhi, bounds, params, search.opt.iters, mask, thr)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a .qnn MNIST model (default: train one)")
    p.add_argument("--arch", choices=("cnn", "mlp"), default="cnn")
    p.add_argument("--train-seconds", type=float, default=10.0)
    p.add_argument("--n", type=int, default=4, help="test samples searched")
    p.add_argument("--eps", type=int, default=2)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per query and setting")
    p.add_argument("--batch", type=int, default=64, help="subproblems in the timed pass")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    net = load_model(args.model) if args.model else train(args.arch, args.train_seconds)
    searchers = {d: LinearBab(net, LinearBabOptions(opt_dtype=d)) for d in DTYPES}
    ds = load("mnist", "test", n=max(args.n * 3, 10))
    images = ds.images.reshape(-1, *net.input_shape).to(torch.int64)
    correct = (net.predict(images) == ds.labels).nonzero().squeeze(1).tolist()[: args.n]
    if not correct:
        print("no correctly classified sample")
        return 1
    i0 = correct[0]
    lo, hi = eps_box(net, images[i0 : i0 + 1], args.eps)
    spec = OutputSpec.robustness(int(ds.labels[i0]), net.num_classes)
    per_pass = {
        d: pass_seconds(s, lo, hi, spec, args.batch, args.reps) for d, s in searchers.items()
    }
    print(
        f"one pass ({LinearBabOptions().iters} steps + rigorous pass, batch {args.batch}): "
        + ", ".join(f"{d} {t:.3f}s" for d, t in per_pass.items())
        + f"; ratio float64/float32 {per_pass['float64'] / per_pass['float32']:.2f}x",
        flush=True,
    )
    boxes = dict.fromkeys(DTYPES, 0)
    secs = dict.fromkeys(DTYPES, 0.0)
    disagree = 0
    for i in correct:
        lo, hi = eps_box(net, images[i : i + 1], args.eps)
        spec = OutputSpec.robustness(int(ds.labels[i]), net.num_classes)
        status = {}
        for d, s in searchers.items():
            t0 = time.perf_counter()
            res = linear_bab_search(net, lo, hi, spec, timeout=args.timeout, searcher=s)
            dt = time.perf_counter() - t0
            boxes[d] += res.boxes
            secs[d] += dt
            status[d] = res.status
            print(f"  #{i} {d}: {res.status} {dt:.2f}s {res.boxes} subproblems", flush=True)
        if "timeout" not in status.values() and len(set(status.values())) > 1:
            disagree += 1
    rate = {d: boxes[d] / max(secs[d], 1e-9) for d in DTYPES}
    print(
        "subproblems/s: "
        + ", ".join(f"{d} {r:.1f}" for d, r in rate.items())
        + f"; ratio float32/float64 {rate['float32'] / max(rate['float64'], 1e-9):.2f}x"
        + f"; verdicts disagreeing: {disagree}"
    )
    return 1 if disagree else 0


if __name__ == "__main__":
    sys.exit(main())
