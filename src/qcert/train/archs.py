"""The quantized network of a registry architecture (:mod:`qcert.quant.floatmodel.archs`) with the
QA-IBP fixed-point formats, for ``qa-ibp`` / ``qat`` / ``noise``. (The float methods build the
float ``nn.Sequential`` of the same layers with :func:`qcert.quant.floatmodel.build_float`.)

Formats (as in the QA-IBP authors' code, generalised to a bit width ``b``):

* input: unsigned 8 bits, 8 fractional bits (pixel ``k`` stands for ``k/256``);
* weights: signed ``b`` bits, ``b-1`` fractional bits (range ``[-1, 1 - 2**(1-b)]``);
* biases: signed ``b`` bits, ``b-4`` fractional bits (3 integer bits and a sign: ``[-8, 8)``);
* hidden activations: unsigned ``b`` bits, ``b-3`` fractional bits (ReLU + saturation at 8);
* logits: the last layer's accumulators, not requantized; rounding half up.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qcert.errors import ConfigError
from qcert.quant.floatmodel.archs import arch_layers, get_arch, init_affine
from qcert.quant.format import FixedPointFormat, Rounding
from qcert.quant.layers import QConv2d, QFlatten, QLayer, QLinear, QRequant
from qcert.quant.network import DEFAULT_INPUT_FORMAT, QNetwork

__all__ = ["build_qnetwork", "layer_bits", "qat_formats"]


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
    concrete = arch_layers(spec, input_shape, num_classes)
    wbits = layer_bits(bits, spec.num_affine)
    gen = torch.Generator().manual_seed(int(seed))
    layers: list[QLayer] = []
    ai = 0
    n_affine = spec.num_affine
    for kind, p in concrete:
        if kind == "flatten":
            layers.append(QFlatten())
            continue
        wf, bf, af = qat_formats(wbits[ai])
        w, b, extra = init_affine(kind, p, gen)
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
