"""The architecture registry: networks by name (:data:`ARCHS`), their concrete layers at an input
shape, their initialisation, and the float ``nn.Sequential`` of each (:func:`build_float`, for the
``float``, ``float-ibp`` and ``pgd`` training methods). :func:`qcert.train.archs.build_qnetwork`
builds the quantized network of the same layers with the QA-IBP formats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from qcert.errors import ConfigError

__all__ = [
    "ARCHS",
    "DEFAULT_ARCH",
    "ArchSpec",
    "Conv",
    "Dense",
    "arch_layers",
    "build_float",
    "get_arch",
    "init_affine",
]


@dataclass(frozen=True)
class Conv:
    """A convolution: ``filters`` output channels, square ``kernel``, ``stride``, zero ``padding``."""

    filters: int
    kernel: int
    stride: int
    padding: int = 0


@dataclass(frozen=True)
class Dense:
    """A fully connected hidden layer of ``units`` outputs."""

    units: int


@dataclass(frozen=True)
class ArchSpec:
    """A named architecture: hidden layers (each followed by ReLU), then a linear output layer."""

    name: str
    hidden: tuple[Conv | Dense, ...]
    description: str

    @property
    def num_affine(self) -> int:
        return len(self.hidden) + 1


ARCHS: dict[str, ArchSpec] = {
    a.name: a
    for a in (
        ArchSpec(
            "mlp-small",
            (Dense(256), Dense(128)),
            "flatten, dense 256, dense 128, dense K (fastest; a few seconds per MNIST epoch)",
        ),
        ArchSpec(
            "cnn-small",
            (Conv(16, 4, 2, 1), Conv(32, 4, 2, 1), Dense(100)),
            "conv (16,4,2,pad 1), conv (32,4,2,pad 1), dense 100, dense K "
            "(the 'small' certified-training CNN of Wong & Kolter 2018)",
        ),
        ArchSpec(
            "cnn-medium",
            (
                Conv(32, 3, 1, 1),
                Conv(32, 4, 2, 1),
                Conv(64, 3, 1, 1),
                Conv(64, 4, 2, 1),
                Dense(256),
            ),
            "conv (32,3,1,1) (32,4,2,1) (64,3,1,1) (64,4,2,1), dense 256, dense K",
        ),
        ArchSpec(
            "paper-mnist",
            (Conv(64, 5, 2), Conv(128, 3, 1), Conv(256, 3, 1), Conv(384, 3, 1), Conv(512, 3, 2))
            + (Dense(128),),
            "QA-IBP MNIST network: conv (64,5,2) (128,3,1) (256,3,1) (384,3,1) (512,3,2), "
            "dense 128, dense K; VALID padding (GPU-sized)",
        ),
        ArchSpec(
            "paper-cifar",
            (Conv(64, 5, 2), Conv(96, 3, 1), Conv(128, 3, 2), Dense(128)),
            "QA-IBP CIFAR-10 / Fashion-MNIST network: conv (64,5,2) (96,3,1) (128,3,2), "
            "dense 128, dense K; VALID padding",
        ),
    )
}

DEFAULT_ARCH = "cnn-small"


def get_arch(name: str) -> ArchSpec:
    if name not in ARCHS:
        raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(ARCHS)}")
    return ARCHS[name]


def _trunc_normal(shape: tuple[int, ...], std: float, gen: torch.Generator) -> torch.Tensor:
    w = torch.randn(shape, generator=gen) * std
    return w.clamp(-2 * std, 2 * std)


def _out_hw(h: int, w: int, c: Conv) -> tuple[int, int]:
    ho = (h + 2 * c.padding - c.kernel) // c.stride + 1
    wo = (w + 2 * c.padding - c.kernel) // c.stride + 1
    return ho, wo


def arch_layers(
    spec: ArchSpec, input_shape: Sequence[int], num_classes: int
) -> list[tuple[str, dict]]:
    """Concrete layer list with fan-ins: ('conv'|'dense'|'flatten', params)."""
    shape = tuple(int(s) for s in input_shape)
    layers: list[tuple[str, dict]] = []
    for layer in spec.hidden:
        if isinstance(layer, Conv):
            if len(shape) != 3:
                raise ConfigError(f"{spec.name}: a convolution needs C×H×W inputs, got {shape}")
            ho, wo = _out_hw(shape[1], shape[2], layer)
            if min(ho, wo) < 1:
                raise ConfigError(
                    f"{spec.name}: input {shape[1]}×{shape[2]} is too small for its convolutions"
                )
            layers.append(("conv", {"cin": shape[0], "spec": layer}))
            shape = (layer.filters, ho, wo)
        else:
            if len(shape) != 1:
                layers.append(("flatten", {}))
                shape = (math.prod(shape),)
            layers.append(("dense", {"fin": shape[0], "fout": layer.units}))
            shape = (layer.units,)
    if len(shape) != 1:
        layers.append(("flatten", {}))
        shape = (math.prod(shape),)
    layers.append(("dense", {"fin": shape[0], "fout": num_classes}))
    return layers


def init_affine(
    kind: str, p: dict, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """He-normal weights (truncated at 2σ) and zero biases."""
    if kind == "conv":
        c: Conv = p["spec"]
        shape: tuple[int, ...] = (c.filters, p["cin"], c.kernel, c.kernel)
        fan_in = p["cin"] * c.kernel * c.kernel
        extra = {"stride": c.stride, "padding": c.padding}
    else:
        shape = (p["fout"], p["fin"])
        fan_in = p["fin"]
        extra = {}
    w = _trunc_normal(shape, math.sqrt(2.0 / fan_in), gen)
    return w, torch.zeros(shape[0]), extra


def build_float(
    arch: str, input_shape: Sequence[int], num_classes: int, seed: int = 0
) -> nn.Sequential:
    """A freshly initialised float ``nn.Sequential`` of architecture ``arch`` (ReLU activations;
    seeded by ``seed``, the global random state is left unchanged); it expects inputs
    ``x_int * FLOAT_INPUT_SCALE``."""
    spec = get_arch(arch)
    layers = arch_layers(spec, input_shape, num_classes)
    gen = torch.Generator().manual_seed(int(seed))
    mods: list[nn.Module] = []
    n_dense = sum(1 for k, _ in layers if k == "dense")
    seen_dense = 0
    with torch.random.fork_rng(devices=[]):  # the layers' own default init draws globally
        for kind, p in layers:
            if kind == "flatten":
                mods.append(nn.Flatten())
                continue
            w, b, extra = init_affine(kind, p, gen)
            if kind == "conv":
                m: nn.Module = nn.Conv2d(
                    p["cin"], w.shape[0], w.shape[-1], extra["stride"], extra["padding"]
                )
            else:
                m = nn.Linear(p["fin"], p["fout"])
                seen_dense += 1
            with torch.no_grad():
                m.weight.copy_(w)  # type: ignore[operator]
                m.bias.copy_(b)  # type: ignore[operator]
            mods.append(m)
            if not (kind == "dense" and seen_dense == n_dense):
                mods.append(nn.ReLU())
    return nn.Sequential(*mods)
