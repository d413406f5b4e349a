"""Architectures by name, built either as a :class:`~qcert.quant.QNetwork` with the QA-IBP
fixed-point formats (for ``qa-ibp`` / ``qat``) or as a float ``nn.Sequential`` (for ``float`` /
``float-ibp``, quantized afterwards by :func:`qcert.quant.from_float`).

Formats (as in the QA-IBP authors' code, generalised to a bit width ``b``):

* input: unsigned 8 bits, 8 fractional bits (pixel ``k`` stands for ``k/256``);
* weights: signed ``b`` bits, ``b-1`` fractional bits (range ``[-1, 1 - 2**(1-b)]``);
* biases: signed ``b`` bits, ``b-4`` fractional bits (3 integer bits and a sign: ``[-8, 8)``);
* hidden activations: unsigned ``b`` bits, ``b-3`` fractional bits (ReLU + saturation at 8);
* logits: the last layer's accumulators, not requantized; rounding half up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from qcert.errors import ConfigError
from qcert.quant.format import FixedPointFormat, Rounding
from qcert.quant.layers import QConv2d, QFlatten, QLayer, QLinear, QRequant
from qcert.quant.network import DEFAULT_INPUT_FORMAT, QNetwork

__all__ = [
    "ARCHS",
    "ArchSpec",
    "ConfigError",
    "Conv",
    "Dense",
    "build_float",
    "build_qnetwork",
    "layer_bits",
    "qat_formats",
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


def layer_bits(bits: int | Sequence[int], n_affine: int) -> list[int]:
    """One bit width per affine layer: an int for all of them, or a list of exactly ``n_affine``.

    Layer ``i``'s width is used for its weights, its bias and the activation that follows it.
    """
    vals = [int(bits)] * n_affine if isinstance(bits, int) else [int(b) for b in bits]
    if len(vals) != n_affine:
        raise ConfigError(f"{len(vals)} bit widths given for {n_affine} affine layers")
    for b in vals:
        if not 2 <= b <= 16:
            raise ConfigError(f"bit width {b} out of range 2..16")
    return vals


def qat_formats(bits: int) -> tuple[FixedPointFormat, FixedPointFormat, FixedPointFormat]:
    """(weight, bias, activation) formats of one layer at bit width ``bits`` (see module doc)."""
    return (
        FixedPointFormat(bits, True, bits - 1),
        FixedPointFormat(bits, True, bits - 4),
        FixedPointFormat(bits, False, bits - 3),
    )


def _trunc_normal(shape: tuple[int, ...], std: float, gen: torch.Generator) -> torch.Tensor:
    w = torch.randn(shape, generator=gen) * std
    return w.clamp(-2 * std, 2 * std)


def _out_hw(h: int, w: int, c: Conv) -> tuple[int, int]:
    ho = (h + 2 * c.padding - c.kernel) // c.stride + 1
    wo = (w + 2 * c.padding - c.kernel) // c.stride + 1
    return ho, wo


def _plan_shapes(
    spec: ArchSpec, input_shape: Sequence[int], num_classes: int
) -> list[tuple[str, dict]]:
    """Concrete layer list with fan-ins: ('conv'|'dense'|'flatten', params)."""
    shape = tuple(int(s) for s in input_shape)
    plan: list[tuple[str, dict]] = []
    for layer in spec.hidden:
        if isinstance(layer, Conv):
            if len(shape) != 3:
                raise ConfigError(f"{spec.name}: a convolution needs C×H×W inputs, got {shape}")
            ho, wo = _out_hw(shape[1], shape[2], layer)
            if min(ho, wo) < 1:
                raise ConfigError(
                    f"{spec.name}: input {shape[1]}×{shape[2]} is too small for its convolutions"
                )
            plan.append(("conv", {"cin": shape[0], "spec": layer}))
            shape = (layer.filters, ho, wo)
        else:
            if len(shape) != 1:
                plan.append(("flatten", {}))
                shape = (math.prod(shape),)
            plan.append(("dense", {"fin": shape[0], "fout": layer.units}))
            shape = (layer.units,)
    if len(shape) != 1:
        plan.append(("flatten", {}))
        shape = (math.prod(shape),)
    plan.append(("dense", {"fin": shape[0], "fout": num_classes}))
    return plan


def _init_affine(
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


def build_qnetwork(
    arch: str,
    input_shape: Sequence[int],
    num_classes: int,
    bits: int | Sequence[int] = 8,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    rounding: Rounding | str = Rounding.HALF_UP,
) -> QNetwork:
    """A freshly initialised QNetwork of architecture ``arch`` with the QA-IBP formats."""
    spec = get_arch(arch)
    plan = _plan_shapes(spec, input_shape, num_classes)
    wbits = layer_bits(bits, spec.num_affine)
    gen = torch.Generator().manual_seed(int(seed))
    layers: list[QLayer] = []
    ai = 0
    n_affine = spec.num_affine
    for kind, p in plan:
        if kind == "flatten":
            layers.append(QFlatten())
            continue
        wf, bf, af = qat_formats(wbits[ai])
        w, b, extra = _init_affine(kind, p, gen)
        w = w.clamp(wf.qmin * wf.scale, wf.qmax * wf.scale)
        if kind == "conv":
            layers.append(QConv2d(w, b, wf, bf, extra["stride"], extra["padding"]))
        else:
            layers.append(QLinear(w, b, wf, bf))
        ai += 1
        if ai < n_affine:
            layers.append(QRequant(af, rounding))
    return QNetwork(
        layers,
        input_shape,
        DEFAULT_INPUT_FORMAT,
        classes=classes,
        meta={"arch": arch, "bits": wbits},
    )


def build_float(
    arch: str, input_shape: Sequence[int], num_classes: int, seed: int = 0
) -> nn.Sequential:
    """A freshly initialised float ``nn.Sequential`` of architecture ``arch`` (ReLU activations);
    it expects inputs ``pixel / 256``."""
    spec = get_arch(arch)
    plan = _plan_shapes(spec, input_shape, num_classes)
    gen = torch.Generator().manual_seed(int(seed))
    mods: list[nn.Module] = []
    n_dense = sum(1 for k, _ in plan if k == "dense")
    seen_dense = 0
    for kind, p in plan:
        if kind == "flatten":
            mods.append(nn.Flatten())
            continue
        w, b, extra = _init_affine(kind, p, gen)
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
