"""The CPU's ceiling for integer smoothing: peak int8 GEMM throughput over peak float32 GEMM.

A convolutional base classifier spends almost all its time in products; the integer path can be
at most about this much faster than the float path on them, whatever the executor does around
them. Runs, side by side in one process on one thread, a large ``M×K @ K×N`` product as

* float32 (``torch.mm``: MKL/oneDNN, AVX2/AVX-512 FMA),
* oneDNN's u8×s8 linear (``torch.ops.onednn.qlinear_pointwise``, the kernel the int8 executor
  uses; int32 accumulation),
* oneDNN's u8×s8 linear on weights within ±64 (what an exact product needs on CPUs whose kernel
  adds u8×s8 pairs in saturating int16, i.e. without VNNI: a full-range 8-bit weight then takes
  two such products, see docs/smoothing.md),

alternating them ``--rounds`` times and keeping each one's best time (the least disturbed by other
load), and prints GOPS and the ratio int8 / float32.

Usage: python benchmarks/int8_gemm_ceiling.py [--size 1024] [--rounds 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch


def best_time(fn: Callable[[], object], reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=1024, help="M = K = N")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    n = args.size
    gen = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (n, n), generator=gen, dtype=torch.int16).to(torch.uint8)
    w8 = torch.randint(-128, 128, (n, n), generator=gen, dtype=torch.int8)
    w64 = w8.clamp(-64, 64)
    xf, wf = x8.to(torch.float32), w8.to(torch.float32).t().contiguous()
    ones, zeros = torch.ones(n), torch.zeros(n, dtype=torch.int64)

    def onednn(w: torch.Tensor) -> Callable[[], object]:
        packed = torch.ops.onednn.qlinear_prepack(w, [n, n])
        return lambda: torch.ops.onednn.qlinear_pointwise(
            x8, 1.0, 0, packed, ones, zeros, None, 1.0, 0, torch.float32, "none", [None], ""
        )

    runs = {"float32": lambda: xf @ wf, "int8": onednn(w8), "int8 (|w| <= 64)": onednn(w64)}
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.rounds):
        for name, fn in runs.items():
            best[name] = min(best[name], best_time(fn, 3))
    ops = 2.0 * n**3
    out = {name: ops / t / 1e9 for name, t in best.items()}
    ratio = out["int8"] / out["float32"]
    ratio64 = out["int8 (|w| <= 64)"] / out["float32"]
    if args.json:
        print(
            json.dumps({"gops": out, "int8_over_float32": ratio, "int8_64_over_float32": ratio64})
        )
        return
    for name, g in out.items():
        print(f"{name:18s} {g:8.1f} GOPS")
    print(f"int8 / float32: {ratio:.2f}x (weights within ±64: {ratio64:.2f}x)")


if __name__ == "__main__":
    main()
