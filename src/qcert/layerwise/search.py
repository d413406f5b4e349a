"""Per-layer bit-width and clipping-range search under an average-bits budget.

Strategies (docs/layerwise.md):

* ``lipschitz`` (qcert's design after arXiv 2110.12308): minimise the Lipschitz bound of
  :mod:`qcert.layerwise.metric` on clean and PGD calibration points,
  ``Σ_l L_{>l} (‖ΔW_l‖ E‖a_{l−1}‖ + E‖e_l‖)``, over each layer's bit width (weights and the
  activation after it share it), weight fractional bits and activation fractional bits;
* ``mse``: minimise the total squared weight error ``Σ_l ‖ΔW_l‖_F²`` (bits and weight fractional
  bits), activation fractional bits by the activation MSE on clean calibration inputs;
* ``uniform``: the same bit width everywhere, fractional bits from the calibration maximum
  (:func:`qcert.quant.from_float`).

The budget is the parameter-weighted average weight bit width ``Σ n_l b_l / Σ n_l ≤ B``. Both
objectives are sums of per-layer terms, so the search is a multiple-choice knapsack, solved exactly
by dynamic programming over the Pareto front of (bits used, objective) — :func:`allocate`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from qcert.attack.pgd import pgd_float
from qcert.errors import InputError
from qcert.layerwise.build import quantize_with_formats
from qcert.layerwise.metric import (
    LayerProfile,
    act_error,
    act_fracs,
    profile,
    weight_error,
    weight_error_data,
    weight_error_norm,
    weight_fracs,
)
from qcert.quant.convert import from_float
from qcert.quant.floatmodel import FloatModel
from qcert.quant.format import FixedPointFormat, Rounding
from qcert.quant.inputs import check_levels
from qcert.quant.layers import QRequant
from qcert.quant.network import QNetwork

STRATEGIES = ("lipschitz", "uniform", "mse")
WEIGHT_TERMS = ("operator", "data")
MIN_BITS, MAX_BITS = 2, 8


@dataclass(frozen=True)
class Choice:
    """One layer's candidate: bit width, weight and activation fractional bits, its objective
    term and cost in bits (``params * bits``)."""

    bits: int
    weight_frac: int
    act_frac: int | None
    value: float
    cost: int


@dataclass
class SearchResult:
    """The chosen quantization and how it was found."""

    strategy: str
    budget: float
    bits: list[int]
    weight_fracs: list[int]
    act_fracs: list[int]
    params: list[int]
    objective: float | None
    metric: float | None
    metric_terms: list[dict[str, float]] = field(default_factory=list)
    eps: float | None = None
    norm: str = "2"
    weight_term: str = "operator"
    seconds: float = 0.0

    @property
    def avg_bits(self) -> float:
        """The parameter-weighted average weight bit width."""
        return sum(n * b for n, b in zip(self.params, self.bits)) / sum(self.params)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["avg_bits"] = self.avg_bits
        return d


def allocate(
    costs: Sequence[Sequence[int]], values: Sequence[Sequence[float]], budget: int
) -> list[int]:
    """Exact multiple-choice knapsack: one option per layer minimising ``Σ values[l][k]`` subject
    to ``Σ costs[l][k] ≤ budget``. Dynamic programming over the Pareto front of (cost, value)
    partial solutions (dominated ones are dropped, so the front never exceeds the number of
    distinct costs). Ties go to the cheaper solution. Raises :class:`InputError` if nothing fits."""
    if len(costs) != len(values) or any(len(c) != len(v) for c, v in zip(costs, values)):
        raise InputError("costs and values must have the same shape")
    front: list[tuple[int, float, tuple[int, ...]]] = [(0, 0.0, ())]
    for cl, vl in zip(costs, values):
        cand = [
            (c + cl[k], v + vl[k], ch + (k,))
            for c, v, ch in front
            for k in range(len(cl))
            if c + cl[k] <= budget
        ]
        cand.sort(key=lambda t: (t[0], t[1]))
        front = []
        for t in cand:
            if not front or t[1] < front[-1][1]:
                front.append(t)
        if not front:
            raise InputError(f"no choice of bit widths fits the budget of {budget} bits")
    best = min(front, key=lambda t: (t[1], t[0]))
    return list(best[2])


def _check_budget(strategy: str, avg_bits: float, lo: int, hi: int) -> float:
    if strategy not in STRATEGIES:
        raise InputError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if isinstance(avg_bits, bool) or not isinstance(avg_bits, int | float):
        raise InputError(f"avg_bits must be a number, got {avg_bits!r}")
    if not math.isfinite(avg_bits) or not lo <= avg_bits <= hi:
        raise InputError(f"avg_bits must lie in [{lo}, {hi}], got {avg_bits!r}")
    if strategy == "uniform" and avg_bits != int(avg_bits):
        raise InputError(f"the uniform strategy needs a whole number of bits, got {avg_bits}")
    return float(avg_bits)


def _weight_term(p: LayerProfile, fmt: FixedPointFormat, weight_term: str) -> float:
    """``L_{>l} ‖ΔW_l‖ E‖a_{l−1}‖`` (operator) or ``L_{>l} E‖ΔW_l a_{l−1}‖`` (data)."""
    if weight_term == "data":
        return p.lip_after * weight_error_data(p, fmt)
    return p.lip_after * weight_error_norm(p, fmt) * p.in_norm


def _layer_choices(
    p: LayerProfile, strategy: str, bits_range: range, rounding: Rounding, weight_term: str
) -> list[Choice]:
    """The best (weight frac, act frac) of layer ``p`` at each bit width, with its value."""
    out = []
    for b in bits_range:
        wvals = []
        for f in weight_fracs(p.op.weight, b):
            fmt = FixedPointFormat(b, True, f)
            if strategy == "lipschitz":
                wvals.append((_weight_term(p, fmt, weight_term), f))
            else:
                wvals.append((float(weight_error(p, fmt).pow(2).sum()), f))
        wv, wf = min(wvals)
        av, af = 0.0, None
        if p.z is not None:
            avals = []
            for f in act_fracs(p.z, b, not p.relu):
                fmt = FixedPointFormat(b, not p.relu, f)
                if strategy == "lipschitz":
                    avals.append((p.lip_after * act_error(p, fmt, rounding)[0], f))
                else:
                    avals.append((act_error(p, fmt, rounding, rows=p.clean)[1], f))
            a, af = min(avals)
            av = a if strategy == "lipschitz" else 0.0
        out.append(Choice(b, wf, af, wv + av, p.params * b))
    return out


def metric_terms(
    profiles: Sequence[LayerProfile],
    weight_formats: Sequence[FixedPointFormat],
    act_formats: Sequence[FixedPointFormat],
    rounding: Rounding | str = Rounding.HALF_UP,
    weight_term: str = "operator",
) -> list[dict[str, float]]:
    """The Lipschitz metric's per-layer terms for given formats: ``weight`` =
    ``L_{>l} ‖ΔW_l‖ E‖a_{l−1}‖`` (or ``L_{>l} E‖ΔW_l a_{l−1}‖`` for ``weight_term="data"``) and
    ``act`` = ``L_{>l} E‖e_l‖`` on the profile's points."""
    rounding = Rounding.parse(rounding)
    terms = []
    for i, p in enumerate(profiles):
        w = _weight_term(p, weight_formats[i], weight_term)
        a = 0.0
        if p.z is not None:
            fmt = act_formats[i]
            a = (
                p.lip_after
                * act_error(p, FixedPointFormat(fmt.bits, not p.relu, fmt.frac), rounding)[0]
            )
        terms.append({"weight": w, "act": a})
    return terms


