"""Images per second of the reference executor and of the fake-quant forward on MNIST.

The reference executor is timed with its default arithmetic path (products in float64 where a static bound
proves them exact, else int64) and with ``arith_path="int64"`` (every product in int64).

Runs both on the same QNetworks (an MLP and a small CNN, 8-bit, converted from float models) over the
MNIST test set in one process and prints the images/s of each and the ratio fake-quant / reference.
Usage: python benchmarks/executor_speed.py [--n 10000] [--batch 1000]
"""

from __future__ import annotations

import torch
from bench_common import int8_model, int_options, mnist_float_models, per_second

from qcert.data import load


def timed(fn, x: torch.Tensor, batch: int) -> float:
    def run() -> None:
        with torch.no_grad():
            for s in range(0, x.shape[0], batch):
                fn(x[s : s + batch])

    return per_second(x.shape[0], run)


def main() -> None:
    args = int_options(__doc__, n=10000, batch=1000)
    test = load("mnist", "test", n=args.n)
    models = mnist_float_models()
    print(
        f"{'model':30s} {'reference':>11s} {'ref int64-only':>15s} {'fake-quant f32':>15s} "
        f"{'fake-quant f64':>15s} {'f32/reference':>14s}"
    )
    for name, model in models.items():
        net = int8_model(model, test.images[:500])
        x = test.images
        # warm up, and check the two paths agree on this data
        ref = net.integer_forward(x[:200])
        assert net.exact_in(torch.float64)
        assert torch.equal((net(x[:200].double()) * 2.0**net.logit_frac).to(torch.int64), ref)
        r_ref = timed(net.integer_forward, x, args.batch)
        r_i64 = timed(lambda b, net=net: net.integer_forward(b, arith_path="int64"), x, args.batch)
        r_f32 = timed(lambda b, net=net: net(b.float()), x, args.batch)
        r_f64 = timed(lambda b, net=net: net(b.double()), x, args.batch)
        print(
            f"{name:30s} {r_ref:9.0f}/s {r_i64:13.0f}/s {r_f32:13.0f}/s {r_f64:13.0f}/s "
            f"{r_f32 / r_ref:13.1f}x"
        )


if __name__ == "__main__":
    main()
