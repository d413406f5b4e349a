"""Every training method on one loop and one checkpoint: QA-IBP certified training (Lechner et
al., AAAI 2023), the baselines ``qat``, ``float`` and ``float-ibp``, ``noise`` (for randomized
smoothing) and ``pgd`` (PGD adversarial training of a float model, for ``qcert quantize``);
schedules, checkpoints.

>>> from qcert.train import TrainConfig, train
>>> res = train(TrainConfig(dataset="digits", out="runs/demo", method="qa-ibp", eps=1, epochs=5))
>>> res.metrics["ibp_certified_acc"]["1"]

See ``docs/training.md``.
"""

from __future__ import annotations

from qcert.errors import ConfigError
from qcert.quant.floatmodel import ARCHS, build_float
from qcert.train.archs import build_qnetwork
from qcert.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from qcert.train.config import METHODS, TrainConfig
from qcert.train.loop import TrainResult, train
from qcert.train.metrics import certified_flags, evaluate_network
from qcert.train.pgd import train_pgd

__all__ = [
    "ARCHS",
    "CHECKPOINT_NAME",
    "METHODS",
    "ConfigError",
    "TrainConfig",
    "TrainResult",
    "build_float",
    "build_qnetwork",
    "certified_flags",
    "evaluate_network",
    "load_checkpoint",
    "train",
    "train_pgd",
]
