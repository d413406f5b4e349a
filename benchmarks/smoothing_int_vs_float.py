"""Integer vs float randomized smoothing on the same models and inputs, per model.

For each model (``--models``: ``mlp-small``, ``cnn-small``, ``cnn-medium``, qcert's architectures on
MNIST), two measurements side by side in one process:

1. Throughput of the base classifier under noise, per 1,000 noisy copies of one MNIST test image
   (median of ``--repeats``, each path in a block of its own after warm-up): the integer path (fused
   discrete-Gaussian noise kernel, then the int8 executor: oneDNN's direct u8 × s8 kernels where
   exact, ``torch._int_mm`` or the reference code elsewhere) and the float path (``torch.randn``
   noise, the float32 twin on the fastest of three float32 CPU forms measured here: eager, eager
   channels-last, TorchScript frozen and optimized for inference (oneDNN)), split into noise and
   network time. With ``--all-executors`` also the reference and onnxruntime executors.
2. CERTIFY on ``--samples`` MNIST test inputs (every ``10000 / samples``-th) with n = ``--n``,
   n0 = 100, α = 0.001 on each path: noisy samples per second and certified accuracy at
   r = 0, 0.25, 0.5, 0.75, 1.0 (the issue's goal: within one point).

Models: trained with qcert itself (``--method noise``, σ = ``--sigma``, ``--train-minutes`` each, on
MNIST) and cached under ``--cache`` (reused when present), or, with ``--train-minutes 0``, the
architecture's random initialisation converted by ``from_float`` (speed only: its accuracy is
chance). ``--weight-bits 7`` quantizes weights to 7 bits (no residual product on AVX2 CPUs).
Each result says which was used. ``--threads`` (default 1) sets torch's and numba's threads: the
default measures one core, which is what a shared machine gives reliably; both paths use the same.

Usage:
  python benchmarks/smoothing_int_vs_float.py [--models mlp-small,cnn-small,cnn-medium]
      [--sigma 0.25] [--samples 20] [--n 2000] [--repeats 15] [--threads 1] [--json]
With ``--json`` it prints one JSON list, an object per model with ``model``, ``per_1000_ratio``,
``certify_ratio`` (integer speed over float), ``accuracy_gap`` (largest certified-accuracy difference
over the radii, in points of 1.0) and the details.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numba
import torch

from qcert.data import load
from qcert.quant import QNetwork, from_float, load_model, to_float
from qcert.quant.floatmodel import build_float
from qcert.smoothing.smooth import FloatSmoothing, IntegerSmoothing

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if "flags" in ln), [])
    keep = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return " ".join(keep) or "none of avx2/avx512/vnni"


def get_model(arch: str, args: argparse.Namespace, calib: torch.Tensor) -> tuple[QNetwork, str]:
    """The benchmark's model of ``arch`` and a line saying what it is."""
    wb = args.weight_bits
    if args.train_minutes <= 0:
        torch.manual_seed(0)
        f = build_float(arch, (1, 28, 28), 10).eval()
        net = from_float(f, calib, bits=8, weight_bits=wb)
        return net, f"untrained: random init (seed 0) → from_float, {wb}-bit weights"
    out = Path(args.cache) / f"{arch}-{args.method}-{args.sigma:g}-w{wb}-{args.train_minutes:g}min"
    model = out / "model.qnn"
    if not model.exists():
        from qcert.train import TrainConfig, train

        print(
            f"training {arch} ({args.method}, {args.train_minutes:g} min) → {out}", file=sys.stderr
        )
        if wb != 8:
            sys.exit("--weight-bits other than 8 needs --train-minutes 0 (from_float)")
        cfg = TrainConfig(
            dataset="mnist", out=str(out), arch=arch, method=args.method, sigma=args.sigma,
            epochs=50, time_budget=args.train_minutes, n_test=500,
        )  # fmt: skip
        train(cfg, progress=False)
    return load_model(model), f"trained: qcert {args.method} σ={args.sigma:g}, " + (
        f"{args.train_minutes:g} min on MNIST ({model})"
    )


def fastest_float(net: QNetwork, x: torch.Tensor) -> tuple[torch.nn.Module, str, dict[str, float]]:
    """The float twin in the fastest of three float32 forms on a batch like ``x``."""
    eager = to_float(net)
    forms: dict[str, torch.nn.Module] = {"eager": eager}
    conv = any(isinstance(m, torch.nn.Conv2d) for m in eager)
    if conv:
        forms["channels-last"] = _ChannelsLast(to_float(net).to(memory_format=torch.channels_last))
    with torch.no_grad():
        forms["torchscript-frozen"] = torch.jit.optimize_for_inference(
            torch.jit.script(to_float(net))
        )
    times = {}
    with torch.no_grad():
        for name, m in forms.items():
            for _ in range(3):
                m(x)
            ts = []
            for _ in range(7):
                t0 = time.perf_counter()
                m(x)
                ts.append(time.perf_counter() - t0)
            times[name] = 1000 * statistics.median(ts)
    best = min(times, key=times.__getitem__)
    return forms[best], best, times


class _ChannelsLast(torch.nn.Module):
    def __init__(self, m: torch.nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x.contiguous(memory_format=torch.channels_last))


def timed(noise_fn, net_fn, repeats: int) -> dict[str, float]:  # noqa: ANN001
    """Median ms of noise, network and total over ``repeats`` rounds after three warm-ups."""
    parts: dict[str, list[float]] = {"noise": [], "network": [], "total": []}
    for rep in range(repeats + 3):
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


