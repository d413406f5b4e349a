"""Training checkpoints: one safetensors file ``DIR/checkpoint.safetensors`` holding the model's
parameters (``model.<name>``) and the optimizer's state tensors (``optim.<param>.<key>``), with
everything else (config, epoch, step, elapsed seconds, history, optimizer hyper-parameters) as JSON
in the file's metadata. Written atomically (:func:`qcert.quant.files.write_atomic`); loading
never unpickles.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from qcert.errors import ModelFileError
from qcert.quant.files import write_atomic

__all__ = ["CHECKPOINT_NAME", "Checkpoint", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.safetensors"
FORMAT = "qcert.train.checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """Training state after ``epoch`` finished epochs and ``step_in_epoch`` steps of the next."""

    config: dict[str, Any]
    epoch: int
    step_in_epoch: int
    global_step: int
    seconds: float
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def _optim_split(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in state["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{k}"] = v.detach().clone().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def save_checkpoint(path: str | os.PathLike[str], ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically (a crash never leaves a half-written checkpoint)."""
    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in ckpt.model.items()}
    opt_tensors, opt_meta = _optim_split(ckpt.optimizer)
    tensors.update(opt_tensors)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "config": ckpt.config,
        "epoch": ckpt.epoch,
        "step_in_epoch": ckpt.step_in_epoch,
        "global_step": ckpt.global_step,
        "seconds": ckpt.seconds,
        "history": ckpt.history,
        "optimizer": opt_meta,
    }
    write_atomic(path, save(tensors, metadata={"qcert": json.dumps(meta)}))


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; :class:`ModelFileError` if malformed."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no checkpoint to resume from")
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get("qcert")
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{path}: not a readable checkpoint ({e})") from None
    try:
        meta = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a qcert training checkpoint")
    try:
        model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        state: dict[Any, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, key = k.split(".", 2)
                state.setdefault(int(pid), {})[key] = v
        for pid, sc in meta["optimizer"]["scalars"].items():
            state.setdefault(int(pid), {}).update(sc)
        optimizer = {"state": state, "param_groups": meta["optimizer"]["param_groups"]}
        return Checkpoint(
            config=dict(meta["config"]),
            epoch=int(meta["epoch"]),
            step_in_epoch=int(meta["step_in_epoch"]),
            global_step=int(meta["global_step"]),
            seconds=float(meta["seconds"]),
            model=model,
            optimizer=optimizer,
            history=list(meta.get("history", [])),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: checkpoint metadata is incomplete ({e})") from None
