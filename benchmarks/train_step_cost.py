"""Cost of one QA-IBP training step over one plain QAT step (same batch, same network).

A QA-IBP step runs the fake-quant forward (the clean cross-entropy) plus the interval pass in
center/radius form (two affine ops per layer, the requantization on both bounds) with the margin
fusion, and the backward of all of it. Goal: ratio ≤ 3.

    .venv/bin/python benchmarks/train_step_cost.py [--arch cnn-small] [--batch 128] [--reps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from qcert.data import load
from qcert.train.base import ScheduleValues
from qcert.train.config import TrainConfig
from qcert.train.qaibp import QAIBPMethod, QATMethod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", default="cnn-small")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--eps", type=float, default=4.1)
    args = ap.parse_args()

    images, labels = load(args.dataset, "train", n=args.batch)
    x, y = images.float(), labels
    shape = tuple(x.shape[1:])
    classes = [str(i) for i in range(10)]
    cfg = TrainConfig(dataset=args.dataset, out="", arch=args.arch)
    methods = {
        "qat": (QATMethod(cfg, shape, 10, classes), ScheduleValues(0.0, 0.0, 0.0, True)),
        "qa-ibp": (
            QAIBPMethod(cfg, shape, 10, classes),
            ScheduleValues(args.eps, 0.5, 1e-3, False),
        ),
    }
    # the same weights in both
    methods["qa-ibp"][0].model.load_state_dict(methods["qat"][0].model.state_dict())
    opts = {k: torch.optim.AdamW(m.model.parameters(), lr=1e-4) for k, (m, _) in methods.items()}

    def step(name: str) -> float:
        m, sv = methods[name]
        t = time.perf_counter()
        loss, _ = m.loss(x, y, sv)
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()
        return time.perf_counter() - t

    for name in methods:  # warm-up (allocator, oneDNN primitives)
        for _ in range(3):
            step(name)
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(args.reps):  # interleaved, so that load from other processes hits both
        for name in methods:
            times[name].append(step(name))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{args.arch}, batch {args.batch} of {args.dataset}, {torch.get_num_threads()} threads, "
        f"median of {args.reps}"
    )
    for k, v in med.items():
        print(f"  {k:7s} step: {1000 * v:8.2f} ms")
    print(f"  ratio qa-ibp / qat: {med['qa-ibp'] / med['qat']:.2f} (goal ≤ 3)")


if __name__ == "__main__":
    main()
