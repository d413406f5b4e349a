"""The one walker over a float ``nn.Sequential`` and the one plan made from it.

:func:`leaves` lists a float model's layers in order (nested ``nn.Sequential`` flattened).
:func:`plan` turns them into steps over one layer set, :data:`LAYER_SET`: affine steps (Linear,
Conv2d with groups 1, dilation 1 and numeric zero padding; a BatchNorm1d/2d right after one is
folded into it), ``relu``, ``flatten`` (``Flatten(1, -1)``) and ``pool`` (AvgPool2d without padding
or ceil mode); Dropout and Identity are skipped. Anything else raises one
:class:`~qcert.errors.FormatError` naming the layer. Every consumer works from this plan and
rejects, with its own message, the step kinds it has no use for (the float model file stores no
pooling or batch norm; layer-wise quantization takes no pooling).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from qcert.errors import FormatError

__all__ = ["LAYER_SET", "Step", "leaves", "plan"]

LAYER_SET = "Linear, Conv2d, ReLU, Flatten, AvgPool2d, BatchNorm1d/2d (folded), Dropout, Identity"

_SKIPPED = (nn.Dropout, nn.Identity)


def leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The layers of a float model in order, each with its dotted name; nested ``nn.Sequential``
    containers are flattened, anything else is a layer."""
    if isinstance(module, nn.Sequential):
        out = []
        for name, child in module.named_children():
            out += leaves(child, f"{prefix}{name}.")
        return out
    return [(prefix.rstrip("."), module)]


@dataclass
class Step:
    """One step of a float model: ``kind`` is ``affine``, ``relu``, ``flatten`` or ``pool``;
    ``label`` names the layer in messages; ``folded`` holds the batch norms folded into an
    affine step."""

    kind: str
    label: str
    module: nn.Module
    folded: list[nn.Module] = field(default_factory=list)

    def params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """An affine step's weight and bias in float64 (detached), batch norms folded in."""
        m = self.module
        assert isinstance(m, nn.Linear | nn.Conv2d)
        w = m.weight.detach().double()
        b = None if m.bias is None else m.bias.detach().double()
        for bn in self.folded:
            w, b = _fold_bn(w, b, bn)
        return w, b


def _fold_bn(
    w: torch.Tensor, b: torch.Tensor | None, bn: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    assert isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d)
    if bn.running_mean is None or bn.running_var is None:
        raise FormatError("batch norm without running statistics cannot be folded")
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(bn.running_mean).double()
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(bn.running_mean).double()
    s = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    b0 = b if b is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    w = w * s.view(-1, *([1] * (w.dim() - 1)))
    return w, (b0 - bn.running_mean.double()) * s + beta


def plan(module: nn.Module) -> list[Step]:
    """The steps of a float model over :data:`LAYER_SET` (see the module doc); raises
    :class:`FormatError` naming an unsupported layer, and when there is no affine layer."""
    steps: list[Step] = []
    for i, (name, m) in enumerate(leaves(module)):
        label = f"layer {i} ({name}: {type(m).__name__})"
        if isinstance(m, nn.Linear | nn.Conv2d):
            if isinstance(m, nn.Conv2d):
                if m.groups != 1 or m.dilation != (1, 1) or m.padding_mode != "zeros":
                    raise FormatError(f"{label}: only groups=1, dilation=1, zero padding supported")
                if isinstance(m.padding, str):
                    raise FormatError(f"{label}: string padding {m.padding!r} not supported")
            steps.append(Step("affine", label, m))
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            if not steps or steps[-1].kind != "affine":
                raise FormatError(f"{label}: batch norm must directly follow a Linear or Conv2d")
            steps[-1].folded.append(m)
        elif isinstance(m, nn.ReLU):
            steps.append(Step("relu", label, m))
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise FormatError(f"{label}: only Flatten(start_dim=1, end_dim=-1) is supported")
            steps.append(Step("flatten", label, m))
        elif isinstance(m, nn.AvgPool2d):
            if m.padding not in (0, (0, 0)) or m.ceil_mode or m.divisor_override is not None:
                raise FormatError(f"{label}: only AvgPool2d without padding or ceil_mode supported")
            steps.append(Step("pool", label, m))
        elif isinstance(m, _SKIPPED):
            continue
        else:
            raise FormatError(f"{label} is not supported; float models are built of {LAYER_SET}")
    if not any(s.kind == "affine" for s in steps):
        raise FormatError("the float model has no Linear or Conv2d layer")
    return steps
