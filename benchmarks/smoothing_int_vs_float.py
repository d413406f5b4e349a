"""Integer vs float randomized smoothing on the same model and inputs.

Two measurements, side by side in one process:

1. Throughput of the base classifier under noise, per 1,000 noisy copies of one MNIST test image
   (median of interleaved repeats): the integer path (fused discrete-Gaussian noise kernel, then the
   int8 executor / the reference executor / onnxruntime) and the float path (torch.randn Gaussian
   noise, the float32 twin network), split into noise and network time, and the ratio int/float.
2. CERTIFY on ``--samples`` test inputs with n = ``--n``, n0 = 100, α = 0.001 on each path: noisy
   samples per second and certified accuracy at r = 0, 0.25, 0.5, 0.75, 1.0 (goal: within one point).

Usage:
  python benchmarks/smoothing_int_vs_float.py [MODEL.qnn] [--sigma 0.25] [--samples 50] [--n 10000]
Without a model it converts a small float MLP (untrained) to 8 bits: speed only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from bench_common import MLP, int8_model, mnist_float_models

from qcert.data import load
from qcert.quant import load_model
from qcert.quant.executor import EXECUTORS
from qcert.smoothing.run import certify_dataset
from qcert.smoothing.smooth import FloatSmoothing, IntegerSmoothing


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if "flags" in ln), [])
    keep = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return " ".join(keep) or "none of avx2/avx512/vnni"


def per_thousand(net, x: torch.Tensor, sigma: float, repeats: int) -> dict[str, dict[str, float]]:
    """Median ms per 1,000 noisy copies: noise, network and total, for every path. Each path runs
    its repeats in a block of its own (after a warm-up), so the thread pools of one executor do not
    spin into the next one's timing."""
    k = 1000
    out: dict[str, dict[str, float]] = {}

    def timed(noise_fn, net_fn) -> dict[str, float]:
        parts: dict[str, list[float]] = {"noise": [], "network": [], "total": []}
        for rep in range(repeats + 3):  # three warm-up rounds (compilation, caches, pools)
            t0 = time.perf_counter()
            q = noise_fn(rep)
            t1 = time.perf_counter()
            net_fn(q)
            t2 = time.perf_counter()
            if rep >= 3:
                parts["noise"].append(t1 - t0)
                parts["network"].append(t2 - t1)
                parts["total"].append(t2 - t0)
        return {name: 1000 * statistics.median(v) for name, v in parts.items()}

    for name in (*EXECUTORS, "float"):  # each built right before its block
        if name == "float":
            s = FloatSmoothing(net, sigma, batch=k)
        else:
            s = IntegerSmoothing(net, sigma, batch=k, executor=name)
        out[name] = timed(lambda rep, s=s: s.noisy(x, k, s.generator(1, rep, 1)), s.classify)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--samples", type=int, default=50, help="test inputs for CERTIFY (0: skip)")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=30, help="rounds of the per-1,000 timing")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    test = load("mnist", "test")
    if args.model:
        net = load_model(args.model)
    else:
        net = int8_model(mnist_float_models()[MLP], test.images[:500])
    x = test.images.reshape(-1, *net.input_shape)
    print(f"CPU: {cpu_flags()}; torch threads {torch.get_num_threads()}; σ = {args.sigma}")

    ms = per_thousand(net, x[0], args.sigma, args.repeats)
    print(f"\nms per 1,000 noisy samples (median of {args.repeats}):")
    print(f"{'path':22s} {'noise':>8s} {'network':>8s} {'total':>8s} {'samples/s':>10s}")
    for name, m in ms.items():
        label = "float" if name == "float" else f"int ({name})"
        rate = 1e6 / m["total"]
        print(f"{label:22s} {m['noise']:8.3f} {m['network']:8.3f} {m['total']:8.3f} {rate:10.0f}")
    f = ms["float"]
    for e in EXECUTORS:
        print(
            f"ratio int ({e}) / float: {f['total'] / ms[e]['total']:.2f}x "
            f"(noise {f['noise'] / ms[e]['noise']:.2f}x, network {f['network'] / ms[e]['network']:.2f}x)"
        )

    if args.samples <= 0:
        return
    skip = max(1, x.shape[0] // args.samples)
    runs = {}
    for name, arith, executor in [("int (int8)", "int", "int8"), ("float", "float", "int8")]:
        runs[name] = certify_dataset(
            net, x, test.labels, args.sigma, n=args.n, n0=100, arith=arith, executor=executor,
            batch=1000, skip=skip, n_samples=args.samples,
        )  # fmt: skip
    print(f"\nCERTIFY: {args.samples} MNIST test inputs, n = {args.n}, n0 = 100, α = 0.001")
    print(
        f"{'path':14s} {'noisy samples/s':>16s}  certified accuracy at r = 0 / 0.25 / 0.5 / 0.75 / 1"
    )
    for name, s in runs.items():
        accs = " / ".join(f"{a:.3f}" for a in s["certified_acc"].values())
        print(f"{name:14s} {s['noisy_samples_per_second']:16.0f}  {accs}")
    ratio = (
        runs["int (int8)"]["noisy_samples_per_second"] / runs["float"]["noisy_samples_per_second"]
    )
    gap = max(
        abs(a - b)
        for a, b in zip(
            runs["int (int8)"]["certified_acc"].values(), runs["float"]["certified_acc"].values()
        )
    )
    print(f"ratio int / float: {ratio:.2f}x; largest certified-accuracy gap {100 * gap:.1f} points")


if __name__ == "__main__":
    main()
