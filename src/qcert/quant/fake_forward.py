"""The fake-quant forward with the quantized weights computed once, for the many gradient
evaluations of an attack or a split heuristic."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qcert.quant.layers import QConv2d, QLinear, input_quantize
from qcert.quant.network import QNetwork

__all__ = ["FakeForward"]


class FakeForward:
    """``net(x) * 2**net.logit_frac`` (the fake-quant forward, logits in integer units) with the
    quantized weights computed once: the same operations as ``QNetwork.forward``, for the many
    gradient evaluations of an attack or a split heuristic. Build a new one when weights change.

    ``in_scale`` is the input format's scale ``2**-frac`` (as :attr:`FixedPointFormat.scale`);
    ``logit_steps`` is ``2**logit_frac``, the number of integer logit steps per real unit.
    """

    def __init__(self, net: QNetwork, dtype: torch.dtype = torch.float32) -> None:
        self.net, self.dtype = net, dtype
        self.params: list[tuple[torch.Tensor, torch.Tensor | None] | None] = []
        with torch.no_grad():
            for layer in net.layers:
                if isinstance(layer, QLinear | QConv2d):
                    b = layer.fake_bias(dtype)
                    self.params.append(
                        (layer.fake_weight(dtype).detach(), None if b is None else b.detach())
                    )
                else:
                    self.params.append(None)
        self.logit_steps = 2.0**net.logit_frac
        self.in_scale = 2.0**-net.input_format.frac

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.net.input_range
        v = input_quantize(x.to(self.dtype), lo, hi) * self.in_scale
        for layer, p in zip(self.net.layers, self.params):
            if p is None:
                v = layer.fake(v)
            elif isinstance(layer, QLinear):
                v = F.linear(v, p[0], p[1])
            else:
                assert isinstance(layer, QConv2d)
                v = F.conv2d(v, p[0], p[1], layer.stride, layer.padding)
        return v * self.logit_steps
