"""PGD adversarial training of a float network (Madry, Makelov, Schmidt, Tsipras, Vladu, ICLR 2018),
the ``pgd`` method of the shared training loop, for ``qcert quantize``.

Each batch is replaced by its PGD point (:func:`qcert.attack.pgd_float`: L∞ radius ε in input
levels, real-valued, ``pgd_train_steps`` steps) and the cross-entropy there is minimised; ε ramps
up with the schedule (by default from 0 over the first 30% of training, no warm-up, no weight
decay). The float model sees ``x_int * FLOAT_INPUT_SCALE``. The run writes, in its folder:

* ``float.safetensors``: the float model (:mod:`qcert.quant.floatmodel`), after every epoch; its
  ``meta`` holds the training settings (``eps`` among them);
* ``checkpoint.safetensors``: the shared training checkpoint (resume);
* ``metrics.json``: clean and PGD accuracy of the *float* model on the test split: empirical
  numbers about real-valued perturbations, not guarantees, and not about any quantized network.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcert.attack.pgd import float_pgd_accuracy, pgd_float
from qcert.data import IntDataset
from qcert.errors import InputError
from qcert.quant.floatmodel import FLOAT_INPUT_SCALE, FloatModel, save_float
from qcert.quant.inputs import check_levels
from qcert.train.base import ScheduleValues, StepStats, cross_entropy_step
from qcert.train.baselines import FloatMethod
from qcert.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from qcert.train.config import CUSTOM_ARCH, TrainConfig

__all__ = ["FLOAT_MODEL_NAME", "PGDMethod", "train_pgd"]

FLOAT_MODEL_NAME = "float.safetensors"


class PGDMethod(FloatMethod):
    """PGD adversarial training: cross-entropy at the float model's PGD point of every batch.
    Builds its float model as ``float`` does; saves and evaluates it as a float model."""

    name = "pgd"
    robust = True
    output_name = FLOAT_MODEL_NAME
    stopped_words = {"completed": "epochs", "time budget": "time_budget"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # FloatModel checks the module (an nn.Sequential of the float layer set)
        self.float_model = FloatModel(
            self.model,  # type: ignore[arg-type]
            self.input_shape,
            FLOAT_INPUT_SCALE,
            self.classes,
        )
        # PGD starts are seeded by the run's seed (a resumed run draws fresh ones)
        self.gen = torch.Generator().manual_seed(int(self.config.seed) * 7919 + 13)

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, sv: ScheduleValues
    ) -> tuple[torch.Tensor, StepStats]:
        c, model = self.config, self.float_model
        adv = pgd_float(model, x, y, sv.eps, c.pgd_train_steps, c.pgd_step_size, generator=self.gen)
        return cross_entropy_step(model.logits(adv), y)

    def save(self, folder: Path, calibration: torch.Tensor) -> FloatModel:
        model = self.float_model
        model.meta = self.meta()
        save_float(model, folder / self.output_name)
        return model

    def evaluate(self, saved: Any, test: IntDataset, log: Callable[[str], None]) -> dict[str, Any]:
        """Clean and ``pgd_steps``-step PGD accuracy of the float model at ε on the test split."""
        c = self.config
        x = test.images.to(torch.float32)
        log(f"float PGD ε={c.eps}, {c.pgd_steps} steps on {x.shape[0]} samples")
        return {
            "n_eval": int(x.shape[0]),
            "clean_acc": saved.accuracy(x, test.labels),
            "pgd_acc": float_pgd_accuracy(saved, x, test.labels, c.eps, c.pgd_steps, c.seed),
            "pgd_steps_eval": c.pgd_steps,
        }

    def meta(self) -> dict[str, Any]:
        c = self.config
        return {
            **super().meta(),
            "steps": c.pgd_train_steps,
            "step_size": c.pgd_step_size,
            "seed": c.seed,
            "epochs": c.epochs,
        }


def train_pgd(
    dataset: str,
    arch: str | nn.Sequential,
    eps: float,
    epochs: int,
    out: str | os.PathLike[str],
    steps: int = 7,
    step_size: float | None = None,
    time_budget: float | None = None,
    seed: int = 0,
    progress: bool = True,
    *,
    data_root: str | None = None,
    n_train: int | None = None,
    n_eval: int = 1000,
    batch_size: int = 128,
    lr: float = 1e-3,
    eps_ramp: float = 0.3,
    eval_steps: int = 20,
) -> dict[str, Any]:
    """PGD adversarial training of a float network on the shared loop; returns the metrics.

    Args:
        dataset: a :func:`qcert.data.load` name; trains on ``train``, evaluates on the first
            ``n_eval`` samples of ``test``.
        arch: a registry architecture (:data:`qcert.quant.floatmodel.ARCHS`) or a float
            ``nn.Sequential`` taking ``x_int * FLOAT_INPUT_SCALE`` (recorded as ``"custom"``).
        eps: L∞ radius in input levels (``25 ≈ 0.1``, ``76 ≈ 0.3`` of the pixel range).
        epochs: passes over the training set (``time_budget`` may stop earlier).
        out: result folder (``float.safetensors``, ``metrics.json``, ``checkpoint.safetensors``).
        steps, step_size: PGD steps per batch and step in levels (default ``2.5 * eps / steps``).
        time_budget: seconds of training (all runs together); the run stops after the batch
            that uses it up, still saving and evaluating.
        seed: seed of initialisation, data order and PGD starts.
        progress: show a rich progress bar (when stderr is a terminal).
        eps_ramp: share of the planned batches over which ε grows linearly from 0.

    A run finds its folder's checkpoint and, when the settings match, resumes where it stopped
    (a finished run is not trained again; its metrics are recomputed); with other settings it
    starts over. Adam (AdamW without weight decay) at ``lr``, no warm-up.
    """
    from qcert.train.loop import resume_conflicts, train

    check_levels(eps, "eps")
    if time_budget is not None and not time_budget > 0:
        raise InputError(f"time_budget must be a positive number of seconds, got {time_budget!r}")
    custom = not isinstance(arch, str)
    cfg = TrainConfig(
        dataset=dataset, out=os.fspath(out), arch=CUSTOM_ARCH if custom else str(arch),
        method="pgd", eps=eps, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=0.0,
        seed=seed, n_train=n_train, n_test=n_eval, warmup=0.0, ramp=eps_ramp,
        time_budget=None if time_budget is None else time_budget / 60.0, data_root=data_root,
        pgd_steps=eval_steps, pgd_train_steps=steps, pgd_step_size=step_size,
    )  # fmt: skip
    ckpt = Path(out) / CHECKPOINT_NAME
    if ckpt.exists():
        cfg.resume = not resume_conflicts(cfg.validate(custom), load_checkpoint(ckpt).config)
        if not cfg.resume:
            ckpt.unlink()  # another run's state: start over
    module = None if isinstance(arch, str) else arch
    res = train(cfg, progress=None if progress else False, module=module)
    return res.metrics
