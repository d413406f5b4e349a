"""The interface every training method implements, and what one step reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qcert.quant.network import QNetwork
from qcert.train.config import TrainConfig

__all__ = ["ScheduleValues", "StepStats", "TrainMethod"]


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


class TrainMethod:
    """A training method: owns the trained model, computes a step's loss and exports the result
    as a :class:`QNetwork` (the integer network every guarantee is about)."""

    name = ""

    def __init__(
        self,
        config: TrainConfig,
        input_shape: tuple[int, ...],
        num_classes: int,
        classes: list[str],
    ) -> None:
        self.config = config
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.classes = classes
        self.model: nn.Module = self.build()

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

    def meta(self) -> dict[str, Any]:
        c = self.config
        return {"method": c.method, "arch": c.arch, "dataset": c.dataset, "eps": c.eps}
