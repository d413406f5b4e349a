"""Complete verification by batched input-splitting branch and bound (QA-IBP, Lechner et al.,
AAAI 2023, Algorithm 1), in exact integer arithmetic.

Keep a set of integer input boxes, starting with the query box. Bound each box with exact QA-IBP
(the last linear layer fused with the specification); drop the boxes where every unsafe disjunct
is impossible; look for a counterexample inside the others (PGD first on the whole box, then the
exact value of each new box's centre and gradient corner, and a short PGD now and then on the
boxes furthest from a proof); split the rest along one dimension, on integers. The set empties:
SAFE; a point reaches the unsafe set (re-checked with ``net.integer_forward``): UNSAFE.

Soundness: a box is dropped only when its exact int64 bounds prove no integer input in it is
unsafe, and the split children cover exactly the parent's integer points. Termination: each split
shrinks the total width by at least one, and a box of width 0 is a single point whose bounds are
exact, so it is decided on the spot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from qcert.attack import PGD
from qcert.errors import InputError
from qcert.quant.fake_forward import FakeForward
from qcert.quant.inputs import check_box
from qcert.quant.network import QNetwork
from qcert.verify.bounds import SpecBounds
from qcert.verify.spec import OutputSpec
from qcert.verify.split import Splitter, parse_rule, split_boxes

SAFE, UNSAFE, TIMEOUT = "safe", "unsafe", "timeout"


@dataclass
class BabOptions:
    """Tuning of the branch and bound.

    Attributes:
        split: split rule (``widest``, ``smear``, ``gradient``, ``bound``, ``bound:K``).
        batch: boxes split per pass (their children are bounded in one batched tensor pass).
        max_queue: most open boxes kept; beyond it the query ends as a timeout (memory bound).
        attack_steps, attack_restarts: PGD on the whole query box before splitting.
        inner_every, inner_boxes, inner_steps: every ``inner_every`` passes, a PGD of
            ``inner_steps`` steps on the ``inner_boxes`` open boxes furthest from a proof
            (0 disables it).
        seed: seed of the attacks.
        arith_path: the arithmetic path of the bounds, ``auto`` (float64 where provably exact) or ``int64``.
    """

    split: str = "smear"
    batch: int = 256
    max_queue: int = 100_000
    attack_steps: int = 20
    attack_restarts: int = 1
    inner_every: int = 8
    inner_boxes: int = 32
    inner_steps: int = 5
    seed: int = 0
    arith_path: str = "auto"

    def __post_init__(self) -> None:
        parse_rule(self.split)
        if self.arith_path not in ("auto", "int64"):
            raise InputError(f"arith_path must be 'auto' or 'int64', got {self.arith_path!r}")
        check_counts(self, ("batch", "max_queue"), 1)
        check_counts(
            self,
            ("attack_steps", "attack_restarts", "inner_every", "inner_boxes", "inner_steps"),
            0,
        )


def check_counts(options: object, names: tuple[str, ...], least: int) -> None:
    """Each named field of ``options`` must be an integer ``>= least`` (0: non-negative, 1:
    positive); else one :class:`InputError` naming the field."""
    kind = "positive" if least == 1 else "non-negative"
    for name in names:
        v = getattr(options, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise InputError(f"{name} must be a {kind} integer, got {v!r}")


@dataclass
class SearchOutcome:
    """Result of one query: ``status`` is ``safe``, ``unsafe`` (with ``counterexample``, an int64
    point re-checked by the reference executor) or ``timeout``."""

    status: str
    counterexample: torch.Tensor | None = None
    boxes: int = 0
    passes: int = 0
    max_queue: int = 0
    note: str = ""
    stats: dict[str, float] = field(default_factory=dict)


class _Stack:
    """Open boxes as offsets from the root box's lower corner, in the narrowest dtype, in chunks
    (LIFO: the newest, smallest boxes are split first, which keeps the stack short)."""

    def __init__(self, root_lo: torch.Tensor, root_hi: torch.Tensor) -> None:
        self.base = root_lo
        span = int((root_hi - root_lo).max())
        self.dtype = torch.uint8 if span <= 255 else torch.int16 if span <= 32767 else torch.int32
        self.chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.size = 0

    def push(self, lo: torch.Tensor, hi: torch.Tensor, ub: torch.Tensor) -> None:
        if lo.shape[0]:
            self.chunks.append(
                ((lo - self.base).to(self.dtype), (hi - self.base).to(self.dtype), ub)
            )
            self.size += lo.shape[0]

    def pop(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        want = n
        while want and self.chunks:
            lo, hi, ub = self.chunks.pop()
            if lo.shape[0] > want:
                k = lo.shape[0] - want
                self.chunks.append((lo[:k], hi[:k], ub[:k]))
                lo, hi, ub = lo[k:], hi[k:], ub[k:]
            parts.append((lo, hi, ub))
            want -= lo.shape[0]
        lo = torch.cat([p[0] for p in parts]).to(torch.int64) + self.base
        hi = torch.cat([p[1] for p in parts]).to(torch.int64) + self.base
        ub = torch.cat([p[2] for p in parts])
        self.size -= lo.shape[0]
        return lo, hi, ub


def first_unsafe(
    net: QNetwork, spec: OutputSpec, bounds: SpecBounds, points: torch.Tensor
) -> torch.Tensor | None:
    """The first of the integer points (N×input, any layout) that reaches the unsafe set of
    ``spec``, or None: screened with the exact spec values, then re-checked with the reference
    executor."""
    if not points.shape[0]:
        return None
    pts = points.reshape(-1, *net.input_shape)
    for i in (spec.badness(bounds.values(pts)) > 0).nonzero().squeeze(1).tolist():
        if bool(spec.holds(net.integer_forward(pts[i : i + 1]))[0]):
            return pts[i].clone()
    return None


@torch.no_grad()
def bab_search(
    net: QNetwork,
    lo: torch.Tensor,
    hi: torch.Tensor,
    spec: OutputSpec,
    *,
    timeout: float = 20.0,
    options: BabOptions | None = None,
    x0: torch.Tensor | None = None,
    bounds: SpecBounds | None = None,
    fake: FakeForward | None = None,
) -> SearchOutcome:
    """Decide whether some integer input in the box ``[lo, hi]`` (int64, shape input_shape or
    1×input_shape) has logits in the unsafe set of ``spec``. Complete given time: ``safe`` is a
    proof, ``unsafe`` comes with a counterexample confirmed by ``net.integer_forward``.

    ``bounds`` and ``fake`` may be prebuilt for ``net`` and ``spec`` (they are reused across
    queries by ``verify_dataset``)."""
    opt = options or BabOptions()
    t0 = time.monotonic()
    deadline = t0 + float(timeout)
    lo, hi = lo.reshape(1, *net.input_shape), hi.reshape(1, *net.input_shape)
    lo, hi = check_box(net, lo, hi)
    if bounds is None:
        bounds = SpecBounds(net, spec, opt.arith_path)
    elif bounds.net is not net or bounds.spec is not spec:
        raise InputError("the prebuilt bounds belong to another network or specification")
    out = SearchOutcome(SAFE, stats={"bound_s": 0.0, "attack_s": 0.0, "split_s": 0.0})

    def confirm(points: torch.Tensor) -> torch.Tensor | None:
        return first_unsafe(net, spec, bounds, points)

    def unsafe(point: torch.Tensor, note: str) -> SearchOutcome:
        out.status, out.counterexample, out.note = UNSAFE, point, note
        return out

    ub = bounds.upper(lo, hi)
    out.boxes = 1
    if int(spec.badness(ub)[0]) <= 0:
        return out
    flat_lo, flat_hi = lo.reshape(1, -1), hi.reshape(1, -1)
    if bool((flat_lo == flat_hi).all()):
        point = confirm(flat_lo)
        if point is None:  # exact bounds of a point cannot fail to prove a safe point
            raise AssertionError("bounds of a single point are not exact")
        return unsafe(point, "the query box is a single unsafe point")
    goal = spec.goal(1)
    ta = time.monotonic()
    if opt.attack_steps or x0 is not None:
        if fake is None:
            fake = FakeForward(net)
        pgd = PGD(
            net,
            steps=opt.attack_steps,
            restarts=opt.attack_restarts,
            seed=opt.seed,
            fake=fake,
            deadline=deadline,
        )
        x0b = None if x0 is None else x0.reshape(1, *net.input_shape)
        res = pgd(lo, hi, goal=goal, x0=x0b)
        out.stats["attack_s"] += time.monotonic() - ta
        if bool(res.success[0]):
            point = confirm(res.adv.reshape(1, -1))
            if point is not None:
                return unsafe(point, "PGD on the query box")
    if fake is None:
        fake = FakeForward(net)
    splitter = Splitter(net, spec, bounds, opt.split, fake)
    inner = PGD(net, steps=opt.inner_steps, restarts=1, seed=opt.seed + 1, loss="margin", fake=fake)
    stack = _Stack(flat_lo, flat_hi)
    stack.push(flat_lo, flat_hi, ub)
    while stack.size:
        if time.monotonic() > deadline:
            out.status, out.note = TIMEOUT, f"time limit with {stack.size} open boxes"
            return out
        out.passes += 1
        blo, bhi, bub = stack.pop(opt.batch)
        ts = time.monotonic()
        dims, child_ub, probe = splitter.choose(blo, bhi, bub)
        clo, chi = split_boxes(blo, bhi, dims)
        tb = time.monotonic()
        out.stats["split_s"] += tb - ts
        if child_ub is None:
            child_ub = bounds.upper(clo, chi)
        out.stats["bound_s"] += time.monotonic() - tb
        out.boxes += clo.shape[0]
        bad = spec.badness(child_ub)
        keep = bad > 0
        if not keep.any():
            continue
        clo, chi, child_ub, bad = clo[keep], chi[keep], child_ub[keep], bad[keep]
        # exact looks inside the open boxes: the splitter's probes (gradient corners, hot
        # centres) or else the children's centres; a single point left open is decided here too
        ta = time.monotonic()
        single = (clo == chi).all(dim=1)
        if probe is None:
            pts = torch.div(clo + chi, 2, rounding_mode="floor")
        else:
            pts = torch.cat([probe, clo[single]])
        point = confirm(pts)
        if point is not None:
            return unsafe(point, "exact check of a point inside an open box")
        if single.any():  # exact bounds of a point: unproven means unsafe, yet confirm() said no
            raise AssertionError("bounds of a single point are not exact")
        if opt.inner_every and opt.inner_steps and out.passes % opt.inner_every == 0:
            top = torch.argsort(bad, descending=True, stable=True)[: opt.inner_boxes]
            res = inner(
                clo[top].view(-1, *net.input_shape),
                chi[top].view(-1, *net.input_shape),
                goal=spec.goal(top.numel()),
            )
            if res.success.any():
                point = confirm(res.adv[res.success].reshape(int(res.success.sum()), -1))
                if point is not None:
                    out.stats["attack_s"] += time.monotonic() - ta
                    return unsafe(point, "PGD inside an open box")
        out.stats["attack_s"] += time.monotonic() - ta
        # the boxes furthest from a proof are split first
        order = torch.argsort(bad, stable=True)
        stack.push(clo[order], chi[order], child_ub[order])
        out.max_queue = max(out.max_queue, stack.size)
        if stack.size > opt.max_queue:
            out.status, out.note = TIMEOUT, f"more than {opt.max_queue} open boxes"
            return out
    return out
