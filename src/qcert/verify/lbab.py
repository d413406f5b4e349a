"""Complete verification by branch and bound over the integer values of hidden units, bounded by
linear relaxations with optimized slopes and split multipliers (α,β-CROWN's scheme, Xu et al. 2021
and Wang et al. 2021, carried out for qcert's exact integer semantics).

A subproblem is the query box plus an integer range ``[l_i, u_i]`` for every requantization
unit's accumulator. The root ranges are interval bounds tightened by linear bounds. A pass:

1. bound every open subproblem's specification rows with :class:`LinearBounds` (slopes ``α``
   and split multipliers ``β >= 0`` optimized by a few steps of Adam, warm-started from the
   parent); a subproblem is dropped when every unsafe disjunct has a row whose rigorous upper
   bound is below its threshold;
2. look for a counterexample: the input corner that maximizes each open subproblem's bound, and
   PGD on the query box, every candidate re-checked by the reference executor;
3. split each open subproblem at the unit whose relaxation contributes most to its bound
   (a BaBSR-like score: ``|λ|`` times the gap between the unit's two lines), at an integer
   threshold ``t``: ``z <= t`` | ``z >= t + 1``, chosen where the staircase leaves its bottom
   (or top) step, else at its middle step; both children are bounded in one batched pass.

Soundness: a subproblem is dropped only on a rigorous bound (see :mod:`qcert.verify.linear`);
children partition the parent's integer points. Termination and exactness: every split shrinks an
integer range; a subproblem where every unit's value is fixed and which is still open, or a search
that outgrows its queue, is handed to the exact input-splitting search (:func:`bab_search`), which
always terminates, for the rest of the time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from qcert.attack import PGD, FakeForward, check_box
from qcert.errors import InputError
from qcert.quant.network import QNetwork
from qcert.verify.bab import SAFE, TIMEOUT, UNSAFE, BabOptions, SearchOutcome, bab_search
from qcert.verify.bounds import SpecBounds
from qcert.verify.linear import F64, LinearBounds
from qcert.verify.spec import OutputSpec

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
        threads: torch CPU threads during the search (restored after it). The search runs many
            small products, where a second thread costs more in synchronization than it saves,
            and ten times more on a machine whose cores are busy (measured in docs/verify.md);
            0 leaves the setting alone.
        seed: seed of the attacks.
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
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch", "max_queue"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        for name in (
            "root_iters",
            "iters",
            "attack_steps",
            "attack_restarts",
            "refine_units",
            "input_split_dims",
            "threads",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(f"{name} must be a non-negative integer, got {v!r}")
        if not 0 < float(self.lr) < float("inf"):
            raise InputError(f"lr must be a positive number, got {self.lr!r}")


class _Params:
    """Slopes (as fractions of a per-unit scale, in [0, 1]) and split multipliers (>= 0) of a
    batch of subproblems: one (upper, lower) pair of B×R×n tensors per unit layer each."""

    def __init__(self, slopes: list[list[torch.Tensor]], betas: list[list[torch.Tensor]]) -> None:
        self.slopes, self.betas = slopes, betas

    def tensors(self) -> list[torch.Tensor]:
        return [t for pair in self.slopes + self.betas for t in pair]

    def rows(self, rows: torch.Tensor) -> _Params:
        """The parameters of some spec rows only (copies)."""
        return _Params(
            [[t[:, rows] for t in p] for p in self.slopes],
            [[t[:, rows] for t in p] for p in self.betas],
        )

    def set_rows(self, rows: torch.Tensor, sub: _Params) -> None:
        for mine, theirs in zip(self.slopes + self.betas, sub.slopes + sub.betas):
            for t, v in zip(mine, theirs):
                t[:, rows] = v

    def select(self, idx: torch.Tensor) -> _Params:
        return _Params(
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
    def _scales(self, bounds: Bounds) -> list[torch.Tensor]:
        """Per unit layer (B×1×n): the slope scale ``max(chord, 2^-s)``."""
        out = []
        for k, (l, u) in enumerate(bounds):
            unit = self.lb.units[k]
            yl, yu = unit.layer.integer(l).to(F64), unit.layer.integer(u).to(F64)
            w = (u - l).to(F64)
            chord = torch.where(w > 0, (yu - yl) / w.clamp(min=1.0), torch.zeros_like(yl))
            out.append(torch.maximum(chord, torch.full_like(chord, unit.scale)).unsqueeze(1))
        return out

    def init_params(self, bounds: Bounds, rows: int) -> _Params:
        slopes, betas = [], []
        for k, (l, u) in enumerate(bounds):
            unit = self.lb.units[k]
            yl, yu = unit.layer.integer(l).to(F64), unit.layer.integer(u).to(F64)
            w = (u - l).to(F64)
            chord = torch.where(w > 0, (yu - yl) / w.clamp(min=1.0), torch.zeros_like(yl))
            frac = chord / torch.maximum(chord, torch.full_like(chord, unit.scale))
            f = frac.unsqueeze(1).expand(-1, rows, -1).clone()
            slopes.append([f, f.clone()])
            z = torch.zeros_like(f)
            betas.append([z, z.clone()])
        return _Params(slopes, betas)

    def bound(
        self,
        C: torch.Tensor,
        lo: torch.Tensor,
        hi: torch.Tensor,
        bounds: Bounds,
        params: _Params | None,
        iters: int,
        split_mask: list[torch.Tensor] | None = None,
        thresholds: torch.Tensor | None = None,
        deadline: float | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, _Params | None]:
        """Rigorous upper bounds (int64 B×R, floors of bound + error) of the rows ``C`` over
        each subproblem, after ``iters`` optimization steps of ``params`` (in place, detached
        copies returned). Also returns λ on every unit layer (for scores) and on the input."""
        target = len(self.lb.units)
        scales = self._scales(bounds)
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
            return _floor(val + err), lams[:-1], lams[-1], params
        leaves = [t.detach().clone().requires_grad_(True) for t in params.tensors()]
        n = len(params.slopes)
        cur = _Params(
            [leaves[2 * i : 2 * i + 2] for i in range(n)],
            [leaves[2 * n + 2 * i : 2 * n + 2 * i + 2] for i in range(n)],
        )
        opt = _Adam(leaves, self.opt.lr)
        best = None
        best_val = None
        for it in range(iters + 1):
            slopes = [(p[0] * s, p[1] * s) for p, s in zip(cur.slopes, scales)]
            betas = self._betas(cur, split_mask)
            last = it == iters or (deadline is not None and time.monotonic() > deadline)
            val, err, lams = self.lb.backward(
                target, C, lo, hi, bounds, slopes, betas, want_lambdas=last
            )
            ub = val + err
            if best_val is None:
                best_val = ub.detach()
            else:
                best_val = torch.minimum(best_val, ub.detach())
            if last:
                best = lams
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
        assert best is not None and best_val is not None
        lams = [t.detach() for t in best]
        out = _Params(
            [[t.detach() for t in p] for p in cur.slopes],
            [[t.detach() for t in p] for p in cur.betas],
        )
        return _floor(best_val), lams[:-1], lams[-1], out

    def _betas(
        self, params: _Params, split_mask: list[torch.Tensor] | None
    ) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        if split_mask is None:
            return None
        out = []
        for (bu, bl), m, s in zip(params.betas, split_mask, self.scale):
            mm = m.unsqueeze(1).to(F64) * s
            out.append((bu * mm, bl * mm))
        return out


class _Adam:
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


def _floor(v: torch.Tensor) -> torch.Tensor:
    lim = float(2**62)
    return torch.floor(v.detach()).clamp(-lim, lim).to(torch.int64)


def _largest_at_most(layer, l: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """Per unit: the largest integer ``t`` in ``[l, u - 1]`` with ``y(t) <= v`` (``y(l) <= v <
    y(u)`` assumed; the staircase is monotone), by bisection in exact integer arithmetic."""
    a, b = l.clone(), u.clone()
    while True:
        open_ = (b - a) > 1
        if not bool(open_.any()):
            return a
        mid = torch.div(a + b, 2, rounding_mode="floor")
        ok = layer.integer(mid) <= v
        a = torch.where(open_ & ok, mid, a)
        b = torch.where(open_ & ~ok, mid, b)


def linear_bab_search(
    net: QNetwork,
    lo: torch.Tensor,
    hi: torch.Tensor,
    spec: OutputSpec,
    *,
    timeout: float = 20.0,
    options: LinearBabOptions | None = None,
    x0: torch.Tensor | None = None,
    bounds: SpecBounds | None = None,
    fake: FakeForward | None = None,
    searcher: LinearBab | None = None,
) -> SearchOutcome:
    """Decide whether some integer input in the box ``[lo, hi]`` has logits in the unsafe set of
    ``spec``: ``safe`` (a proof), ``unsafe`` (a counterexample confirmed by
    ``net.integer_forward``) or ``timeout``. ``bounds``, ``fake`` and ``searcher`` may be prebuilt
    for ``net`` (and ``spec``) and reused across queries."""
    search = searcher if searcher is not None else LinearBab(net, options)
    before = torch.get_num_threads()
    if search.opt.threads:
        torch.set_num_threads(search.opt.threads)
    try:
        with torch.no_grad():
            return _search(net, lo, hi, spec, timeout, x0, bounds, fake, search)
    finally:
        torch.set_num_threads(before)


def _search(
    net: QNetwork,
    lo: torch.Tensor,
    hi: torch.Tensor,
    spec: OutputSpec,
    timeout: float,
    x0: torch.Tensor | None,
    bounds: SpecBounds | None,
    fake: FakeForward | None,
    search: LinearBab,
) -> SearchOutcome:
    t0 = time.monotonic()
    deadline = t0 + float(timeout)
    lo, hi = check_box(net, lo.reshape(1, *net.input_shape), hi.reshape(1, *net.input_shape))
    if bounds is None:
        bounds = SpecBounds(net, spec)
    opt = search.opt
    out = SearchOutcome(SAFE, stats={"bound_s": 0.0, "attack_s": 0.0, "split_s": 0.0})

    def confirm(points: torch.Tensor) -> torch.Tensor | None:
        if not points.shape[0]:
            return None
        pts = points.reshape(-1, *net.input_shape)
        for i in (spec.badness(bounds.values(pts)) > 0).nonzero().squeeze(1).tolist():
            if bool(spec.holds(net.integer_forward(pts[i : i + 1]))[0]):
                return pts[i].clone()
        return None

    def unsafe(point: torch.Tensor, note: str) -> SearchOutcome:
        out.status, out.counterexample, out.note = UNSAFE, point, note
        return out

    # 1. interval bounds of the whole box
    ub_ibp = bounds.upper(lo, hi)
    out.boxes = 1
    if int(spec.badness(ub_ibp)[0]) <= 0:
        out.note = "interval bounds"
        return out
    flat_lo, flat_hi = lo.reshape(1, -1), hi.reshape(1, -1)
    if bool((flat_lo == flat_hi).all()):
        point = confirm(flat_lo)
        if point is None:
            raise AssertionError("bounds of a single point are not exact")
        return unsafe(point, "the query box is a single unsafe point")
    # 2. linear bounds at the root (intermediate ranges tightened, chords)
    tb = time.monotonic()
    root = search.lb.refine(flat_lo, flat_hi)
    C = spec.A.to(F64).unsqueeze(0)
    thr = spec.b.to(F64).unsqueeze(0)
    ub, lam_units, lam_in, _ = search.bound(C, flat_lo, flat_hi, root, None, 0)
    ub = torch.minimum(ub, ub_ibp)
    out.stats["bound_s"] += time.monotonic() - tb
    if int(spec.badness(ub)[0]) <= 0:
        out.note = "linear bounds"
        return out
    point = confirm(_corners(lam_in, flat_lo, flat_hi))
    if point is not None:
        return unsafe(point, "the linear bound's maximizer")
    # 3. PGD on the query box
    ta = time.monotonic()
    if opt.attack_steps or x0 is not None:
        if fake is None:
            fake = FakeForward(net)
        pgd = PGD(
            net,
            steps=opt.attack_steps,
            restarts=opt.attack_restarts,
            seed=opt.seed,
            loss="margin",
            fake=fake,
            deadline=deadline,
        )
        res = pgd(lo, hi, goal=spec.goal(1), x0=None if x0 is None else x0.reshape(lo.shape))
        out.stats["attack_s"] += time.monotonic() - ta
        if bool(res.success[0]):
            point = confirm(res.adv.reshape(1, -1))
            if point is not None:
                return unsafe(point, "PGD on the query box")
    # 4. optimized slopes at the root
    tb = time.monotonic()
    params = search.init_params(root, C.shape[1])
    rows = (ub >= spec.b.unsqueeze(0)).any(0).nonzero().squeeze(1)
    sub = params.rows(rows)
    with torch.enable_grad():
        ub2, _, _, opt_sub = search.bound(
            C[:, rows],
            flat_lo,
            flat_hi,
            root,
            sub,
            opt.root_iters,
            thresholds=thr[:, rows],
            deadline=deadline,
        )
    assert opt_sub is not None
    params.set_rows(rows, opt_sub)
    ub[:, rows] = torch.minimum(ub[:, rows], ub2)
    _, lam_units, lam_in, _ = search.bound(C, flat_lo, flat_hi, root, params, 0)
    out.stats["bound_s"] += time.monotonic() - tb
    if int(spec.badness(ub)[0]) <= 0:
        out.note = "optimized linear bounds"
        return out
    point = confirm(_corners(lam_in, flat_lo, flat_hi))
    if point is not None:
        return unsafe(point, "the linear bound's maximizer")
    free = int((flat_hi > flat_lo).sum())
    if free <= opt.input_split_dims:
        return _input_splitting(
            net, lo, hi, spec, deadline, opt.seed, bounds, fake, out, "few inputs"
        )
    # 5. branch and bound over unit values
    root_l = [l for l, _ in root]
    root_u = [u for _, u in root]
    queue: list[tuple[Bounds, torch.Tensor, list[torch.Tensor], _Params]] = []
    scores = _scores(search, root, lam_units)
    queue.append((root, ub, scores, params))
    size = 1
    stuck_note = ""
    last_pass = 0.0
    while size:
        if time.monotonic() + last_pass > deadline:  # the next pass would end past the limit
            out.status, out.note = TIMEOUT, f"time limit with {size} open subproblems"
            return out
        out.passes += 1
        pass_start = time.monotonic()
        # pop up to `batch` subproblems (newest first)
        parts = []
        want = opt.batch
        while want and queue:
            item = queue.pop()
            n = item[1].shape[0]
            if n > want:
                keep = torch.arange(n - want)
                take = torch.arange(n - want, n)
                queue.append(_take(item, keep))
                item = _take(item, take)
                n = want
            parts.append(item)
            want -= n
        bnds, pub, psc, ppar = _cat(parts)
        size -= pub.shape[0]
        ts = time.monotonic()
        choice = _choose(psc)
        if choice is None or bool((choice[1] < 0).any()):
            stuck_note = "a subproblem with every unit fixed stayed open"
            break
        cbounds, cpar = _branch(search, bnds, ppar, choice)
        out.stats["split_s"] += time.monotonic() - ts
        tb = time.monotonic()
        cb = cbounds
        rows = (pub.repeat(2, 1) >= spec.b.unsqueeze(0)).any(0).nonzero().squeeze(1)
        if opt.refine_units:
            # on requantized logits, only the units the open rows read are re-tightened
            used = (spec.A[rows] != 0).any(0).nonzero().squeeze(1) if search.output_units else None
            cb = _refine_children(
                search, flat_lo, flat_hi, cbounds, choice[0], opt.refine_units, used
            )
        nb = cb[0][0].shape[0]
        mask = [((l != rl) | (u != ru)) for (l, u), rl, ru in zip(cb, root_l, root_u)]
        blo, bhi = flat_lo.expand(nb, -1), flat_hi.expand(nb, -1)
        # only the rows still open in some subproblem of the batch are bounded again; the
        # others keep the parent's bound (a child's points are a subset of its parent's)
        sub = cpar.rows(rows)
        with torch.enable_grad():
            rub, clam, clin, opt_sub = search.bound(
                C[:, rows].expand(nb, -1, -1),
                blo,
                bhi,
                cb,
                sub,
                opt.iters,
                mask,
                thr[:, rows],
                deadline,
            )
        cub = pub.repeat(2, 1)
        cub[:, rows] = torch.minimum(cub[:, rows], rub)
        assert opt_sub is not None
        cpar.set_rows(rows, opt_sub)
        out.stats["bound_s"] += time.monotonic() - tb
        last_pass = time.monotonic() - pass_start
        out.boxes += nb
        bad = spec.badness(cub)
        keep = bad > 0
        if not bool(keep.any()):
            continue
        idx = keep.nonzero().squeeze(1)
        ta = time.monotonic()
        point = confirm(_corners(clin[idx], flat_lo, flat_hi))
        out.stats["attack_s"] += time.monotonic() - ta
        if point is not None:
            return unsafe(point, "the linear bound's maximizer in a subproblem")
        cb = [(l[idx], u[idx]) for l, u in cb]
        csc = _scores(search, cb, [t[idx] for t in clam])
        order = torch.argsort(bad[idx], descending=True, stable=True)  # most open popped last
        item = (cb, cub[idx], csc, cpar.select(idx))
        queue.append(_take(item, order))
        size += int(idx.numel())
        out.max_queue = max(out.max_queue, size)
        if size > opt.max_queue:
            stuck_note = f"more than {opt.max_queue} open subproblems"
            break
    if not size and not stuck_note:
        out.note = "branch and bound over unit values"
        return out
    # 6. the exact input-splitting search for the rest of the time
    return _input_splitting(net, lo, hi, spec, deadline, opt.seed, bounds, fake, out, stuck_note)


def _input_splitting(
    net: QNetwork,
    lo: torch.Tensor,
    hi: torch.Tensor,
    spec: OutputSpec,
    deadline: float,
    seed: int,
    bounds: SpecBounds,
    fake: FakeForward | None,
    out: SearchOutcome,
    why: str,
) -> SearchOutcome:
    """Hand the query to the exact input-splitting search for the time that is left."""
    left = deadline - time.monotonic()
    if left <= 0:
        out.status, out.note = TIMEOUT, f"time limit ({why})"
        return out
    options = BabOptions(seed=seed, attack_steps=0)
    res = bab_search(net, lo, hi, spec, timeout=left, options=options, bounds=bounds, fake=fake)
    res.boxes += out.boxes
    res.note = f"{why}; input splitting: {res.note or res.status}"
    return res


def _corners(lam_in: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The input corner maximizing each row's linear bound (B×R×n → (B·R)×n int64)."""
    b, r, n = lam_in.shape
    return torch.where(lam_in > 0, hi.reshape(1, 1, n), lo.reshape(1, 1, n)).reshape(b * r, n)


