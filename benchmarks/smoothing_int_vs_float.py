"""Integer vs float randomized smoothing on the same model and inputs.

Prints noisy samples per second of the integer path (discrete Gaussian noise, integer network on the
onnxruntime integer engine and on the torch reference executor) and of the float path (Gaussian noise,
float32 twin network), the ratio int/float, and the certified accuracies of both at the radii
0, 0.25, 0.5, 0.75, 1.0. Usage:
  python benchmarks/smoothing_int_vs_float.py [MODEL.qnn] [--sigma 0.25] [--samples 50] [--n 10000]
Without a model it converts a small float MLP (untrained) to 8 bits: speed only.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from qcert.data import load
from qcert.quant import from_float, load_model
from qcert.smoothing.run import certify_dataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    test = load("mnist", "test")
    if args.model:
        net = load_model(args.model)
    else:
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
            nn.Linear(128, 10),
        )  # fmt: skip
        net = from_float(model.eval(), test.images[:500], bits=8)
    x = test.images.reshape(-1, *net.input_shape)
    skip = max(1, x.shape[0] // args.samples)
    runs = {}
    for name, arith, engine in [
        ("int (onnxruntime)", "int", "onnx"),
        ("int (torch reference)", "int", "torch"),
        ("float", "float", "torch"),
    ]:
        runs[name] = certify_dataset(
            net, x, test.labels, args.sigma, n=args.n, n0=100, arith=arith, engine=engine,
            batch=args.batch, skip=skip, n_samples=args.samples,
        )  # fmt: skip
    print(f"σ = {args.sigma}, {args.samples} MNIST test inputs, n = {args.n}, n0 = 100")
    print(
        f"{'path':24s} {'noisy samples/s':>16s}  certified accuracy at r = 0 / 0.25 / 0.5 / 0.75 / 1"
    )
    for name, s in runs.items():
        accs = " / ".join(f"{a:.3f}" for a in s["certified_acc"].values())
        print(f"{name:24s} {s['noisy_samples_per_second']:16.0f}  {accs}")
    f = runs["float"]["noisy_samples_per_second"]
    print(
        f"ratio int (onnxruntime) / float: {runs['int (onnxruntime)']['noisy_samples_per_second'] / f:.2f}x"
    )
    print(
        f"ratio int (torch) / float:       {runs['int (torch reference)']['noisy_samples_per_second'] / f:.2f}x"
    )


if __name__ == "__main__":
    main()
