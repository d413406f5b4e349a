"""Evaluation of a trained integer network: clean accuracy (reference executor), exact QA-IBP
certified accuracy on whole ε-boxes (:func:`qcert.bounds.certify_boxes`, int64) and PGD accuracy
(:func:`qcert.attack.robust_accuracy`, every counterexample re-checked by the reference executor).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from qcert.bounds import certify_boxes, eps_box
from qcert.quant.network import QNetwork

__all__ = ["certified_flags", "evaluate_network", "float_ibp_transfer", "pgd_counterexamples"]


@torch.no_grad()
def certified_flags(
    net: QNetwork,
    x: torch.Tensor,
    labels: torch.Tensor,
    eps: int,
    batch_size: int = 500,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Per sample: correctly classified by the reference executor and proven robust on the whole
    ε-box by exact QA-IBP (the flags whose mean is :func:`qcert.bounds.certified_accuracy`)."""
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    out = []
    for s in range(0, x.shape[0], batch_size):
        xb, yb = x[s : s + batch_size], labels[s : s + batch_size]
        lo, hi = eps_box(net, xb, eps)
        out.append(certify_boxes(net, lo, hi, yb) & (net.predict(xb) == yb))
        if on_batch is not None:
            on_batch(xb.shape[0])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


@torch.no_grad()
def _clean_flags(net: QNetwork, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.cat([net.predict(x[s : s + 1000]) for s in range(0, x.shape[0], 1000)]) == labels


def pgd_counterexamples(
    net: QNetwork,
    x: torch.Tensor,
    labels: torch.Tensor,
    eps: int,
    certified: torch.Tensor | None,
    steps: int,
    restarts: int,
    seed: int,
) -> torch.Tensor:
    """Per sample: misclassified, or PGD (:func:`qcert.attack.robust_accuracy`) found a
    counterexample re-checked by the reference executor in its ε-box.

    Samples in ``certified`` are proven robust by exact QA-IBP, so no attack can succeed there:
    they are skipped (their flag is False), which makes the evaluation of certified models cheap.
    """
    from qcert.attack import robust_accuracy

    out = torch.zeros(x.shape[0], dtype=torch.bool)
    todo = torch.arange(x.shape[0]) if certified is None else (~certified).nonzero().squeeze(1)
    if todo.numel():
        res = robust_accuracy(
            net, x[todo], labels[todo], eps, steps=steps, restarts=restarts, seed=seed
        )
        for c in res["counterexamples"]:
            out[int(todo[int(c["index"])])] = True
    return out


def evaluate_network(
    net: QNetwork,
    x: torch.Tensor,
    labels: torch.Tensor,
    radii: Sequence[int],
    pgd_eps: int | None,
    pgd_steps: int = 20,
    pgd_restarts: int = 1,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    pgd_n: int | None = None,
) -> dict[str, Any]:
    """Clean, exact-certified (per radius) and PGD accuracy of ``net`` on integer inputs ``x``.

    Returns ``clean_acc``, ``ibp_certified_acc`` (keyed by ε as a string), ``pgd_acc`` (at
    ``pgd_eps`` on the first ``pgd_n`` samples, all by default; None when ``pgd_eps`` is None or
    ``pgd_steps`` is 0), ``pgd_eps``, ``pgd_n``, ``n_test``,
    ``certified_flags`` (per radius) and ``attacked_flags`` (bool tensors for further analysis,
    not JSON).
    """
    x = net.check_input(x)
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    clean = _clean_flags(net, x, labels)
    flags = {}
    for e in radii:
        if log:
            log(f"certifying ε={e} on {x.shape[0]} samples (exact QA-IBP)")
        flags[str(e)] = certified_flags(net, x, labels, e)
    pgd = None
    attacked: torch.Tensor | None = None
    m = x.shape[0] if pgd_n is None else min(int(pgd_n), x.shape[0])
    if pgd_eps is not None and pgd_steps > 0:
        if log:
            log(f"PGD ε={pgd_eps}, {pgd_steps} steps on {m} samples (those not certified at ε)")
        cert = flags.get(str(pgd_eps))
        attacked = pgd_counterexamples(
            net,
            x[:m],
            labels[:m],
            pgd_eps,
            None if cert is None else cert[:m],
            pgd_steps,
            pgd_restarts,
            seed,
        )
        pgd = 1.0 - int(attacked.sum()) / max(1, m)
    return {
        "clean_acc": int(clean.sum()) / max(1, x.shape[0]),
        "ibp_certified_acc": {k: int(v.sum()) / max(1, x.shape[0]) for k, v in flags.items()},
        "pgd_acc": pgd,
        "pgd_eps": pgd_eps,
        "pgd_n": m if pgd is not None else 0,
        "n_test": int(x.shape[0]),
        "certified_flags": flags,
        "attacked_flags": attacked,
    }


def float_ibp_transfer(
    model: torch.nn.Module,
    net: QNetwork,
    x: torch.Tensor,
    labels: torch.Tensor,
    radii: Sequence[int],
    qaibp_flags: dict[str, torch.Tensor],
    input_scale: float,
    pgd_steps: int = 20,
    pgd_restarts: int = 1,
    seed: int = 0,
    attacked: dict[str, torch.Tensor] | None = None,
    pgd_n: int | None = None,
) -> dict[str, Any]:
    """For each radius: how many inputs float IBP certifies for the float ``model``, and how many
    of those, after quantization to ``net``, are still certified by exact QA-IBP, are attackable
    (a PGD counterexample re-checked by the reference executor) or are neither.

    ``attacked`` may hold per-radius flags from :func:`pgd_counterexamples` already computed on
    the first ``len(flags)`` samples; attacks are run on the first ``pgd_n`` samples (all by
    default), and ``attack_checked`` says on how many float-certified inputs.
    """
    from qcert.bounds.ibp import float_ibp_certified

    lo, hi = net.input_range
    out: dict[str, Any] = {}
    for e in radii:
        fl = float_ibp_certified(model, x, labels, float(e), input_scale, (float(lo), float(hi)))
        q_cert = qaibp_flags[str(e)]
        n_f = int(fl.sum())
        attackable, checked = None, 0
        m = x.shape[0] if pgd_n is None else min(int(pgd_n), x.shape[0])
        if attacked is not None and str(e) in attacked:
            a = attacked[str(e)]
            attackable, checked = int((a & fl[: a.shape[0]]).sum()), int(fl[: a.shape[0]].sum())
        elif pgd_steps > 0:
            idx = fl[:m].nonzero().squeeze(1)
            hit = pgd_counterexamples(
                net, x[idx], labels[idx], e, q_cert[idx], pgd_steps, pgd_restarts, seed
            )
            attackable, checked = int(hit.sum()), int(idx.numel())
        out[str(e)] = {
            "float_certified": n_f,
            "float_certified_acc": n_f / max(1, x.shape[0]),
            "still_certified_after_ptq": int((q_cert & fl).sum()),
            "not_certifiable_after_ptq": n_f - int((q_cert & fl).sum()),
            "attackable_after_ptq": attackable,
            "attack_checked": checked,
        }
    return out
