"""``qcert quantize`` as a library call: load a float model, search per-layer formats, save the
QNetwork, then measure clean, PGD and QA-IBP-certified accuracy with exact integer checks."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from qcert.errors import InputError
from qcert.layerwise.scoring import evaluate_qnetwork
from qcert.layerwise.search import quantize
from qcert.progress import progress_task
from qcert.quant import save_model
from qcert.quant.floatmodel import FloatModel, load_float
from qcert.quant.inputs import check_eps


def _images_for(model: FloatModel, images: Any, name: str) -> Any:
    shape = tuple(images.shape[1:])
    if shape != model.input_shape and (math.prod(shape),) != model.input_shape:
        raise InputError(
            f"dataset {name} has images of shape {shape}, the float model expects "
            f"{model.input_shape}"
        )
    return images.reshape(images.shape[0], *model.input_shape)


def search_eps_for(model: FloatModel, eps: Sequence[int], search_eps: float | None) -> float | None:
    """The radius of the metric's PGD calibration points: ``search_eps`` if given, else the float
    model's training ε (its ``meta["eps"]``), else the first evaluation ε."""
    if search_eps is not None:
        return float(search_eps)
    trained = model.meta.get("eps")
    if isinstance(trained, int | float) and not isinstance(trained, bool) and trained > 0:
        return float(trained)
    return float(eps[0]) if eps else None


def quantize_float_model(
    float_path: str | os.PathLike[str],
    strategy: str,
    avg_bits: float,
    calib_data: str,
    *,
    eps: Sequence[int] = (25, 76),
    search_eps: float | None = None,
    data_root: str | None = None,
    calib_n: int = 512,
    n_eval: int | None = 1000,
    out: str | os.PathLike[str] | None = None,
    norm: str = "2",
    weight_term: str = "operator",
    pgd_steps: int = 20,
    restarts: int = 1,
    pgd_loss: str = "targeted",
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Quantize the float model at ``float_path`` with ``strategy`` under ``avg_bits`` and
    evaluate it on the first ``n_eval`` test samples of ``calib_data`` (calibration: the first
    ``calib_n`` training samples). The QNetwork is written to ``out`` (if given) before the
    evaluation starts. Returns the summary (``bits``, ``avg_bits``, ``clean_acc``, ``pgd_acc`` and
    ``ibp_certified_acc`` keyed by ε, the search details)."""
    from qcert.data import load

    eps = [check_eps(e) for e in eps]
    if isinstance(calib_n, bool) or not isinstance(calib_n, int) or calib_n < 1:
        raise InputError(f"calib_n must be a positive integer, got {calib_n!r}")
    model = load_float(float_path)
    calib = load(calib_data, "train", root=data_root, n=calib_n)
    test = load(calib_data, "test", root=data_root, n=n_eval)
    cx = _images_for(model, calib.images, calib_data)
    tx = _images_for(model, test.images, calib_data)
    s_eps = search_eps_for(model, eps, search_eps)
    net, result = quantize(model, cx, calib.labels, strategy, avg_bits, s_eps, norm=norm, seed=seed)
    if out is not None:
        save_model(net, out)
    total = tx.shape[0] * len(eps)
    with progress_task(f"evaluate {strategy}", total, enabled=None if progress else False) as (
        prog,
        task,
    ):
        ev = evaluate_qnetwork(
            net,
            tx,
            test.labels,
            eps,
            pgd_steps=pgd_steps,
            restarts=restarts,
            loss=pgd_loss,
            seed=seed,
            on_batch=(lambda k: prog.advance(task, k)) if prog is not None else None,
        )
    return {
        "strategy": strategy,
        "bits": result.bits,
        "avg_bits": result.avg_bits,
        "budget": result.budget,
        "weight_fracs": result.weight_fracs,
        "act_fracs": result.act_fracs,
        "clean_acc": ev["clean_acc"],
        "pgd_acc": ev["pgd_acc"],
        "ibp_certified_acc": ev["ibp_certified_acc"],
        "n_eval": ev["n"],
        "metric": result.metric,
        "search_eps": s_eps,
        "search_seconds": round(result.seconds, 3),
        "eval_seconds": ev["seconds"],
        "out": None if out is None else os.fspath(out),
    }


__all__ = ["quantize_float_model", "search_eps_for"]
