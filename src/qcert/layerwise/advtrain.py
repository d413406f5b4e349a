"""PGD adversarial training of float networks (Madry, Makelov, Schmidt, Tsipras, Vladu, ICLR 2018).

The float model sees ``u = x_int * input_scale`` (``1/256`` by default); ε and the PGD step are in
input levels (pixel steps). Training minimises the cross-entropy at the PGD point of every batch,
with ε ramped up linearly over the first part of training. Results go to a folder ``DIR``:

* ``DIR/float.safetensors``: the float model (:mod:`qcert.layerwise.floatio`), written after each
  epoch; its ``meta`` holds the training settings (``eps`` among them);
* ``DIR/train_state.safetensors``: optimizer state and progress (batches done, seconds), so a
  stopped run resumes where it stopped;
* ``DIR/metrics.json``: clean and PGD accuracy of the float model on the test split, seconds.

The PGD accuracy here is of the *float* model on real-valued perturbations: an empirical estimate,
not a guarantee, and not about any quantized network.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save
from torch import nn

from qcert.errors import InputError, ModelFileError
from qcert.layerwise.floatio import (
    DEFAULT_INPUT_SCALE,
    FloatModel,
    build_float_arch,
    describe,
    load_float,
    save_float,
)
from qcert.progress import progress_task
from qcert.quant.inputs import check_levels

STATE_FILE = "train_state.safetensors"
MODEL_FILE = "float.safetensors"
METRICS_FILE = "metrics.json"


def pgd_float(
    model: FloatModel,
    x_int: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    input_range: tuple[float, float] = (0.0, 255.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L∞ PGD on the float model (Madry et al. 2018): maximise the cross-entropy over
    ``[x - eps, x + eps] ∩ input_range`` (input levels, real-valued) with signed-gradient steps of
    ``step_size`` levels (default ``2.5 * eps / steps``) from a uniform random start. Returns the
    perturbed inputs (float32, same shape). The model's mode (train/eval) is left unchanged."""
    eps = check_levels(eps)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise InputError(f"steps must be a non-negative integer, got {steps!r}")
    x = x_int.to(torch.float32)
    if eps == 0 or steps == 0:
        return x.clone()
    alpha = 2.5 * eps / steps if step_size is None else check_levels(step_size, "step_size")
    lo = (x - eps).clamp(*input_range)
    hi = (x + eps).clamp(*input_range)
    if random_start:
        u = torch.rand(x.shape, generator=generator)
        adv = lo + u * (hi - lo)
    else:
        adv = x.clone()
    requires = [p.requires_grad for p in model.module.parameters()]
    for p in model.module.parameters():
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model.logits(adv), labels, reduction="sum")
            (g,) = torch.autograd.grad(loss, adv)
            adv = torch.minimum(torch.maximum(adv.detach() + alpha * g.sign(), lo), hi)
    finally:
        for p, r in zip(model.module.parameters(), requires):
            p.requires_grad_(r)
    return adv.detach()


