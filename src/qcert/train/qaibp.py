"""QA-IBP certified training and plain quantization-aware training (QAT) of a QNetwork.

QA-IBP (Lechner et al., AAAI 2023): loss = CE(fake-quant logits) + κ·robust(LB) + λ·Σ mean hidden
interval width, where LB are the training-mode QA-IBP lower bounds of ``z_y - z_j`` over the box
``x ± ε`` (:func:`qcert.bounds.ibp.qaibp_bounds`). During the warm-up it is plain QAT.
"""

from __future__ import annotations

import torch

from qcert.bounds.ibp import IBPBounds, qaibp_bounds
from qcert.quant.network import QNetwork
from qcert.train.archs import build_qnetwork
from qcert.train.base import (
    BoundedMethod,
    ScheduleValues,
    StepStats,
    TrainMethod,
    cross_entropy_step,
)

__all__ = ["NoiseMethod", "QAIBPMethod", "QATMethod"]


class QATMethod(TrainMethod):
    """Plain quantization-aware training: cross-entropy on the fake-quant forward (clipped STE)."""

    name = "qat"

    def build(self) -> QNetwork:
        c = self.config
        return build_qnetwork(
            c.arch, self.input_shape, self.num_classes, c.bits, c.seed, self.classes
        )

    @property
    def net(self) -> QNetwork:
        assert isinstance(self.model, QNetwork)
        return self.model

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, sv: ScheduleValues
    ) -> tuple[torch.Tensor, StepStats]:
        return cross_entropy_step(self.net(x), y)

    def export(self, calibration: torch.Tensor) -> QNetwork:
        net = self.net
        net.meta = {**net.meta, **self.meta()}
        return net


class QAIBPMethod(BoundedMethod, QATMethod):
    """QA-IBP certified training (warm-up: plain QAT)."""

    name = "qa-ibp"

    def bounds(
        self, x: torch.Tensor, y: torch.Tensor, sv: ScheduleValues
    ) -> tuple[torch.Tensor, IBPBounds]:
        net = self.net
        return net(x), qaibp_bounds(net, x - sv.eps, x + sv.eps, y)


class NoiseMethod(QATMethod):
    """Noise-augmented quantization-aware training for integer randomized smoothing (the base
    classifier of Lin et al., ICCV 2021, trained as Cohen et al. train theirs): cross-entropy on
    ``clamp(x + δ)`` with ``δ`` the same integer discrete Gaussian noise that smoothing samples,
    σ = ``config.sigma`` in [0, 1] units (``sigma × LEVELS`` input levels)."""

    name = "noise"

    def build(self) -> QNetwork:
        from qcert.smoothing.noise import DiscreteGaussian

        net = super().build()
        lo, hi = net.input_range
        self.noise = DiscreteGaussian(self.config.sigma * (hi - lo))
        # noise draws are seeded by the run's seed (a resumed run draws fresh noise)
        self.gen = torch.Generator().manual_seed(int(self.config.seed) * 7919 + 11)
        return net

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, sv: ScheduleValues
    ) -> tuple[torch.Tensor, StepStats]:
        lo, hi = self.net.input_range
        delta = torch.as_tensor(self.noise.sample(tuple(x.shape), self.gen)).to(x.dtype)
        return super().loss((x + delta).clamp(lo, hi), y, sv)

    def meta(self) -> dict:
        return {**super().meta(), "sigma": self.config.sigma}
