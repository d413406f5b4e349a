"""The networks of ``benchmarks/verify_suite.py``, trained and quantized with qcert and cached.

* ``qnn6``: MNIST MLP in the layout of the published QNN robustness benchmark: 784 → 64 hidden →
  32 outputs, argmax over all 32 (labels are 0..9), 6-bit signed weights and biases, unsigned 6-bit
  activations, signed 6-bit requantized logits, rounding half up. Float training (cross-entropy
  over the 32 outputs), then ``qcert.quant.from_float`` and a requantization of the logits.
* ``mlp8``: MNIST MLP 784-100-100-10, float training, ``from_float`` at 8 bits (logits are the
  last accumulators).
* ``cnn-qat``: the demo's ``cnn-small`` trained with ``qcert.train`` method ``qat`` (a time budget).

Each model is written to ``CACHE/NAME/model.qnn`` with ``model.json`` (how it was made, its test
accuracy) and reused when present.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcert.data import load
from qcert.quant import FixedPointFormat, QNetwork, QRequant, from_float, load_model, save_model
from qcert.quant.convert import frac_for

#: float models see pixel / 256: the real value of the uint8 input with 8 fractional bits
INPUT_SCALE = 1.0 / 256.0


def train_float_mlp(
    sizes: list[int], epochs: int, seed: int, say: Callable[[str], None]
) -> nn.Sequential:
    """A float MLP ``sizes[0] → … → sizes[-1]`` with ReLUs, trained on MNIST with Adam."""
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        mods.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            mods.append(nn.ReLU())
    model = nn.Sequential(*mods)
    ds = load("mnist", "train")
    x = ds.images.reshape(-1, 784).float() * INPUT_SCALE
    y = ds.labels
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * ((x.shape[0] + 127) // 128))
    gen = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        total = 0.0
        for s in range(0, x.shape[0], 128):
            idx = perm[s : s + 128]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.numel()
        say(f"  epoch {ep + 1}/{epochs}: loss {total / x.shape[0]:.4f}")
    return model.eval()


def requantize_logits(net: QNetwork, bits: int, calib: torch.Tensor) -> QNetwork:
    """``net`` with its logits requantized (half up) to a signed ``bits``-bit format whose
    fractional bits hold the largest |logit| seen on ``calib``."""
    with torch.no_grad():
        real = net(calib.to(torch.float64)).abs().max()
    fmt = FixedPointFormat(bits, True, frac_for(float(real), bits, True))
    return QNetwork([*net.layers, QRequant(fmt, "half_up")], net.input_shape, net.input_format)


def _calibration() -> torch.Tensor:
    return load("mnist", "train").images[:2000].reshape(-1, 784)


def build_qnn6(folder: Path, minutes: float, say: Callable[[str], None]) -> tuple[QNetwork, dict]:
    model = train_float_mlp([784, 64, 32], epochs=10, seed=0, say=say)
    calib = _calibration()
    net = from_float(model, calib, bits=6, bias_bits=6, input_scale=INPUT_SCALE)
    net = requantize_logits(net, 6, calib)
    how = "float MLP 784-64-32 (Adam, 10 epochs), from_float 6-bit weights/biases/activations, "
    return net, {"how": how + "6-bit signed logits, half up"}


def build_mlp8(folder: Path, minutes: float, say: Callable[[str], None]) -> tuple[QNetwork, dict]:
    model = train_float_mlp([784, 100, 100, 10], epochs=10, seed=0, say=say)
    net = from_float(model, _calibration(), bits=8, input_scale=INPUT_SCALE)
    return net, {"how": "float MLP 784-100-100-10 (Adam, 10 epochs), from_float 8 bits, half up"}


def build_cnn_qat(
    folder: Path, minutes: float, say: Callable[[str], None]
) -> tuple[QNetwork, dict]:
    """As the demo trains its QAT model (qcert.train, cnn-small, method qat, a time budget)."""
    from qcert.train import TrainConfig, train

    out = folder / "train"
    resume = (out / "checkpoint.safetensors").exists()
    cfg = TrainConfig(
        dataset="mnist", out=str(out), arch="cnn-small", method="qat", eps=1, epochs=50,
        time_budget=minutes, n_test=1000, pgd_n=100, resume=resume,
    )  # fmt: skip
    res = train(cfg, progress=None, log=say)
    return res.net, {
        "how": f"qcert.train cnn-small qat, {minutes:g} min budget",
        "train_out": "train",
    }


@dataclass(frozen=True)
class Network:
    name: str
    description: str
    build: Callable[[Path, float, Callable[[str], None]], tuple[QNetwork, dict]]


NETWORKS: dict[str, Network] = {
    n.name: n
    for n in (
        Network("qnn6", "MNIST MLP 784-64-32, 6 bits, requantized logits (QNN layout)", build_qnn6),
        Network("mlp8", "MNIST MLP 784-100-100-10, 8 bits (from_float)", build_mlp8),
        Network("cnn-qat", "MNIST cnn-small, 8 bits, QAT", build_cnn_qat),
    )
}


def mnist_test(net: QNetwork) -> tuple[torch.Tensor, torch.Tensor]:
    ds = load("mnist", "test")
    return ds.images.reshape(-1, *net.input_shape).to(torch.int64), ds.labels


def get_network(
    name: str, cache: Path, minutes: float, say: Callable[[str], None]
) -> tuple[QNetwork, dict[str, Any]]:
    """The cached model ``cache/name/model.qnn`` (built first if missing) and its ``model.json``."""
    folder = cache / name
    path, info_path = folder / "model.qnn", folder / "model.json"
    if path.exists() and info_path.exists():
        return load_model(path), json.loads(info_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    say(f"building {name}: {NETWORKS[name].description}")
    t0 = time.perf_counter()
    net, info = NETWORKS[name].build(folder, minutes, say)
    x, y = mnist_test(net)
    acc = float((net.predict(x) == y).double().mean())
    info = {
        "name": name,
        "description": NETWORKS[name].description,
        **info,
        "test_acc": round(acc, 4),
        "build_seconds": round(time.perf_counter() - t0, 1),
        "layers": [layer.config() for layer in net.layers],
    }
    save_model(net, path)
    info_path.write_text(json.dumps(info, indent=1) + "\n")
    say(f"{name}: test accuracy {acc:.4f} ({info['build_seconds']} s)")
    return net, info