def certify_all(smoother, x: torch.Tensor, labels: torch.Tensor, idx: list[int], n: int):  # noqa: ANN001
    """CERTIFY on the inputs ``idx``: (noisy samples per second, certified accuracy per radius)."""
    samples = 0
    seconds = 0.0
    ok = {r: 0 for r in RADII}
    for i in idx:
        res = smoother.certify(x[i], 100, n, 0.001, seed=0, idx=i)
        samples += res.noisy_samples
        seconds += res.seconds
        for r in RADII:
            ok[r] += int(res.predict == int(labels[i]) and res.radius >= r)
    return samples / seconds, {str(r): ok[r] / len(idx) for r in RADII}


def bench_model(arch: str, args: argparse.Namespace, x: torch.Tensor, labels: torch.Tensor) -> dict:
    net, what = get_model(arch, args, x[:500])
    k = 1000
    ints = IntegerSmoothing(net, args.sigma, batch=k, executor="int8")
    floats = FloatSmoothing(net, args.sigma, batch=k)
    batch = floats.noisy(x[0], k, floats.generator(1, 0, 1))
    model, form, forms = fastest_float(net, batch)
    floats.model = model  # type: ignore[assignment]
    ms = {
        "int": timed(lambda rep: ints.noisy(x[0], k, ints.generator(1, rep, 1)), ints.classify,
                     args.repeats),
        "float": timed(lambda rep: floats.noisy(x[0], k, floats.generator(1, rep, 1)),
                       floats.classify, args.repeats),
    }  # fmt: skip
    if args.all_executors:
        for e in ("torch", "onnx"):
            s = IntegerSmoothing(net, args.sigma, batch=k, executor=e)
            ms[f"int ({e})"] = timed(
                lambda rep, s=s: s.noisy(x[0], k, s.generator(1, rep, 1)), s.classify, 3
            )
    from qcert.quant.int8 import Int8Executor

    ex = Int8Executor(net, probes=8)
    result: dict = {
        "model": arch,
        "per_1000_ratio": ms["float"]["total"] / ms["int"]["total"],
        "certify_ratio": None,
        "accuracy_gap": None,
        "what": what,
        "ms_per_1000": ms,
        "network_ratio": ms["float"]["network"] / ms["int"]["network"],
        "noise_ratio": ms["float"]["noise"] / ms["int"]["noise"],
        "float_form": form,
        "float_forms_ms": forms,
        "int8_layers": {"fast": ex.fast_layers, "onednn": ex.onednn_layers},
        "int8_notes": ex.notes,
    }
    if args.samples > 0:
        step = max(1, x.shape[0] // args.samples)
        idx = list(range(0, x.shape[0], step))[: args.samples]
        rate_i, acc_i = certify_all(ints, x, labels, idx, args.n)
        rate_f, acc_f = certify_all(floats, x, labels, idx, args.n)
        result.update(
            certify_ratio=rate_i / rate_f,
            accuracy_gap=max(abs(acc_i[r] - acc_f[r]) for r in acc_i),
            certify={
                "inputs": len(idx), "n": args.n, "n0": 100, "alpha": 0.001,
                "int": {"noisy_samples_per_second": rate_i, "certified_acc": acc_i},
                "float": {"noisy_samples_per_second": rate_f, "certified_acc": acc_f},
            },
        )  # fmt: skip
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="mlp-small,cnn-small,cnn-medium")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--samples", type=int, default=20, help="test inputs for CERTIFY (0: skip)")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=15, help="rounds of the per-1,000 timing")
    p.add_argument("--threads", type=int, default=1, help="torch and numba threads")
    p.add_argument("--train-minutes", type=float, default=1.0, help="0: untrained models")
    p.add_argument("--method", default="noise")
    p.add_argument("--weight-bits", type=int, default=8)
    p.add_argument("--cache", default="runs/bench-smoothing", help="trained models' folder")
    p.add_argument("--all-executors", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    test = load("mnist", "test")
    x = test.images.reshape(-1, 1, 28, 28)
    results = [bench_model(a, args, x, test.labels) for a in args.models.split(",") if a]
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(f"CPU: {cpu_flags()}; threads {args.threads}; σ = {args.sigma}")
    for r in results:
        print(f"\n{r['model']}: {r['what']}; float form {r['float_form']}")
        print(f"  int8 layers: {r['int8_layers']}")
        for name, m in r["ms_per_1000"].items():
            print(f"  {name:14s} noise {m['noise']:8.2f}  network {m['network']:8.2f}  "
                  f"total {m['total']:8.2f} ms per 1,000")  # fmt: skip
        print(f"  per 1,000 ratio {r['per_1000_ratio']:.2f}x (noise {r['noise_ratio']:.2f}x, "
              f"network {r['network_ratio']:.2f}x)")  # fmt: skip
        if r["certify_ratio"] is not None:
            c = r["certify"]
            print(f"  CERTIFY ({c['inputs']} inputs, n = {c['n']}): ratio "
                  f"{r['certify_ratio']:.2f}x, accuracy gap {100 * r['accuracy_gap']:.1f} points")  # fmt: skip
            for path in ("int", "float"):
                accs = " / ".join(f"{a:.3f}" for a in c[path]["certified_acc"].values())
                print(f"    {path:6s} {c[path]['noisy_samples_per_second']:10.0f} samples/s  "
                      f"certified acc at r = 0/0.25/0.5/0.75/1: {accs}")  # fmt: skip


if __name__ == "__main__":
    main()
