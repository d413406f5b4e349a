"""The main job behind ``make demo``: MNIST → float training → 8-bit QNetwork → exact evaluation.

Run with ``python -m qcert.demo [--out DIR] [--seconds S]``. It trains a small float network for about
a minute on the offline MNIST, converts it to an 8-bit integer network with ``from_float``, saves the
``.qnn`` model, and compares the float accuracy with the integer accuracy computed by the reference
executor.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from qcert.data import load
from qcert.quant import from_float, load_model, save_model
from qcert.quant.evaluate import accuracy

console = Console()


def train_float(
    images: torch.Tensor, labels: torch.Tensor, seconds: float, seed: int = 0
) -> nn.Sequential:
    """A small float MLP trained with Adam for about ``seconds`` (inputs scaled by 1/256)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = images.float() / 256.0
    t0, step, epoch = time.perf_counter(), 0, 0
    while time.perf_counter() - t0 < seconds and epoch < 20:
        perm = torch.randperm(x.shape[0])
        for s in range(0, x.shape[0], 128):
            idx = perm[s : s + 128]
            loss = nn.functional.cross_entropy(model(x[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if time.perf_counter() - t0 > seconds:
                break
        epoch += 1
    console.print(f"trained the float MLP for {step} steps ({time.perf_counter() - t0:.0f} s)")
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qcert.demo", description=__doc__)
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--seconds", type=float, default=45.0, help="float training time")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    t0 = time.perf_counter()
    train = load("mnist", "train")
    test = load("mnist", "test")
    console.print(f"MNIST: {len(train)} train / {len(test)} test images, uint8 pixels")

    model = train_float(train.images, train.labels, args.seconds)
    with torch.no_grad():
        float_acc = float(
            (model(test.images.float() / 256.0).argmax(1) == test.labels).float().mean()
        )

    rows = []
    for bits in (8, 4):
        net = from_float(model, train.images[:2000], bits=bits, input_scale=1.0 / 256.0)
        path = out / f"mnist-mlp-int{bits}.qnn"
        save_model(net, path)
        net = load_model(path)  # evaluate what was saved
        t1 = time.perf_counter()
        int_acc = accuracy(net, test.images, test.labels)
        secs = time.perf_counter() - t1
        rows.append((bits, int_acc, secs, path, net.weight_bytes()))

    table = Table(title="MNIST test accuracy: float vs exact integer execution")
    for col in ("model", "accuracy", "weights", "eval time", "file"):
        table.add_column(col)
    table.add_row(
        "float32 MLP",
        f"{float_acc:.4f}",
        f"{sum(p.numel() for p in model.parameters()) * 4} B",
        "",
        "",
    )
    for bits, acc, secs, path, nbytes in rows:
        table.add_row(
            f"int{bits} QNetwork", f"{acc:.4f}", f"{nbytes} B", f"{secs:.2f} s", str(path)
        )
    console.print(table)
    summary = {
        "float_acc": float_acc,
        "int_acc": {str(b): a for b, a, *_ in rows},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"models and summary.json written to {out}/ in {summary['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
