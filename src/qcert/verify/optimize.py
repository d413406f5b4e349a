"""Linear bounds with optimized relaxation slopes and split multipliers (α- and β-CROWN's
parameters) over batches of subproblems, and the options of the search that uses them.

Every slope gives a valid line once its intercept is computed for it, and every multiplier ``β >=
0`` gives a valid bound on a subproblem whose split constraints hold (see
:mod:`qcert.verify.linear`), so the optimizer below only makes bounds tighter, never unsound. Its gradient steps may run in
float32 (``LinearBabOptions.opt_dtype``), where values are estimates without error term; they only
choose the parameters. The bound returned, and the λ's returned with it, always come from a
float64 pass with the rigorous error term at the parameters chosen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from qcert.errors import InputError
from qcert.quant.network import QNetwork
from qcert.verify.bab import check_counts
from qcert.verify.linear import F32, F64, LinearBounds, narrow, range_rows

Bounds = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LinearBabOptions:
    """Tuning of the linear-bound branch and bound.

    Attributes:
        batch: subproblems split per pass (their children are bounded in one batched pass).
        root_iters: optimization steps of the slopes at the root.
        iters: optimization steps of slopes and multipliers per pass.
        lr: Adam's step size (slopes and multipliers are parametrized on a unit scale).
        max_queue: most open subproblems; beyond it the search hands over to input splitting.
        attack_steps, attack_restarts: PGD on the query box before branching.
        refine_units: children re-tighten later layers' ranges by linear bounds when those
            layers have at most this many units.
        input_split_dims: a box with at most this many free input dimensions goes to input
            splitting (:func:`bab_search`) after the root bounds: there a few splits decide
            what many unit splits would.
        intermediate_units: at the root, the bounds of every unit layer after the first with
            at most this many units are optimized like the output's (α-CROWN's intermediate
            bounds); 0 keeps the chords' bounds.
        threads: torch CPU threads during the search (restored after it). The search runs many
            small products, where a second thread costs more in synchronization than it saves,
            and ten times more on a machine whose cores are busy (measured in docs/verify.md);
            0 leaves the setting alone.
        seed: seed of the attacks.
        branching: the unit score, ``"babsr"`` (the unit's relaxation gap times ``|λ|``, the
            default), ``"gain"`` (what a split removes of that gap) or ``"mixed"`` (the two on
            alternate passes; on a few hard queries these found counterexamples ``babsr`` did
            not, and lost on others: not yet measured on the suite); see
            :func:`qcert.verify.branching.scores`.
        opt_dtype: ``"float32"`` or ``"float64"``: the precision of the optimizer's gradient
            steps (slopes, multipliers, weights and autograd). Only the steps: every bound used
            (to prune, to prove, to tighten a range) comes from a float64 pass with the rigorous
            error term at the parameters the steps chose (measured in docs/verify.md).
    """

    batch: int = 64
    root_iters: int = 20
    iters: int = 3
    lr: float = 0.2
    max_queue: int = 20_000
    attack_steps: int = 20
    attack_restarts: int = 2
    refine_units: int = 256
    input_split_dims: int = 6
    intermediate_units: int = 512
    intermediate_iters: int = 20
    threads: int = 1
    seed: int = 0
    opt_dtype: str = "float32"
    branching: str = "babsr"

    def __post_init__(self) -> None:
        check_counts(self, ("batch", "max_queue"), 1)
        names = ("root_iters", "iters", "attack_steps", "attack_restarts", "refine_units")
        more = ("intermediate_units", "intermediate_iters", "input_split_dims", "threads")
        check_counts(self, (*names, *more), 0)
        if not 0 < float(self.lr) < float("inf"):
            raise InputError(f"lr must be a positive number, got {self.lr!r}")
        if self.opt_dtype not in _DTYPES:
            raise InputError(f"opt_dtype must be 'float32' or 'float64', got {self.opt_dtype!r}")
        if self.branching not in ("gain", "babsr", "mixed"):
            raise InputError(
                f"branching must be 'gain', 'babsr' or 'mixed', got {self.branching!r}"
            )


_DTYPES = {"float32": F32, "float64": F64}


class Params:
    """Slopes (as fractions of a per-unit scale, in [0, 1]) and split multipliers (>= 0) of a
    batch of subproblems: one (upper, lower) pair of B×R×n tensors per unit layer each."""

    def __init__(self, slopes: list[list[torch.Tensor]], betas: list[list[torch.Tensor]]) -> None:
        self.slopes, self.betas = slopes, betas

    def tensors(self) -> list[torch.Tensor]:
        return [t for pair in self.slopes + self.betas for t in pair]

    def rows(self, rows: torch.Tensor) -> Params:
        """The parameters of some spec rows only (copies)."""
        return Params(
            [[t[:, rows] for t in p] for p in self.slopes],
            [[t[:, rows] for t in p] for p in self.betas],
        )

    def set_rows(self, rows: torch.Tensor, sub: Params) -> None:
        for mine, theirs in zip(self.slopes + self.betas, sub.slopes + sub.betas):
            for t, v in zip(mine, theirs):
                t[:, rows] = v

    def select(self, idx: torch.Tensor) -> Params:
        return Params(
            [[t[idx].detach() for t in p] for p in self.slopes],
            [[t[idx].detach() for t in p] for p in self.betas],
        )


class LinearBab:
    """The search for one network (reusable across queries; build once)."""

    def __init__(self, net: QNetwork, options: LinearBabOptions | None = None) -> None:
        self.net = net
        self.opt = options or LinearBabOptions()
        self.lb = LinearBounds(net)
        self.scale = [u.scale for u in self.lb.units]
        #: the network's output is a requantization layer (its units are the logits)
        self.output_units = bool(self.lb.units) and not self.lb.segments[-1]

    # ------------------------------------------------------------------ bounding
    def _chord_scale(self, k: int, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Unit layer ``k`` over ``[l, u]`` (B×n): the chord of the exact staircase and the slope
        scale ``max(chord, 2^-s)``."""
        unit = self.lb.units[k]
        yl, yu = unit.layer.integer(l).to(F64), unit.layer.integer(u).to(F64)
        w = (u - l).to(F64)
        chord = torch.where(w > 0, (yu - yl) / w.clamp(min=1.0), torch.zeros_like(yl))
        return chord, torch.maximum(chord, torch.full_like(chord, unit.scale))

    def _scales(self, bounds: Bounds) -> list[torch.Tensor]:
        """Per unit layer (B×1×n): the slope scale ``max(chord, 2^-s)``."""
        return [self._chord_scale(k, l, u)[1].unsqueeze(1) for k, (l, u) in enumerate(bounds)]

    def optimize_intermediate(
        self,
        lo: torch.Tensor,
        hi: torch.Tensor,
        bounds: Bounds,
        iters: int,
        max_units: int,
        deadline: float | None = None,
    ) -> Bounds:
        """α-CROWN's optimized intermediate bounds at the root: each unit layer after the first
        (with at most ``max_units`` units) gets the bounds of its accumulators with the slopes of
        the layers before it optimized for each bound separately, layer by layer. Every bound is
        rigorous (see :meth:`bound`), and is only intersected with what was known."""
        bounds = list(bounds)
        for k in range(1, len(self.lb.units)):
            n = self.lb.units[k].size
            if n > max_units or (deadline is not None and time.monotonic() > deadline):
                continue
            l, u = bounds[k]
            layer = self.lb.units[k].layer
            units = (layer.integer(l) != layer.integer(u))[0].nonzero().squeeze(1)
            m = int(units.numel())
            if not m:
                continue
            params = self.init_params(bounds[:k], 2 * m)
            with torch.enable_grad():
                ub, _, _, _ = self.bound(
                    range_rows(n, units, 1), lo, hi, bounds, params, iters, deadline=deadline,
                    target=k,
                )  # fmt: skip
            bounds[k] = narrow(l, u, units, ub)
        return bounds

    def init_params(self, bounds: Bounds, rows: int) -> Params:
        slopes, betas = [], []
        for k, (l, u) in enumerate(bounds):
            chord, scale = self._chord_scale(k, l, u)
            f = (chord / scale).unsqueeze(1).expand(-1, rows, -1).clone()
            slopes.append([f, f.clone()])
            z = torch.zeros_like(f)
            betas.append([z, z.clone()])
        return Params(slopes, betas)

    def bound(
        self,
        C: torch.Tensor,
        lo: torch.Tensor,
        hi: torch.Tensor,
        bounds: Bounds,
        params: Params | None,
        iters: int,
        split_mask: list[torch.Tensor] | None = None,
        thresholds: torch.Tensor | None = None,
        deadline: float | None = None,
        target: int | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, Params | None]:
        """Rigorous upper bounds (int64 B×R, floors of bound + error) of the rows ``C`` over
        each subproblem, after ``iters`` optimization steps of ``params`` (in place, detached
        copies returned). Also returns λ on every unit layer (for scores) and on the input.
        ``target``: the rows are over the accumulators of that unit layer (then ``bounds`` and
        ``params`` cover the layers before it) instead of the network's output."""
        if target is None:
            target = len(self.lb.units)
        scales = self._scales(bounds[:target])
        if params is None or iters == 0:
            with torch.no_grad():
                slopes = None
                betas = None
                if params is not None:
                    slopes = [(p[0] * s, p[1] * s) for p, s in zip(params.slopes, scales)]
                    betas = self._betas(params, split_mask)
                val, err, lams = self.lb.backward(
                    target, C, lo, hi, bounds, slopes, betas, want_lambdas=True
                )
            return floor_int(val + err), lams[:-1], lams[-1], params
        dt = _DTYPES[self.opt.opt_dtype]
        rigorous = dt == F64
        scales_dt = [s.to(dt) for s in scales]
        # the optimizer's leaves, in its precision
        leaves = [t.detach().to(dt).clone().requires_grad_(True) for t in params.tensors()]
        n = len(params.slopes)
        cur = Params(
            [leaves[2 * i : 2 * i + 2] for i in range(n)],
            [leaves[2 * n + 2 * i : 2 * n + 2 * i + 2] for i in range(n)],
        )
        opt = Adam(leaves, self.opt.lr)
        # float64 steps: every step's bound is rigorous, the least is kept. float32 steps: their
        # values are estimates that only steer; the bound comes from the rigorous float64 pass
        # at the final parameters (as the λ's and the parameters returned, in both modes; a
        # caller keeps the parent's bound of a child anyway)
        best_val: torch.Tensor | None = None
        step_lams: list[torch.Tensor] = []
        for it in range(iters + 1):
            last = it == iters or (deadline is not None and time.monotonic() > deadline)
            if last and not rigorous:
                break
            with torch.set_grad_enabled(torch.is_grad_enabled() and not last):
                slopes = [(p[0] * s, p[1] * s) for p, s in zip(cur.slopes, scales_dt)]
                betas = self._betas(cur, split_mask, dt)
                val, err, step_lams = self.lb.backward(
                    target, C, lo, hi, bounds, slopes, betas, want_lambdas=last, dtype=dt
                )
                ub = val + err
            if rigorous:
                est = ub.detach()
                best_val = est if best_val is None else torch.minimum(best_val, est)
            if last:
                break
            loss = (ub if thresholds is None else (ub - thresholds).clamp(min=-1.0)).sum()
            opt.step(torch.autograd.grad(loss, leaves, allow_unused=True))
            with torch.no_grad():
                for pair in cur.slopes:
                    for t in pair:
                        t.clamp_(0.0, 1.0)
                for pair in cur.betas:
                    for t in pair:
                        t.clamp_(min=0.0)
        out = Params(
            [[t.detach().to(F64) for t in p] for p in cur.slopes],
            [[t.detach().to(F64) for t in p] for p in cur.betas],
        )
        if not rigorous:
            # float32 steps: the bound used is one rigorous float64 pass at the final parameters
            return self.bound(C, lo, hi, bounds, out, 0, split_mask, target=target)
        assert best_val is not None
        lams = [t.detach() for t in step_lams]
        return floor_int(best_val), lams[:-1], lams[-1], out

    def _betas(
        self, params: Params, split_mask: list[torch.Tensor] | None, dtype: torch.dtype = F64
    ) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        if split_mask is None:
            return None
        out = []
        for (bu, bl), m, s in zip(params.betas, split_mask, self.scale):
            mm = m.unsqueeze(1).to(dtype) * s
            out.append((bu * mm, bl * mm))
        return out


class Adam:
    """Adam (Kingma & Ba 2015) on a few leaf tensors, updated in place. Written here because
    ``torch.optim`` imports the compiler stack on first use (seconds per process), which a
    verifier answering in milliseconds cannot pay; the parameters' soundness does not depend on
    the optimizer (any slope and any ``β >= 0`` gives a valid bound)."""

    def __init__(self, params: list[torch.Tensor], lr: float) -> None:
        self.params, self.lr, self.t = params, lr, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, grads: tuple[torch.Tensor | None, ...]) -> None:
        self.t += 1
        c1, c2 = 1 - 0.9**self.t, 1 - 0.999**self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            if g is None:
                continue
            m.mul_(0.9).add_(g, alpha=0.1)
            v.mul_(0.999).addcmul_(g, g, value=0.001)
            p.sub_(self.lr * (m / c1) / ((v / c2).sqrt() + 1e-8))


def floor_int(v: torch.Tensor) -> torch.Tensor:
    lim = float(2**62)
    return torch.floor(v.detach()).clamp(-lim, lim).to(torch.int64)
