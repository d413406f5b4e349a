"""The training configuration (:class:`TrainConfig`) and its validation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from qcert.errors import ConfigError
from qcert.quant.floatmodel.archs import DEFAULT_ARCH, get_arch
from qcert.train.archs import layer_bits
from qcert.train.losses import ROBUST_LOSSES

__all__ = ["BY_METHOD", "CUSTOM_ARCH", "METHODS", "METHOD_DEFAULTS", "TrainConfig"]

METHODS: dict[str, str] = {
    "qa-ibp": "QA-IBP certified training (Lechner et al., AAAI 2023) of the quantized network",
    "qat": "plain quantization-aware training: cross-entropy on the fake-quant forward",
    "float": "float training, then post-training quantization (qcert.quant.from_float)",
    "float-ibp": "float IBP certified training (Gowal et al. 2018), then post-training quantization",
    "noise": "noise-augmented QAT for randomized smoothing: integer discrete Gaussian noise (--sigma)",
    "pgd": "PGD adversarial training (Madry et al. 2018) of a float network, for qcert quantize",
}

#: learning rate per method when ``lr`` is not given
DEFAULT_LR = {m: 1e-3 for m in METHODS}

#: a field left at this value takes its method's default from :data:`METHOD_DEFAULTS`
BY_METHOD: Any = None

#: defaults that depend on the method: ``"*"`` for every method, then a method's own
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "*": {"warmup": 0.1, "ramp": 0.5, "weight_decay": 5e-5, "n_test": None},
    "pgd": {"warmup": 0.0, "ramp": 0.3, "weight_decay": 0.0, "n_test": 1000},
}

#: the ``arch`` of a run that trains a given float module (:func:`qcert.train.train`'s ``module``)
CUSTOM_ARCH = "custom"


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in the checkpoint and in metrics.json).

    ``eps`` is the training radius in input integer steps (for ``qat`` and ``float``, only the
    evaluation radius; ``pgd`` takes a real number of levels). The schedule (shares of all
    steps): ``warmup`` of plain training, then ε, κ, λ ramp linearly over ``ramp`` (ε up to
    ``eps + eps_margin`` for the bound-based methods), then the learning rate decays. Fields left
    at ``BY_METHOD`` (``warmup``, ``ramp``, ``weight_decay``, ``n_test``) take the method's
    default (:data:`METHOD_DEFAULTS`; ``n_test`` None means the whole test split).
    """

    dataset: str
    out: str
    arch: str = DEFAULT_ARCH
    method: str = "qa-ibp"
    eps: int | float = 1
    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None
    weight_decay: float = BY_METHOD
    seed: int = 0
    bits: int | list[int] = 8
    n_train: int | None = None
    n_test: int | None = BY_METHOD
    robust_loss: str = "ce"
    kappa: float = 0.5
    lam: float = 1e-3
    warmup: float = BY_METHOD
    ramp: float = BY_METHOD
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
    pgd_train_steps: int = 7
    pgd_step_size: float | None = None

    def __post_init__(self) -> None:
        own = METHOD_DEFAULTS.get(self.method, {})
        for name, default in METHOD_DEFAULTS["*"].items():
            if getattr(self, name) is BY_METHOD:
                setattr(self, name, own.get(name, default))

    def validate(self, custom: bool = False) -> TrainConfig:
        """Raise :class:`ConfigError` (:class:`~qcert.errors.DataError` for the dataset) naming
        the first invalid field; return self. ``custom``: the run trains a given module, whose
        ``arch`` is :data:`CUSTOM_ARCH`."""
        from qcert.data.registry import check_dataset

        check_dataset(self.dataset)
        if not (custom and self.arch == CUSTOM_ARCH):
            get_arch(self.arch)
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        if self.robust_loss not in ROBUST_LOSSES:
            raise ConfigError(
                f"unknown robust loss {self.robust_loss!r}; known: {', '.join(ROBUST_LOSSES)}"
            )
        if self.method == "pgd":
            _real(self.eps, "eps")
        else:
            _int(self.eps, "eps", 0)
        _int(self.epochs, "epochs", 1)
        _int(self.batch_size, "batch size", 1)
        _int(self.seed, "seed", 0)
        _int(self.augment, "augment (pad-and-crop shift)", 0)
        _int(self.pgd_steps, "pgd steps", 0)
        _int(self.pgd_restarts, "pgd restarts", 1)
        _int(self.calib_size, "calibration size", 1)
        _int(self.pgd_train_steps, "pgd train steps", 0)
        if self.pgd_step_size is not None:
            _real(self.pgd_step_size, "pgd step size", positive=True)
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
        if self.arch != CUSTOM_ARCH:
            layer_bits(self.bits, get_arch(self.arch).num_affine)
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
