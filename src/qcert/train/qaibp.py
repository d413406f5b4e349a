"""QA-IBP certified training and plain quantization-aware training (QAT) of a QNetwork.

QA-IBP (Lechner et al., AAAI 2023): loss = CE(fake-quant logits) + κ·robust(LB) + λ·Σ mean hidden
interval width, where LB are the training-mode QA-IBP lower bounds of ``z_y - z_j`` over the box
``x ± ε`` (:func:`qcert.bounds.ibp.qaibp_bounds`). During the warm-up it is plain QAT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qcert.bounds.ibp import qaibp_bounds
from qcert.quant.network import QNetwork, argmax_first
from qcert.train.archs import build_qnetwork
from qcert.train.base import ScheduleValues, StepStats, TrainMethod
from qcert.train.losses import robust_loss, width_penalty

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
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        correct = int((argmax_first(logits.detach()) == y).sum())
        return loss, StepStats(float(loss.detach()), int(y.numel()), correct, None)

    def export(self, calibration: torch.Tensor) -> QNetwork:
        net = self.net
        net.meta = {**net.meta, **self.meta()}
        return net


class QAIBPMethod(QATMethod):
    """QA-IBP certified training (warm-up: plain QAT)."""

    name = "qa-ibp"

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, sv: ScheduleValues
    ) -> tuple[torch.Tensor, StepStats]:
        if sv.warmup or (sv.eps <= 0 and sv.kappa <= 0 and sv.lam <= 0):
            return super().loss(x, y, sv)
        c = self.config
        net = self.net
        logits = net(x)
        ce = F.cross_entropy(logits, y)
        ok = argmax_first(logits.detach()) == y
        b = qaibp_bounds(net, x - sv.eps, x + sv.eps, y)
        rob = robust_loss(
            c.robust_loss, b.margin_lb, y, ok if c.only_correct else None, c.hinge_margin
        )
        loss = ce + sv.kappa * rob + sv.lam * width_penalty(b.widths)
        cert = int((b.certified(y) & ok).sum())
        return loss, StepStats(float(loss.detach()), int(y.numel()), int(ok.sum()), cert)


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
