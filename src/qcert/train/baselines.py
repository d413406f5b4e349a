"""Float baselines: float training and float IBP certified training (Gowal et al. 2018), each
followed by post-training quantization with :func:`qcert.quant.from_float`.

``float-ibp`` is the baseline that looks certified in float and need not be after quantization:
its float IBP certificate is about the float network, not the integer one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from qcert.bounds.ibp import IBPBounds, float_ibp_bounds
from qcert.data import IntDataset
from qcert.quant.convert import from_float
from qcert.quant.floatmodel import FLOAT_INPUT_SCALE, build_float, plan
from qcert.quant.network import QNetwork
from qcert.train.archs import layer_bits
from qcert.train.base import (
    BoundedMethod,
    ScheduleValues,
    StepStats,
    TrainMethod,
    cross_entropy_step,
)
from qcert.train.metrics import float_ibp_transfer

__all__ = ["FloatIBPMethod", "FloatMethod"]

INPUT_MAX = 255.0


class FloatMethod(TrainMethod):
    """Float training (cross-entropy), then post-training quantization."""

    name = "float"
    trains_float = True

    def build(self) -> nn.Sequential:
        c = self.config
        return build_float(c.arch, self.input_shape, self.num_classes, c.seed)

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, sv: ScheduleValues
    ) -> tuple[torch.Tensor, StepStats]:
        return cross_entropy_step(self.model(x * FLOAT_INPUT_SCALE), y)

    def export(self, calibration: torch.Tensor) -> QNetwork:
        c = self.config
        n_affine = sum(1 for s in plan(self.model) if s.kind == "affine")
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

    def evaluate(self, saved: Any, test: IntDataset, log: Callable[[str], None]) -> dict[str, Any]:
        """The integer network's metrics, and ``float_ibp``: what float IBP certifies for the
        float model and what is left of it after post-training quantization."""
        c = self.config
        ev, flags, attacked = self.evaluate_integer(saved, test, log)
        log("float IBP certificates of the float model and what is left of them after PTQ")
        x = saved.check_input(test.images.reshape(test.images.shape[0], *saved.input_shape))
        ev["float_ibp"] = float_ibp_transfer(
            self.model,
            saved,
            x,
            test.labels,
            c.eval_radii(),
            flags,
            FLOAT_INPUT_SCALE,
            c.pgd_steps,
            c.pgd_restarts,
            c.seed,
            attacked=None if attacked is None else {str(self.pgd_eps): attacked},
            pgd_n=c.pgd_n,
        )
        return ev


class FloatIBPMethod(BoundedMethod, FloatMethod):
    """Float IBP certified training (same loss and schedule as QA-IBP, float bounds), then PTQ."""

    name = "float-ibp"

    def bounds(
        self, x: torch.Tensor, y: torch.Tensor, sv: ScheduleValues
    ) -> tuple[torch.Tensor, IBPBounds]:
        s = FLOAT_INPUT_SCALE
        lo = (x - sv.eps).clamp(0.0, INPUT_MAX) * s
        hi = (x + sv.eps).clamp(0.0, INPUT_MAX) * s
        return self.model(x * s), float_ibp_bounds(self.model, lo, hi, y)
