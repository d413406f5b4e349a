"""Float baselines: float training and float IBP certified training (Gowal et al. 2018), each
followed by post-training quantization with :func:`qcert.quant.from_float`.

``float-ibp`` is the baseline that looks certified in float and need not be after quantization:
its float IBP certificate is about the float network, not the integer one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qcert.bounds.ibp import float_ibp_bounds
from qcert.quant.convert import from_float
from qcert.quant.network import QNetwork
from qcert.train.archs import ARCHS, build_float, layer_bits
from qcert.train.base import ScheduleValues, StepStats, TrainMethod
from qcert.train.losses import robust_loss, width_penalty

__all__ = ["FLOAT_INPUT_SCALE", "FloatIBPMethod", "FloatMethod"]

#: the float models see ``pixel / 256``: the same real values as the QNetwork's uint8 frac-8 input
FLOAT_INPUT_SCALE = 1.0 / 256.0
INPUT_MAX = 255.0


class FloatMethod(TrainMethod):
    """Float training (cross-entropy), then post-training quantization."""

    name = "float"

    def build(self) -> nn.Sequential:
        c = self.config
        return build_float(c.arch, self.input_shape, self.num_classes, c.seed)

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, sv: ScheduleValues
    ) -> tuple[torch.Tensor, StepStats]:
        logits = self.model(x * FLOAT_INPUT_SCALE)
        loss = F.cross_entropy(logits, y)
        correct = int((logits.detach().argmax(1) == y).sum())
        return loss, StepStats(float(loss.detach()), int(y.numel()), correct, None)

    def export(self, calibration: torch.Tensor) -> QNetwork:
        c = self.config
        n_affine = ARCHS[c.arch].num_affine
        wbits = layer_bits(c.bits, n_affine)
        net = from_float(
            self.model,
            calibration,
            weight_bits=wbits,
            act_bits=wbits[:-1],
            input_scale=FLOAT_INPUT_SCALE,
            rounding="half_up",
            classes=self.classes,
        )
        net.meta = {**self.meta(), "bits": wbits, "ptq": "qcert.quant.from_float"}
        self.model.train()
        return net


class FloatIBPMethod(FloatMethod):
    """Float IBP certified training (same loss and schedule as QA-IBP, float bounds), then PTQ."""

    name = "float-ibp"

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, sv: ScheduleValues
    ) -> tuple[torch.Tensor, StepStats]:
        if sv.warmup or (sv.eps <= 0 and sv.kappa <= 0 and sv.lam <= 0):
            return super().loss(x, y, sv)
        c = self.config
        s = FLOAT_INPUT_SCALE
        logits = self.model(x * s)
        ce = F.cross_entropy(logits, y)
        ok = logits.detach().argmax(1) == y
        lo = (x - sv.eps).clamp(0.0, INPUT_MAX) * s
        hi = (x + sv.eps).clamp(0.0, INPUT_MAX) * s
        b = float_ibp_bounds(self.model, lo, hi, y)
        rob = robust_loss(
            c.robust_loss, b.margin_lb, y, ok if c.only_correct else None, c.hinge_margin
        )
        loss = ce + sv.kappa * rob + sv.lam * width_penalty(b.widths)
        cert = int((b.certified(y) & ok).sum())
        return loss, StepStats(float(loss.detach()), int(y.numel()), int(ok.sum()), cert)