@torch.no_grad()
def float_accuracy(model: FloatModel, x_int: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of inputs the float model classifies as ``labels``."""
    model.module.eval()
    correct = 0
    for s in range(0, x_int.shape[0], 1000):
        pred = model.logits(x_int[s : s + 1000]).argmax(1)
        correct += int((pred == labels[s : s + 1000]).sum())
    return correct / max(1, x_int.shape[0])


def float_pgd_accuracy(
    model: FloatModel,
    x_int: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    steps: int = 20,
    seed: int = 0,
    batch_size: int = 500,
) -> float:
    """Share of inputs the float model still classifies correctly at its PGD point (an upper bound
    on the float model's robust accuracy at ``eps``)."""
    model.module.eval()
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    for s in range(0, x_int.shape[0], batch_size):
        xb, yb = x_int[s : s + batch_size], labels[s : s + batch_size]
        adv = pgd_float(model, xb, yb, eps, steps, generator=gen)
        with torch.no_grad():
            correct += int((model.logits(adv).argmax(1) == yb).sum())
    return correct / max(1, x_int.shape[0])


def _save_state(path: Path, opt: torch.optim.Optimizer, info: dict[str, Any]) -> None:
    tensors: dict[str, np.ndarray] = {}
    for pid, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"{pid}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous().numpy()
    data = st_save(tensors, metadata={"qcert_train_state": json.dumps(info, sort_keys=True)})
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _load_state(path: Path, opt: torch.optim.Optimizer) -> dict[str, Any]:
    raw = path.read_bytes()
    try:
        n = int.from_bytes(raw[:8], "little")
        info = json.loads(json.loads(raw[8 : 8 + n])["__metadata__"]["qcert_train_state"])
        tensors = st_load(raw)
    except Exception as e:  # any corruption: say which file
        raise ModelFileError(
            f"{path}: corrupt training state ({e}); delete it to start over"
        ) from None
    sd = opt.state_dict()
    for pid in sd["param_groups"][0]["params"]:
        keys = [k for k in tensors if k.startswith(f"{pid}.")]
        if keys:
            sd["state"][pid] = {k.split(".", 1)[1]: torch.from_numpy(tensors[k]) for k in keys}
    opt.load_state_dict(sd)
    return info


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
    """PGD adversarial training (Madry et al. 2018) of a float network; returns the metrics.

    Args:
        dataset: a :func:`qcert.data.load` name (``mnist``, ``digits``, ...); trains on ``train``,
            evaluates on the first ``n_eval`` samples of ``test``.
        arch: ``"mlp-small"``, ``"cnn-small"`` or a float ``nn.Sequential`` taking
            ``x_int / 256``.
        eps: L∞ radius in input levels (``25 ≈ 0.1``, ``76 ≈ 0.3`` of the pixel range).
        epochs: passes over the training set (``time_budget`` may stop earlier).
        out: result folder (``float.safetensors``, ``metrics.json``, ``train_state.safetensors``).
        steps, step_size: PGD steps per batch and step in levels (default ``2.5 * eps / steps``).
        time_budget: stop after the batch that passes this many seconds (the run still saves).
        seed: seed of initialisation, data order and PGD starts.
        progress: show a rich progress bar (when stderr is a terminal).
        eps_ramp: share of the planned batches over which ε grows linearly from 0.

    The model and the optimizer state are saved after every epoch and when the time budget stops
    the run. A run finds its own folder's state and, when the settings match, resumes at the batch
    where it stopped (same data order and ε schedule; ``time_budget`` counts the seconds of all
    runs together); a finished run is not trained again (its metrics are recomputed).
    """
    from qcert.data import load

    eps = check_levels(eps)
    for name, v in (("epochs", epochs), ("steps", steps), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "steps" else 1):
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    if time_budget is not None and not (time_budget > 0):
        raise InputError(f"time_budget must be a positive number of seconds, got {time_budget!r}")
    if not 0 <= eps_ramp <= 1:
        raise InputError(f"eps_ramp must lie in [0, 1], got {eps_ramp!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = load(dataset, "train", root=data_root, n=n_train)
    test = load(dataset, "test", root=data_root, n=n_eval)
    x_train = train.images.to(torch.float32)
    y_train = train.labels
    input_shape = tuple(train.images.shape[1:])
    if isinstance(arch, str):
        module = build_float_arch(arch, input_shape, len(train.classes), seed)
        arch_name = arch
    else:
        module, arch_name = arch, "custom"
    settings = {
        "method": "pgd",
        "dataset": dataset,
        "arch": arch_name,
        "layers": describe(module),
        "eps": eps,
        "steps": steps,
        "step_size": step_size,
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "eps_ramp": eps_ramp,
        "n_train": int(x_train.shape[0]),
        "epochs": epochs,
    }
    model = FloatModel(module, input_shape, DEFAULT_INPUT_SCALE, list(train.classes), settings)
    opt = torch.optim.Adam(model.module.parameters(), lr=lr)
    start, seconds = 0, 0.0  # the first batch (counted over all epochs) still to train
    state_path, model_path = out / STATE_FILE, out / MODEL_FILE
    if state_path.exists() and model_path.exists():
        saved = load_float(model_path)
        same = {k: v for k, v in saved.meta.items() if k != "epochs"} == {
            k: v for k, v in settings.items() if k != "epochs"
        }
        if same:
            model.module.load_state_dict(saved.module.state_dict())
            info = _load_state(state_path, opt)
            start, seconds = int(info["batches"]), float(info["seconds"])
    per_epoch = math.ceil(x_train.shape[0] / batch_size)
    total = per_epoch * epochs
    ramp = max(1, round(eps_ramp * total))
    stopped = "epochs"
    t0 = time.perf_counter() - seconds
    if start >= total:
        start = total
    with progress_task("pgd training", total, enabled=None if progress else False) as (
        prog,
        task,
    ):
        if prog is not None:
            prog.update(task, completed=min(start, total))
        it = start
        for epoch in range(start // per_epoch, epochs):
            model.module.train()
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perm = torch.randperm(x_train.shape[0], generator=gen)
            for b in range(it - epoch * per_epoch, per_epoch):
                idx = perm[b * batch_size : (b + 1) * batch_size]
                xb, yb = x_train[idx], y_train[idx]
                e = eps * min(1.0, (it + 1) / ramp)
                adv = pgd_float(model, xb, yb, e, steps, step_size, generator=gen)
                loss = F.cross_entropy(model.logits(adv), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                it += 1
                if prog is not None:
                    prog.update(task, advance=1, status=f"epoch {epoch + 1} loss {loss.item():.3f}")
                if time_budget is not None and time.perf_counter() - t0 > time_budget:
                    stopped = "time_budget"
                    break
            model.module.eval()
            save_float(model, model_path)
            _save_state(state_path, opt, {"batches": it, "seconds": time.perf_counter() - t0})
            if stopped != "epochs":
                break
    seconds = time.perf_counter() - t0
    model.module.eval()
    if not model_path.exists():
        save_float(model, model_path)
    x_test, y_test = test.images.to(torch.float32), test.labels
    metrics = {
        "dataset": dataset,
        "arch": arch_name,
        "eps": eps,
        "epochs": epochs,
        "stopped": stopped,
        "n_eval": int(x_test.shape[0]),
        "clean_acc": float_accuracy(model, x_test, y_test),
        "pgd_acc": float_pgd_accuracy(model, x_test, y_test, eps, eval_steps, seed),
        "pgd_steps_eval": eval_steps,
        "seconds": round(seconds, 2),
    }
    tmp = out / f"{METRICS_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, out / METRICS_FILE)
    return metrics


__all__ = ["float_accuracy", "float_pgd_accuracy", "pgd_float", "train_pgd"]
