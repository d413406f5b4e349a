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

import torch

from qcert.attack import PGD
from qcert.quant.fake_forward import FakeForward
from qcert.quant.inputs import check_box
from qcert.quant.network import QNetwork
from qcert.verify.bab import (
    SAFE,
    TIMEOUT,
    UNSAFE,
    BabOptions,
    SearchOutcome,
    bab_search,
    first_unsafe,
)
from qcert.verify.bounds import SpecBounds
from qcert.verify.branching import (
    SubproblemQueue,
    branch,
    choose,
    corners,
    refine_children,
    scores,
)
from qcert.verify.linear import F64
from qcert.verify.optimize import Bounds, LinearBab, LinearBabOptions, Params
from qcert.verify.spec import OutputSpec

__all__ = ["LinearBab", "LinearBabOptions", "linear_bab_search"]


def linear_bab_search(  # fmt: skip
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
            lo, hi = check_box(
                net, lo.reshape(1, *net.input_shape), hi.reshape(1, *net.input_shape)
            )
            run = _Run(net, spec, search, bounds, fake, time.monotonic() + float(timeout))
            return run.run(lo, hi, x0)
    finally:
        torch.set_num_threads(before)


class _Run:
    """One query's search: its deadline, outcome and exact counterexample checks."""

    def __init__(
        self,
        net: QNetwork,
        spec: OutputSpec,
        search: LinearBab,
        bounds: SpecBounds | None,
        fake: FakeForward | None,
        deadline: float,
    ) -> None:
        self.net, self.spec, self.search, self.opt = net, spec, search, search.opt
        self.bounds = bounds if bounds is not None else SpecBounds(net, spec)
        self.fake, self.deadline = fake, deadline
        self.out = SearchOutcome(SAFE, stats={"bound_s": 0.0, "attack_s": 0.0, "split_s": 0.0})
        self.C = spec.A.to(F64).unsqueeze(0)
        self.thr = spec.b.to(F64).unsqueeze(0)

    def gain(self, n: int) -> bool:
        """Whether the children of pass ``n`` are scored by gain (else by gap)."""
        mode = self.opt.branching
        return mode == "gain" or (mode == "mixed" and n % 2 == 0)

    def found(self, points: torch.Tensor, note: str) -> SearchOutcome | None:
        """``unsafe`` with the first of the points that is a counterexample, if one is."""
        point = first_unsafe(self.net, self.spec, self.bounds, points)
        if point is None:
            return None
        self.out.status, self.out.counterexample, self.out.note = UNSAFE, point, note
        return self.out

    def proved(self, ub: torch.Tensor, note: str) -> SearchOutcome | None:
        if int(self.spec.badness(ub)[0]) > 0:
            return None
        self.out.note = note
        return self.out

    def open_rows(self, ub: torch.Tensor) -> torch.Tensor:
        """The rows not yet proved in some subproblem of ``ub`` (B×R)."""
        return (ub >= self.spec.b.unsqueeze(0)).any(0).nonzero().squeeze(1)

    def optimize(
        self,
        lo: torch.Tensor,
        hi: torch.Tensor,
        bounds: Bounds,
        ub: torch.Tensor,
        params: Params,
        rows: torch.Tensor,
        iters: int,
        mask: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Optimize the parameters of the open ``rows`` (in place) and tighten ``ub`` with their
        bounds (a subproblem's other rows keep theirs: its points are its parent's subset)."""
        nb = lo.shape[0]
        with torch.enable_grad():
            rub, lams, lam_in, sub = self.search.bound(
                self.C[:, rows].expand(nb, -1, -1), lo, hi, bounds, params.rows(rows), iters,
                mask, self.thr[:, rows], self.deadline,
            )  # fmt: skip
        assert sub is not None
        params.set_rows(rows, sub)
        ub[:, rows] = torch.minimum(ub[:, rows], rub)
        return ub, lams, lam_in

    def run(self, lo: torch.Tensor, hi: torch.Tensor, x0: torch.Tensor | None) -> SearchOutcome:
        out, opt, search = self.out, self.opt, self.search
        flat_lo, flat_hi = lo.reshape(1, -1), hi.reshape(1, -1)
        # 1. interval bounds of the whole box
        ub_ibp = self.bounds.upper(lo, hi)
        out.boxes = 1
        if (res := self.proved(ub_ibp, "interval bounds")) is not None:
            return res
        if bool((flat_lo == flat_hi).all()):
            if (res := self.found(flat_lo, "the query box is a single unsafe point")) is None:
                raise AssertionError("bounds of a single point are not exact")
            return res
        # 2. linear bounds with tightened intermediate ranges (chords); 3. PGD on the box;
        # 4. slopes optimized at the root. After 2 and 4: proof, or the bound's maximizer checked
        root = search.lb.refine(flat_lo, flat_hi)
        params = search.init_params(root, self.C.shape[1])
        ub = ub_ibp
        for stage in ("linear bounds", "PGD", "optimized linear bounds"):
            if stage == "PGD":
                if (res := self.attack(lo, hi, x0)) is not None:
                    return res
                continue
            tb = time.monotonic()
            if stage != "linear bounds":
                if opt.intermediate_units:
                    root = search.optimize_intermediate(
                        flat_lo, flat_hi, root, opt.intermediate_iters, opt.intermediate_units,
                        self.deadline,
                    )  # fmt: skip
                    params = search.init_params(root, self.C.shape[1])
                rows = self.open_rows(ub)
                ub, _, _ = self.optimize(flat_lo, flat_hi, root, ub, params, rows, opt.root_iters)
            lub, lams, lam_in, _ = search.bound(self.C, flat_lo, flat_hi, root, params, 0)
            ub = torch.minimum(ub, lub)
            out.stats["bound_s"] += time.monotonic() - tb
            if (res := self.proved(ub, stage)) is not None:
                return res
            res = self.found(corners(lam_in, flat_lo, flat_hi), "the bound's maximizer")
            if res is not None:
                return res
        if int((flat_hi > flat_lo).sum()) <= opt.input_split_dims:
            return self.input_splitting(lo, hi, "few inputs")
        # 5. branch and bound over unit values, then input splitting if that is left
        queue = SubproblemQueue()
        queue.push(root, ub, scores(search, root, lams, self.gain(0)), params)
        why = self.branch_and_bound(queue, flat_lo, flat_hi, root)
        if why is None:
            return out
        return self.input_splitting(lo, hi, why)

    def attack(
        self, lo: torch.Tensor, hi: torch.Tensor, x0: torch.Tensor | None
    ) -> SearchOutcome | None:
        if not (self.opt.attack_steps or x0 is not None):
            return None
        ta = time.monotonic()
        if self.fake is None:
            self.fake = FakeForward(self.net)
        pgd = PGD(
            self.net, steps=self.opt.attack_steps, restarts=self.opt.attack_restarts,
            seed=self.opt.seed, loss="margin", fake=self.fake, deadline=self.deadline,
        )  # fmt: skip
        res = pgd(lo, hi, goal=self.spec.goal(1), x0=None if x0 is None else x0.reshape(lo.shape))
        self.out.stats["attack_s"] += time.monotonic() - ta
        if not bool(res.success[0]):
            return None
        return self.found(res.adv.reshape(1, -1), "PGD on the query box")

    def branch_and_bound(
        self, queue: SubproblemQueue, lo: torch.Tensor, hi: torch.Tensor, root: Bounds
    ) -> str | None:
        """Run the unit search: None when it decided the query (``self.out`` says how), else why
        it stopped short (then the caller hands over to input splitting)."""
        out, opt, search, spec = self.out, self.opt, self.search, self.spec
        per_child = 0.0  # seconds per child bounded in the last pass
        while queue.size:
            # a pass's time grows with its batch (doubling at first): do not start one that
            # would end late
            next_pass = per_child * 2 * min(opt.batch, queue.size)
            if time.monotonic() + next_pass > self.deadline:
                out.status, out.note = TIMEOUT, f"time limit with {queue.size} open subproblems"
                return None
            out.passes += 1
            start = time.monotonic()
            bnds, pub, psc, ppar = queue.pop(opt.batch)
            choice = choose(psc)
            if choice is None or bool((choice[1] < 0).any()):
                return "a subproblem with every unit fixed stayed open"
            cb, cpar = branch(search, bnds, ppar, choice)
            out.stats["split_s"] += time.monotonic() - start
            tb = time.monotonic()
            cub = pub.repeat(2, 1)
            rows = self.open_rows(cub)
            if opt.refine_units:
                # on requantized logits, only the units the open rows read are re-tightened
                used = (spec.A[rows] != 0).any(0).nonzero().squeeze(1)
                cb = refine_children(
                    search, lo, hi, cb, choice[0], opt.refine_units,
                    used if search.output_units else None, self.deadline,
                )  # fmt: skip
            nb = cb[0][0].shape[0]
            mask = [(l != rl) | (u != ru) for (l, u), (rl, ru) in zip(cb, root)]
            blo, bhi = lo.expand(nb, -1), hi.expand(nb, -1)
            cub, clam, clin = self.optimize(blo, bhi, cb, cub, cpar, rows, opt.iters, mask)
            out.stats["bound_s"] += time.monotonic() - tb
            per_child = (time.monotonic() - start) / nb
            out.boxes += nb
            bad = spec.badness(cub)
            idx = (bad > 0).nonzero().squeeze(1)
            if not idx.numel():
                continue
            ta = time.monotonic()
            res = self.found(corners(clin[idx], lo, hi), "the bound's maximizer in a subproblem")
            out.stats["attack_s"] += time.monotonic() - ta
            if res is not None:
                return None
            order = idx[torch.argsort(bad[idx], descending=True, stable=True)]
            cb = [(l[order], u[order]) for l, u in cb]
            csc = scores(search, cb, [t[order] for t in clam], self.gain(out.passes))
            queue.push(cb, cub[order], csc, cpar.select(order))
            out.max_queue = max(out.max_queue, queue.size)
            if queue.size > opt.max_queue:
                return f"more than {opt.max_queue} open subproblems"
        out.note = "branch and bound over unit values"
        return None

    def input_splitting(self, lo: torch.Tensor, hi: torch.Tensor, why: str) -> SearchOutcome:
        """Hand the query to the exact input-splitting search for the time that is left."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.out.status, self.out.note = TIMEOUT, f"time limit ({why})"
            return self.out
        res = bab_search(
            self.net, lo, hi, self.spec, timeout=left,
            options=BabOptions(seed=self.opt.seed, attack_steps=0), bounds=self.bounds,
            fake=self.fake,
        )  # fmt: skip
        res.boxes += self.out.boxes
        res.note = f"{why}; input splitting: {res.note or res.status}"
        return res
