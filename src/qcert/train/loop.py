"""The training loop behind ``qcert train``, shared by every method: :func:`train` runs one
:class:`TrainConfig` end to end (data, schedule, checkpoints every epoch, resume, time budget,
evaluation, outputs); the method (:class:`~qcert.train.base.TrainMethod`) supplies the model, the
loss, what is saved and how it is evaluated.

Outputs in ``config.out``: the model file (``model.qnn``, the integer network,
:func:`qcert.save_model`; ``float.safetensors`` for ``pgd``), ``metrics.json`` (the method's
evaluation and the run's details) and ``checkpoint.safetensors`` (see
:mod:`qcert.train.checkpoint`). The model file and the checkpoint are rewritten after every
finished epoch, so an interrupted run (Ctrl-C) leaves both at its last finished epoch;
``resume=True`` continues from the checkpoint. A time budget stops the run after the step that
uses it up (at least one step per run).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcert.data import load
from qcert.errors import ConfigError
from qcert.quant.files import write_atomic
from qcert.quant.floatmodel import FloatModel
from qcert.quant.network import QNetwork
from qcert.train.base import MODEL_NAME, ScheduleValues, TrainMethod
from qcert.train.baselines import FloatIBPMethod, FloatMethod
from qcert.train.checkpoint import CHECKPOINT_NAME, Checkpoint, load_checkpoint, save_checkpoint
from qcert.train.config import CUSTOM_ARCH, TrainConfig
from qcert.train.data import epoch_batches, epoch_generator, pad_and_crop
from qcert.train.pgd import PGDMethod
from qcert.train.qaibp import NoiseMethod, QAIBPMethod, QATMethod
from qcert.train.schedules import RampSchedule, progress_of

__all__ = ["METHOD_CLASSES", "TrainResult", "make_method", "resume_conflicts", "train"]

METHOD_CLASSES: dict[str, type[TrainMethod]] = {
    "qa-ibp": QAIBPMethod,
    "qat": QATMethod,
    "float": FloatMethod,
    "float-ibp": FloatIBPMethod,
    "noise": NoiseMethod,
    "pgd": PGDMethod,
}

#: fields that define the trajectory of a run: a resumed run must use the checkpoint's values
RESUME_FIXED = (
    "dataset",
    "arch",
    "method",
    "eps",
    "batch_size",
    "lr",
    "weight_decay",
    "seed",
    "bits",
    "n_train",
    "robust_loss",
    "kappa",
    "lam",
    "warmup",
    "ramp",
    "eps_margin",
    "hinge_margin",
    "only_correct",
    "augment",
    "pgd_train_steps",
    "pgd_step_size",
)

METRICS_NAME = "metrics.json"


@dataclass
class TrainResult:
    """What :func:`train` produced: the saved model (the integer network; a float model for
    ``pgd``), its metrics and where they were written."""

    model: QNetwork | FloatModel
    metrics: dict[str, Any]
    out: Path
    config: TrainConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    model_name: str = MODEL_NAME

    @property
    def net(self) -> QNetwork:
        """The integer network (every method but ``pgd``)."""
        if not isinstance(self.model, QNetwork):
            raise AttributeError(f"a {self.config.method} run saves a float model: use .model")
        return self.model

    @property
    def model_path(self) -> Path:
        return self.out / self.model_name

    @property
    def metrics_path(self) -> Path:
        return self.out / METRICS_NAME


def make_method(
    config: TrainConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    classes: list[str],
    module: nn.Module | None = None,
) -> TrainMethod:
    return METHOD_CLASSES[config.method](config, input_shape, num_classes, classes, module)


def _schedule_values(
    cfg: TrainConfig, method: TrainMethod, sched: RampSchedule, p: float
) -> ScheduleValues:
    f = sched.ramp_factor(p)
    robust = method.robust and cfg.eps > 0
    bounded = robust and method.bounded
    eps_final = (cfg.eps + (cfg.eps_margin if bounded else 0.0)) if robust else 0.0
    return ScheduleValues(
        eps=f * eps_final,
        kappa=f * cfg.kappa if bounded else 0.0,
        lam=f * cfg.lam if bounded else 0.0,
        warmup=sched.in_warmup(p) or not robust,
    )


def resume_conflicts(cfg: TrainConfig, saved: dict[str, Any]) -> list[str]:
    """The settings that define a run's trajectory and differ between ``cfg`` and a checkpoint's
    config ``saved`` (a key the checkpoint predates counts as its default)."""
    default = {f.name: f.default for f in fields(TrainConfig)}
    return [k for k in RESUME_FIXED if saved.get(k, default[k]) != getattr(cfg, k)]


def _check_resume(cfg: TrainConfig, saved: dict[str, Any]) -> None:
    diff = resume_conflicts(cfg, saved)
    if diff:
        detail = ", ".join(
            f"{k}: checkpoint {saved.get(k)!r}, now {getattr(cfg, k)!r}" for k in diff
        )
        raise ConfigError(f"--resume with settings that differ from the checkpoint ({detail})")


def _batch_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    return epoch_generator(seed * 65_537 + step + 1, epoch)


def train(
    config: TrainConfig,
    progress: bool | None = False,
    log: Callable[[str], None] | None = None,
    *,
    module: nn.Module | None = None,
) -> TrainResult:
    """Train, evaluate and save one model as ``config`` says; return the result.

    ``progress`` shows a rich progress bar (``None``: only on a terminal); ``log`` receives
    one-line status messages; ``module``: a float ``nn.Sequential`` to train instead of building
    ``config.arch`` (float methods, with ``arch="custom"``). Raises
    :class:`~qcert.errors.QcertError` subclasses for a bad configuration, missing data or an
    unreadable checkpoint. A ``KeyboardInterrupt`` propagates after the last finished epoch's
    checkpoint and model file are on disk.
    """
    cfg = config.validate(custom=module is not None)
    if module is not None and not (
        METHOD_CLASSES[cfg.method].trains_float and cfg.arch == CUSTOM_ARCH
    ):
        raise ConfigError(f"a given module is trained by a float method with arch {CUSTOM_ARCH!r}")
    say = log or (lambda _msg: None)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} exists and is not a directory")
    ckpt_path = out / CHECKPOINT_NAME
    ckpt: Checkpoint | None = None
    if cfg.resume:
        ckpt = load_checkpoint(ckpt_path)
        _check_resume(cfg, ckpt.config)
    elif ckpt_path.exists():
        raise ConfigError(
            f"{out} already holds a training checkpoint; pass --resume to continue it, or choose "
            "another --out"
        )

    train_ds = load(cfg.dataset, "train", root=cfg.data_root, n=cfg.n_train)
    test_ds = load(cfg.dataset, "test", root=cfg.data_root, n=cfg.n_test)
    x_all = train_ds.images.to(torch.float32)
    y_all = train_ds.labels
    input_shape = tuple(int(s) for s in x_all.shape[1:])
    num_classes = len(train_ds.classes)
    if y_all.numel() == 0:
        raise ConfigError(f"dataset {cfg.dataset} has no training samples")
    torch.manual_seed(cfg.seed)
    method = make_method(cfg, input_shape, num_classes, list(train_ds.classes), module)
    model = method.model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    n = x_all.shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    sched = RampSchedule(cfg.warmup, cfg.ramp)
    budget_s = cfg.time_budget * 60.0 if cfg.time_budget is not None else None
    calib = train_ds.images[: cfg.calib_size]

    epoch, step_in_epoch, global_step, seconds0 = 0, 0, 0, 0.0
    history: list[dict[str, Any]] = []
    if ckpt is not None:
        model.load_state_dict(ckpt.model)
        opt.load_state_dict(ckpt.optimizer)
        epoch, step_in_epoch = ckpt.epoch, ckpt.step_in_epoch
        global_step, seconds0, history = ckpt.global_step, ckpt.seconds, ckpt.history
        say(f"resuming {cfg.method} at epoch {epoch} step {step_in_epoch} ({seconds0:.0f} s done)")
    out.mkdir(parents=True, exist_ok=True)
    t_run = time.perf_counter()

    def seconds() -> float:
        """Training seconds of the whole run, resumed segments included."""
        return seconds0 + time.perf_counter() - t_run

    def progress_now() -> float:
        return progress_of(global_step, total_steps, seconds(), budget_s)

    def checkpoint(ep: int, sie: int) -> None:
        save_checkpoint(
            ckpt_path,
            Checkpoint(
                config=cfg.to_dict(),
                epoch=ep,
                step_in_epoch=sie,
                global_step=global_step,
                seconds=seconds(),
                model=dict(model.state_dict()),
                optimizer=opt.state_dict(),
                history=history,
            ),
        )

    stopped = "completed"
    from qcert.progress import progress_task

    with progress_task(f"{cfg.method} {cfg.arch} (% done)", 100, enabled=progress) as (
        prog,
        task,
    ):
        model.train()
        while epoch < cfg.epochs and stopped == "completed":
            batches, _ = epoch_batches(n, cfg.batch_size, cfg.seed, epoch)
            sums = {"loss": 0.0, "n": 0, "correct": 0, "cert": 0, "cert_n": 0}
            sv = _schedule_values(cfg, method, sched, progress_now())
            end = len(batches)
            for s in range(step_in_epoch, len(batches)):
                p = progress_now()
                sv = _schedule_values(cfg, method, sched, p)
                for g in opt.param_groups:
                    g["lr"] = cfg.learning_rate * sched.lr_factor(p)
                idx = batches[s]
                xb = x_all[idx]
                if cfg.augment:
                    xb = pad_and_crop(xb, cfg.augment, _batch_generator(cfg.seed, epoch, s))
                yb = y_all[idx]
                loss, st = method.loss(xb, yb, sv)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                global_step += 1
                sums["loss"] += st.loss * st.n
                sums["n"] += st.n
                sums["correct"] += st.correct
                if st.certified is not None:
                    sums["cert"] += st.certified
                    sums["cert_n"] += st.n
                if prog is not None:
                    cert = sums["cert"] / sums["cert_n"] if sums["cert_n"] else float("nan")
                    prog.update(
                        task,
                        completed=100.0 * progress_now(),
                        status=(
                            f"ep {epoch + 1}/{cfg.epochs} loss {sums['loss'] / sums['n']:.3f} "
                            f"acc {sums['correct'] / sums['n']:.3f} cert~ {cert:.3f} "
                            f"ε {sv.eps:.2f}"
                        ),
                    )
                if budget_s is not None and progress_now() >= 1.0:
                    stopped, end = "time budget", s + 1  # stop after the step that used it up
                    break
            finished = end == len(batches)
            if sums["n"] > 0:
                history.append(
                    {
                        "epoch": epoch + 1,
                        "steps": global_step,
                        "loss": sums["loss"] / sums["n"],
                        "train_acc": sums["correct"] / sums["n"],
                        "train_cert": sums["cert"] / sums["cert_n"] if sums["cert_n"] else None,
                        "eps": sv.eps,
                        "kappa": sv.kappa,
                        "lr": opt.param_groups[0]["lr"],
                        "seconds": round(seconds(), 2),
                        "partial": not finished,
                    }
                )
            epoch, step_in_epoch = (epoch + 1, 0) if finished else (epoch, end)
            method.save(out, calib)
            checkpoint(epoch, step_in_epoch)
            if stopped != "completed":
                say(f"time budget reached after {global_step} steps ({seconds():.0f} s)")
                break
            h = history[-1] if history else {}
            cert_txt = "-" if h.get("train_cert") is None else f"{h['train_cert']:.4f}"
            say(
                f"epoch {epoch}/{cfg.epochs}: loss {h.get('loss', float('nan')):.4f} "
                f"train acc {h.get('train_acc', float('nan')):.4f} cert~ {cert_txt} "
                f"ε {h.get('eps', 0):.2f} ({seconds():.0f} s)"
            )
    train_seconds = seconds()

    model.eval()
    saved = method.save(out, calib)
    t_eval = time.perf_counter()
    metrics: dict[str, Any] = {
        "method": cfg.method,
        "arch": cfg.arch,
        "dataset": cfg.dataset,
        "eps": cfg.eps,
        **method.evaluate(saved, test_ds, say),
        "seconds": round(train_seconds, 2),
        "eval_seconds": round(time.perf_counter() - t_eval, 2),
        "epochs": len([h for h in history if not h["partial"]]),
        "steps": global_step,
        "stopped": method.stopped_words.get(stopped, stopped),
        "n_train": int(n),
        "config": cfg.to_dict(),
        "history": history,
        "model": str(out / method.output_name),
    }
    write_atomic(out / METRICS_NAME, json.dumps(metrics, indent=2) + "\n")
    return TrainResult(saved, metrics, out, cfg, history, method.output_name)
