"""The interface every training method implements, and what one step reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qcert.bounds.ibp import IBPBounds
from qcert.data import IntDataset
from qcert.quant.io import save_model
from qcert.quant.network import QNetwork, argmax_first
from qcert.train.config import TrainConfig
from qcert.train.losses import robust_loss, width_penalty
from qcert.train.metrics import evaluate_network

__all__ = [
    "MODEL_NAME",
    "ScheduleValues",
    "StepStats",
    "BoundedMethod",
    "TrainMethod",
    "cross_entropy_step",
]

#: the integer network a run writes in its folder (``pgd`` writes a float model instead)
MODEL_NAME = "model.qnn"


@dataclass(frozen=True)
class ScheduleValues:
    """The scheduled quantities at one step."""

    eps: float
    kappa: float
    lam: float
    warmup: bool


@dataclass
class StepStats:
    """What one training step saw: loss, correct clean predictions and training-mode certified
    samples (``certified`` is ``None`` when no bounds were computed, e.g. in the warm-up)."""

    loss: float
    n: int
    correct: int
    certified: int | None


def cross_entropy_step(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, StepStats]:
    """The plain cross-entropy of ``logits`` against ``y`` and what the step saw (no bounds)."""
    loss = F.cross_entropy(logits, y)
    correct = int((argmax_first(logits.detach()) == y).sum())
    return loss, StepStats(float(loss.detach()), int(y.numel()), correct, None)


class TrainMethod:
    """A training method: owns the trained model, computes a step's loss, saves the result and
    evaluates it. Every method but ``pgd`` saves a :class:`QNetwork` (the integer network every
    guarantee is about) as ``model.qnn``; ``pgd`` saves a float model for ``qcert quantize``."""

    name = ""
    #: trains against perturbations of radius ε, ramped up by the schedule (else ε stays 0)
    robust = False
    #: a bound-based method: ε is widened by ``config.eps_margin``, and κ and λ ramp with it
    bounded = False
    #: trains a float ``nn.Sequential`` (so it may start from a given module)
    trains_float = False
    #: the model file the run writes in its folder
    output_name = MODEL_NAME
    #: how metrics.json words the loop's stop reasons (``completed``, ``time budget``)
    stopped_words: dict[str, str] = {}

    def __init__(
        self,
        config: TrainConfig,
        input_shape: tuple[int, ...],
        num_classes: int,
        classes: list[str],
        module: nn.Module | None = None,
    ) -> None:
        self.config = config
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.classes = classes
        self.model: nn.Module = self.build() if module is None else module

    def build(self) -> nn.Module:
        raise NotImplementedError

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, sv: ScheduleValues
    ) -> tuple[torch.Tensor, StepStats]:
        """Loss of a batch ``x`` (float, integer input units) with labels ``y``."""
        raise NotImplementedError

    def export(self, calibration: torch.Tensor) -> QNetwork:
        """The integer network of the current model (``calibration``: uint8 training images for
        post-training quantization)."""
        raise NotImplementedError

    def save(self, folder: Path, calibration: torch.Tensor) -> Any:
        """Write the current result to ``folder / output_name`` and return it (the exported
        :class:`QNetwork` unless a method says otherwise)."""
        net = self.export(calibration)
        save_model(net, folder / self.output_name)
        return net

    def evaluate(self, saved: Any, test: IntDataset, log: Callable[[str], None]) -> dict[str, Any]:
        """The metrics of the saved result on the test split (the evaluation keys of
        metrics.json): clean, exactly certified and PGD accuracy of the integer network."""
        return self.evaluate_integer(saved, test, log)[0]

    def evaluate_integer(
        self, net: QNetwork, test: IntDataset, log: Callable[[str], None]
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor | None]:
        """:func:`~qcert.train.metrics.evaluate_network` of ``net`` as the config says: the
        metrics, and the per-radius certified flags and PGD-attacked flags behind them."""
        c = self.config
        x = test.images.reshape(test.images.shape[0], *net.input_shape)
        ev = evaluate_network(
            net,
            x,
            test.labels,
            c.eval_radii(),
            self.pgd_eps,
            c.pgd_steps,
            c.pgd_restarts,
            c.seed,
            log=log,
            pgd_n=c.pgd_n,
        )
        flags = ev.pop("certified_flags")
        attacked = ev.pop("attacked_flags")
        return ev, flags, attacked

    @property
    def pgd_eps(self) -> int:
        """The radius of the evaluation's PGD: the training ε, or 1 if that is 0."""
        return int(self.config.eps) if self.config.eps > 0 else 1

    def meta(self) -> dict[str, Any]:
        c = self.config
        return {"method": c.method, "arch": c.arch, "dataset": c.dataset, "eps": c.eps}


class BoundedMethod(TrainMethod):
    """A bound-based method (QA-IBP, float IBP; combine it with the method whose plain loss it
    extends): that plain loss in the warm-up, then ``CE + κ·robust(LB) + λ·Σ widths`` on the
    training-mode bounds of :meth:`bounds`."""

    robust = True
    bounded = True

    def bounds(
        self, x: torch.Tensor, y: torch.Tensor, sv: ScheduleValues
    ) -> tuple[torch.Tensor, IBPBounds]:
        """The clean logits of ``x`` and the margin bounds over the boxes ``x ± sv.eps``."""
        raise NotImplementedError

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, sv: ScheduleValues
    ) -> tuple[torch.Tensor, StepStats]:
        if sv.warmup or (sv.eps <= 0 and sv.kappa <= 0 and sv.lam <= 0):
            return super().loss(x, y, sv)
        c = self.config
        logits, b = self.bounds(x, y, sv)
        ce = F.cross_entropy(logits, y)
        ok = argmax_first(logits.detach()) == y
        only = ok if c.only_correct else None
        rob = robust_loss(c.robust_loss, b.margin_lb, y, only, c.hinge_margin)
        loss = ce + sv.kappa * rob + sv.lam * width_penalty(b.widths)
        cert = int((b.certified(y) & ok).sum())
        return loss, StepStats(float(loss.detach()), int(y.numel()), int(ok.sum()), cert)
