"""The training configuration (:class:`TrainConfig`) and its validation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from qcert.train.archs import ARCHS, DEFAULT_ARCH, ConfigError, layer_bits
from qcert.train.losses import ROBUST_LOSSES

__all__ = ["METHODS", "TrainConfig"]

METHODS: dict[str, str] = {
    "qa-ibp": "QA-IBP certified training (Lechner et al., AAAI 2023) of the quantized network",
    "qat": "plain quantization-aware training: cross-entropy on the fake-quant forward",
    "float": "float training, then post-training quantization (qcert.quant.from_float)",
    "float-ibp": "float IBP certified training (Gowal et al. 2018), then post-training quantization",
    "noise": "noise-augmented QAT for randomized smoothing: integer discrete Gaussian noise (--sigma)",
}

#: learning rate per method when ``lr`` is not given
DEFAULT_LR = {"qa-ibp": 1e-3, "qat": 1e-3, "float": 1e-3, "float-ibp": 1e-3, "noise": 1e-3}


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in the checkpoint and in metrics.json).

    ``eps`` is the training radius in input integer steps (for ``qat`` and ``float``, only the
    evaluation radius). The schedule (shares of all steps): ``warmup`` of plain QAT, then ε, κ, λ
    ramp linearly over ``ramp`` (ε up to ``eps + eps_margin``), then the learning rate decays.
    """

    dataset: str
    out: str
    arch: str = DEFAULT_ARCH
    method: str = "qa-ibp"
    eps: int = 1
    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None
    weight_decay: float = 5e-5
    seed: int = 0
    bits: int | list[int] = 8
    n_train: int | None = None
    n_test: int | None = None
    robust_loss: str = "ce"
    kappa: float = 0.5
    lam: float = 1e-3
    warmup: float = 0.1
    ramp: float = 0.5
    eps_margin: float = 0.1
    hinge_margin: float = 0.2
    only_correct: bool = True
    augment: int = 0
    time_budget: float | None = None
    resume: bool = False
    data_root: str | None = None
    eval_eps: list[int] = field(default_factory=list)
    pgd_steps: int = 20
    pgd_restarts: int = 1
    pgd_n: int | None = None
    calib_size: int = 2000
    sigma: float = 0.25

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` naming the first invalid field; return self."""
        from qcert.data import DATASETS

        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; known: {', '.join(DATASETS)}")
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown architecture {self.arch!r}; known: {', '.join(ARCHS)}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        if self.robust_loss not in ROBUST_LOSSES:
            raise ConfigError(
                f"unknown robust loss {self.robust_loss!r}; known: {', '.join(ROBUST_LOSSES)}"
            )
        _int(self.eps, "eps", 0)
        _int(self.epochs, "epochs", 1)
        _int(self.batch_size, "batch size", 1)
        _int(self.seed, "seed", 0)
        _int(self.augment, "augment (pad-and-crop shift)", 0)
        _int(self.pgd_steps, "pgd steps", 0)
        _int(self.pgd_restarts, "pgd restarts", 1)
        _int(self.calib_size, "calibration size", 1)
        for name in ("n_train", "n_test", "pgd_n"):
            if getattr(self, name) is not None:
                _int(getattr(self, name), name.replace("_", "-"), 1)
        if self.lr is not None:
            _real(self.lr, "lr", positive=True)
        _real(self.weight_decay, "weight decay")
        _real(self.kappa, "kappa")
        _real(self.lam, "lambda")
        _real(self.eps_margin, "eps margin")
        _real(self.hinge_margin, "hinge margin")
        for name in ("warmup", "ramp"):
            v = _real(getattr(self, name), name)
            if v > 1:
                raise ConfigError(f"{name} is a share of training, in [0, 1]; got {v}")
        if self.warmup + self.ramp > 1:
            raise ConfigError(f"warmup + ramp = {self.warmup + self.ramp} exceeds 1")
        if self.time_budget is not None:
            _real(self.time_budget, "time budget", positive=True)
        _real(self.sigma, "sigma", positive=True)
        for e in self.eval_eps:
            _int(e, "evaluation eps", 0)
        if isinstance(self.bits, list):
            for b in self.bits:
                _int(b, "bits", 2)
        else:
            _int(self.bits, "bits", 2)
        n_affine = ARCHS[self.arch].num_affine
        layer_bits(self.bits, n_affine)
        return self

    @property
    def learning_rate(self) -> float:
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.method]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown configuration keys {sorted(unknown)}")
        return cls(**d)

    def eval_radii(self) -> list[int]:
        """The radii certified at evaluation: 1, the training ε and ``eval_eps`` (sorted)."""
        return sorted({1, int(self.eps), *(int(e) for e in self.eval_eps)} - {0})


def _int(v: Any, name: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{name} must be an integer, got {v!r}")
    if v < minimum:
        raise ConfigError(f"{name} must be ≥ {minimum}, got {v}")
    return v


def _real(v: Any, name: str, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number, got {v!r}")
    if v < 0 or (positive and v == 0):
        raise ConfigError(f"{name} must be {'> 0' if positive else '≥ 0'}, got {v}")
    return float(v)