def _scores(search: LinearBab, bounds: Bounds, lams: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per unit layer (B×n): ``Σ_rows |λ|`` times the gap of the unit's relaxation; 0 where the
    unit's value is fixed, -1 where it is fixed and cannot be split."""
    out = []
    for k, ((l, u), lam) in enumerate(zip(bounds, lams)):
        unit = search.lb.units[k]
        a_up, b_up, a_lo, b_lo = search.lb.relax(k, l, u)
        lf, uf = l.to(F64), u.to(F64)
        gap = torch.maximum((a_up - a_lo) * lf + b_up - b_lo, (a_up - a_lo) * uf + b_up - b_lo)
        fixed = unit.layer.integer(l) == unit.layer.integer(u)
        s = lam.abs().sum(1) * gap
        out.append(torch.where(fixed, torch.full_like(s, -1.0), s))
    return out


def _choose(scores: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per subproblem: (layer, unit) of the highest score; unit -1 when nothing can be split."""
    if not scores:
        return None
    best = torch.stack([s.max(1).values for s in scores], 1)  # B×L
    layer = best.argmax(1)
    unit = torch.stack([s.argmax(1) for s in scores], 1).gather(1, layer.unsqueeze(1)).squeeze(1)
    top = best.gather(1, layer.unsqueeze(1)).squeeze(1)
    return layer, torch.where(top < 0, torch.full_like(unit, -1), unit)


def _branch(
    search: LinearBab, bounds: Bounds, params: _Params, choice: tuple[torch.Tensor, torch.Tensor]
) -> tuple[Bounds, _Params]:
    """Children (2B: the ``z <= t`` halves, then the ``z >= t + 1`` halves) of every subproblem."""
    layer, unit = choice
    b = layer.shape[0]
    lows = [l.repeat(2, 1) for l, _ in bounds]
    ups = [u.repeat(2, 1) for _, u in bounds]
    for k in range(len(bounds)):
        sel = (layer == k).nonzero().squeeze(1)
        if not sel.numel():
            continue
        uu = unit[sel]
        l, u = bounds[k][0][sel, uu], bounds[k][1][sel, uu]
        layer_k = search.lb.units[k].layer
        yl, yu = layer_k.integer(l), layer_k.integer(u)
        fmt = layer_k.format
        v = torch.div(yl + yu - 1, 2, rounding_mode="floor")  # the middle step
        v = torch.where(yl == fmt.qmin, yl, v)  # leave the bottom step first
        v = torch.where((yl > fmt.qmin) & (yu == fmt.qmax), yu - 1, v)  # else the top one
        t = _largest_at_most(layer_k, l, u, v)
        ups[k][sel, uu] = t
        lows[k][sel + b, uu] = t + 1
    children = [(lo_, up_) for lo_, up_ in zip(lows, ups)]
    idx = torch.cat([torch.arange(b), torch.arange(b)])
    return children, params.select(idx)


def _refine_children(
    search: LinearBab,
    lo: torch.Tensor,
    hi: torch.Tensor,
    bounds: Bounds,
    split_layer: torch.Tensor,
    max_units: int,
    last_units: torch.Tensor | None = None,
) -> Bounds:
    """Re-tighten, by linear bounds, the ranges of layers after the earliest split layer (of the
    last layer only ``last_units``, when given)."""
    lb = search.lb
    first = int(split_layer.min()) + 1
    bounds = list(bounds)
    nb = bounds[0][0].shape[0]
    for k in range(first, len(lb.units)):
        n = lb.units[k].size
        units = torch.arange(n)
        if k == len(lb.units) - 1 and last_units is not None:
            units = last_units
        m = int(units.numel())
        if m > max_units or not m:
            continue
        eye = torch.eye(n, dtype=F64)[units].unsqueeze(0).expand(nb, m, n)
        C = torch.cat([eye, -eye], dim=1)
        val, err, _ = lb.backward(k, C, lo.expand(nb, -1), hi.expand(nb, -1), bounds[:k])
        ubv = _floor(val[:, :m] + err[:, :m])
        lbv = -_floor(val[:, m:] + err[:, m:])
        l, u = bounds[k][0].clone(), bounds[k][1].clone()
        nl = torch.maximum(l[:, units], lbv)
        nu = torch.minimum(u[:, units], ubv)
        l[:, units], u[:, units] = torch.minimum(nl, nu), nu
        bounds[k] = (l, u)
    return bounds


def _take(item, idx: torch.Tensor):  # noqa: ANN001, ANN202
    bnds, ub, sc, par = item
    return ([(l[idx], u[idx]) for l, u in bnds], ub[idx], [s[idx] for s in sc], par.select(idx))


def _cat(parts):  # noqa: ANN001, ANN202
    if len(parts) == 1:
        return parts[0]
    nl = len(parts[0][0])
    bnds = [
        (torch.cat([p[0][k][0] for p in parts]), torch.cat([p[0][k][1] for p in parts]))
        for k in range(nl)
    ]
    ub = torch.cat([p[1] for p in parts])
    sc = [torch.cat([p[2][k] for p in parts]) for k in range(nl)]
    par = _Params(
        [[torch.cat([p[3].slopes[k][j] for p in parts]) for j in range(2)] for k in range(nl)],
        [[torch.cat([p[3].betas[k][j] for p in parts]) for j in range(2)] for k in range(nl)],
    )
    return bnds, ub, sc, par