def calibration_points(
    model: FloatModel,
    x_int: torch.Tensor,
    labels: torch.Tensor,
    eps: float | None,
    steps: int = 10,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean inputs followed by the float model's PGD points at ``eps`` (none if ``eps`` is None
    or 0), and the mask of the clean rows."""
    x = x_int.to(torch.float32)
    clean = torch.ones(x.shape[0], dtype=torch.bool)
    if not eps:
        return x, clean
    gen = torch.Generator().manual_seed(seed)
    model.module.eval()
    adv = torch.cat(
        [
            pgd_float(model, x[s : s + 500], labels[s : s + 500], eps, steps, generator=gen)
            for s in range(0, x.shape[0], 500)
        ]
    )
    return torch.cat([x, adv]), torch.cat([clean, torch.zeros_like(clean)])


def quantize(
    model: FloatModel,
    calib_x: torch.Tensor,
    calib_y: torch.Tensor,
    strategy: str,
    avg_bits: float,
    eps: float | None = None,
    *,
    norm: str = "2",
    rounding: Rounding | str = Rounding.HALF_UP,
    min_bits: int = MIN_BITS,
    max_bits: int = MAX_BITS,
    pgd_steps: int = 10,
    seed: int = 0,
    weight_term: str = "operator",
) -> tuple[QNetwork, SearchResult]:
    """Quantize a float model with one strategy under the budget ``avg_bits`` (parameter-weighted
    average weight bits). Returns the QNetwork and the :class:`SearchResult`.

    ``calib_x`` / ``calib_y``: integer-unit calibration inputs (N×input_shape) and labels;
    ``eps``: the radius (input levels) of the float PGD calibration points that the ``lipschitz``
    strategy needs (the metric of the result is reported for every strategy when ``eps`` is given);
    ``weight_term``: ``"operator"`` (``‖ΔW‖ E‖a‖``) or ``"data"`` (``E‖ΔW a‖``, tighter).
    The guarantee: the chosen bit widths satisfy the budget, and for ``lipschitz`` / ``mse`` they
    minimise the strategy's objective exactly over the candidate formats.
    """
    t0 = time.perf_counter()
    if not (
        isinstance(min_bits, int) and isinstance(max_bits, int) and 2 <= min_bits <= max_bits <= 16
    ):
        raise InputError(f"bit range must satisfy 2 ≤ min ≤ max ≤ 16, got {min_bits}..{max_bits}")
    budget = _check_budget(strategy, avg_bits, min_bits, max_bits)
    if strategy == "lipschitz" and not eps:
        raise InputError("the lipschitz strategy needs eps > 0 (input levels) for its PGD points")
    if eps is not None:
        eps = check_levels(eps)
    if calib_y.shape[0] != calib_x.shape[0]:
        raise InputError(f"{calib_x.shape[0]} calibration inputs but {calib_y.shape[0]} labels")
    if weight_term not in WEIGHT_TERMS:
        raise InputError(
            f"weight_term must be one of {', '.join(WEIGHT_TERMS)}, got {weight_term!r}"
        )
    rounding = Rounding.parse(rounding)
    points, clean = calibration_points(model, calib_x, calib_y, eps, pgd_steps, seed)
    profiles = profile(model, points, clean, norm, keep_inputs=weight_term == "data")
    params = [p.params for p in profiles]
    if strategy == "uniform":
        b = int(budget)
        net = from_float(
            model.module,
            calib_x,
            bits=b,
            input_scale=model.input_scale,
            rounding=rounding,
            classes=model.classes,
        )
        wformats = [m.weight_format for m in net.affine_layers()]
        aformats = [m.format for m in net.layers if isinstance(m, QRequant)]
        objective = None
    else:
        bits_range = range(min_bits, max_bits + 1)
        table = [_layer_choices(p, strategy, bits_range, rounding, weight_term) for p in profiles]
        pick = allocate(
            [[c.cost for c in t] for t in table],
            [[c.value for c in t] for t in table],
            math.floor(budget * sum(params) + 1e-9),
        )
        chosen = [t[k] for t, k in zip(table, pick)]
        wformats = [FixedPointFormat(c.bits, True, c.weight_frac) for c in chosen]
        aformats = [
            FixedPointFormat(c.bits, not p.relu, c.act_frac)
            for c, p in zip(chosen, profiles)
            if c.act_frac is not None
        ]
        objective = sum(c.value for c in chosen)
        net = quantize_with_formats(model, wformats, aformats, rounding)
    terms = metric_terms(profiles, wformats, aformats, rounding, weight_term) if eps else []
    result = SearchResult(
        strategy=strategy,
        budget=budget,
        bits=[f.bits for f in wformats],
        weight_fracs=[f.frac for f in wformats],
        act_fracs=[f.frac for f in aformats],
        params=params,
        objective=objective,
        metric=sum(t["weight"] + t["act"] for t in terms) if terms else None,
        metric_terms=terms,
        eps=eps,
        norm=norm,
        weight_term=weight_term,
        seconds=time.perf_counter() - t0,
    )
    net.meta = {"quantize": {k: v for k, v in result.to_dict().items() if k != "metric_terms"}}
    return net, result


__all__ = [
    "MIN_BITS",
    "MAX_BITS",
    "STRATEGIES",
    "WEIGHT_TERMS",
    "Choice",
    "SearchResult",
    "allocate",
    "quantize",
]
