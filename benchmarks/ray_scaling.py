"""Samples per second of `smooth certify` over a local Ray cluster with 1 and with 2 workers.

Same 8-bit MNIST MLP, same test inputs and noise (seeded per sample) in both runs; prints samples/s of
each and the ratio 2 workers / 1 worker. Usage: python benchmarks/ray_scaling.py [--samples 12] [--n 4000]
"""

from __future__ import annotations

from bench_common import MLP, int8_model, int_options, mnist_float_models, per_second

from qcert.data import load
from qcert.parallel import shutdown
from qcert.smoothing.run import certify_dataset


def main() -> None:
    args = int_options(__doc__, samples=12, n=4000)
    test = load("mnist", "test", n=args.samples)
    net = int8_model(mnist_float_models()[MLP], test.images)
    rates = {}
    for workers in (1, 2):
        kw = dict(n=args.n, n0=100, batch=1000, ray=True, workers=workers)
        certify_dataset(
            net, test.images, test.labels, 0.25, n_samples=2, **kw
        )  # start Ray, warm up
        rates[workers] = per_second(
            args.samples, lambda kw=kw: certify_dataset(net, test.images, test.labels, 0.25, **kw)
        )
        shutdown()
        print(f"{workers} worker(s): {rates[workers]:.2f} samples/s (n={args.n} noisy draws each)")
    print(f"ratio 2 workers / 1 worker: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
