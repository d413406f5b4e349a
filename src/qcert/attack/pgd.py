"""PGD: projected gradient descent in an L∞ box (Madry et al., ICLR 2018, arXiv 1706.06083).

Two targets, one ascent: :class:`PGD` / :func:`pgd_attack` attack the integer network in an
integer box (``eps_box(net, x, eps)``) and re-check every hit exactly; :func:`pgd_float` attacks a
float model on real-valued inputs (the inner maximisation of PGD training). Both start uniformly in
the box and take signed-gradient steps projected back onto it (:func:`uniform_start`,
:func:`ascent_step`). Distance: L∞, in input integer steps.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from qcert.attack.base import Attack, AttackResult, Goal
from qcert.errors import InputError
from qcert.quant.fake_forward import FakeForward
from qcert.quant.floatmodel.model import FloatModel
from qcert.quant.inputs import check_levels
from qcert.quant.network import QNetwork

LOSSES = ("targeted", "margin")


def uniform_start(lo: torch.Tensor, hi: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """A uniformly random point of the box ``[lo, hi]`` (Madry et al.'s random start)."""
    u = torch.rand(lo.shape, generator=gen)
    return lo + u * (hi - lo)


def ascent_step(
    x: torch.Tensor,
    grad: torch.Tensor,
    alpha: float | torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
) -> torch.Tensor:
    """One L∞ PGD step: ``x + alpha · sign(grad)``, projected back onto the box ``[lo, hi]``."""
    return torch.minimum(torch.maximum(x + alpha * grad.sign(), lo), hi)


class PGD(Attack):
    r"""PGD with random restarts on the fake-quant network, re-checked on the integer network.

    Paper: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to
    Adversarial Attacks", ICLR 2018. Distance: L∞ in integer input steps.

    The search ascends a margin objective on ``net(x)`` (differentiable, straight-through rounding)
    with signed gradient steps projected onto the real box ``[lo, hi]``. ``net(x)`` rounds its input
    half up, so the point whose logits each step computes is the integer ``floor(x + 1/2)``; every
    such point that looks successful is re-checked exactly with ``net.integer_forward``, and the
    base class re-checks the final answer with ``net.predict``. It first tries ``x0``, the box
    centre and its two extreme corners.

    Arguments:
        net: the :class:`~qcert.quant.QNetwork`.
        steps: gradient steps per restart (0 tries only the cheap points).
        restarts: random restarts (the first starts at ``x0`` when given).
        step_size: step in input integer units; default ``max(0.25, 2.5 · r / steps)`` with ``r``
            the box's largest half-width (Madry et al.'s ``2.5 ε / steps``).
        seed: seed of the random starts (the attack is deterministic for a given seed).
        loss: ``"targeted"`` (one run per goal target, i.e. per wrong class, maximising
            ``z_j - z_y``) or ``"margin"`` (one run maximising the CW margin
            ``max_j (z_j - z_y)``; ``K-1`` times cheaper).
        fake: a prebuilt :class:`FakeForward` of ``net`` (built on first use otherwise; the
            attack object must not outlive a change of the network's weights).

    Shapes: ``lo``, ``hi``, ``x0``: int64 B×input_shape; ``labels``: int64 B.

    Example:
        >>> from qcert.bounds import eps_box
        >>> lo, hi = eps_box(net, x, 4)
        >>> res = PGD(net, steps=20)(lo, hi, labels)
        >>> res.adv[res.success]   # integer counterexamples, confirmed by net.predict
    """

    name = "pgd"

    def __init__(
        self,
        net: QNetwork,
        steps: int = 20,
        restarts: int = 1,
        step_size: float | None = None,
        seed: int = 0,
        loss: str = "targeted",
        fake: FakeForward | None = None,
        deadline: float | None = None,
    ) -> None:
        super().__init__(net)
        for name, v in (("steps", steps), ("restarts", restarts)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(f"{name} must be a non-negative integer, got {v!r}")
        if step_size is not None and not (float(step_size) > 0 and float(step_size) < float("inf")):
            raise InputError(f"step_size must be a positive number, got {step_size!r}")
        if loss not in LOSSES:
            raise InputError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.steps, self.restarts = steps, restarts
        self.step_size = None if step_size is None else float(step_size)
        self.seed, self.loss = int(seed), loss
        self._fake = fake
        self.deadline = deadline

    @torch.no_grad()
    def search(
        self, lo: torch.Tensor, hi: torch.Tensor, goal: Goal, x0: torch.Tensor | None
    ) -> torch.Tensor:
        n = lo.shape[0]
        shape = lo.shape[1:]
        flo, fhi = lo.reshape(n, -1), hi.reshape(n, -1)
        every = torch.arange(n)
        best = torch.div(flo + fhi, 2, rounding_mode="floor")
        best_score = torch.full((n,), -float("inf"), dtype=torch.float64)
        done = torch.zeros(n, dtype=torch.bool)
        for p in self.cheap_points(lo, hi, x0):
            reached, score = self.check_points(p, goal, every)
            better = (score.to(torch.float64) > best_score) & ~done
            better |= reached & ~done
            best[better] = p.reshape(n, -1)[better]
            best_score[better] = score.to(torch.float64)[better]
            done |= reached
        if self.steps == 0:
            return best.view(n, *shape)
        gen = torch.Generator().manual_seed(self.seed)
        for r in range(self.restarts):
            if self.deadline is not None and time.monotonic() > self.deadline:
                break
            boxes = (~done).nonzero().squeeze(1)
            if not boxes.numel():
                break
            if self.loss == "targeted":
                t = goal.num_targets
                box = boxes.repeat_interleave(t)
                target = torch.arange(t).repeat(boxes.numel())
            else:
                box, target = boxes, torch.full_like(boxes, -1)
            start = x0.reshape(n, -1)[box].float() if (r == 0 and x0 is not None) else None
            self._run(flo, fhi, box, target, goal, start, gen, shape, best, best_score, done)
        return best.view(n, *shape)

    def _run(
        self,
        flo: torch.Tensor,
        fhi: torch.Tensor,
        box: torch.Tensor,
        target: torch.Tensor,
        goal: Goal,
        start: torch.Tensor | None,
        gen: torch.Generator,
        shape: torch.Size,
        best: torch.Tensor,
        best_score: torch.Tensor,
        done: torch.Tensor,
    ) -> None:
        """One restart over (box, target) pairs; updates ``best``, ``best_score``, ``done``."""
        fake = self._fake if self._fake is not None else FakeForward(self.net)
        self._fake = fake
        lo_f, hi_f = flo[box].float(), fhi[box].float()
        if start is None:
            x = uniform_start(lo_f, hi_f, gen)
        else:
            x = start.clone()
        if self.step_size is not None:
            alpha = torch.full((box.numel(), 1), self.step_size)
        else:
            half = ((hi_f - lo_f).amax(dim=1, keepdim=True) / 2).clamp(min=0.0)
            alpha = (2.5 * half / max(1, self.steps)).clamp(min=0.25)
        for step in range(self.steps + 1):
            with torch.enable_grad():
                x.requires_grad_(True)
                z = fake(x.view(-1, *shape))  # float logits in integer units
                c = goal.C[box].to(z.dtype)  # P×T×M×K
                v = ((c * z[:, None, None, :]).sum(-1) - goal.thr[box].to(z.dtype)).min(-1).values
                if self.loss == "targeted":
                    obj = v.gather(1, target.unsqueeze(1)).squeeze(1)
                else:
                    obj = v.max(-1).values
                grad = torch.autograd.grad(obj.sum(), x)[0] if step < self.steps else None
            x = x.detach()
            cand = torch.floor(x + 0.5).clamp(lo_f, hi_f).to(torch.int64)  # the point evaluated
            anyv = v.detach().max(-1).values.to(torch.float64)
            # float32 is not exact on large accumulators: flag generously, decide exactly
            tol = 0.5 + 1e-5 * float(z.detach().abs().max()) if z.numel() else 0.5
            flagged = (anyv >= -tol).nonzero().squeeze(1)
            if flagged.numel():
                reached, score = self.check_points(
                    cand[flagged].view(-1, *shape), goal, box[flagged]
                )
                hit = flagged[reached]
                if hit.numel():
                    hit = hit[_first_per_box(box[hit], torch.zeros(hit.numel()))]
                    hit = hit[~done[box[hit]]]
                    best[box[hit]] = cand[hit]
                    best_score[box[hit]] = float("inf")
                    done[box[hit]] = True
            # keep the best (by float objective) point of each unfinished box
            improve = ((anyv > best_score[box]) & ~done[box]).nonzero().squeeze(1)
            if improve.numel():
                # several pairs of one box may improve: keep the largest
                idx = improve[_first_per_box(box[improve], -anyv[improve])]
                best[box[idx]] = cand[idx]
                best_score[box[idx]] = anyv[idx]
            if grad is None:
                break
            if self.deadline is not None and time.monotonic() > self.deadline:
                break
            live = ~done[box]
            if not live.any():
                break
            x = ascent_step(x, grad, alpha, lo_f, hi_f)
            if not live.all():
                x, box, target, lo_f, hi_f, alpha = (
                    t[live] for t in (x, box, target, lo_f, hi_f, alpha)
                )


def _first_per_box(box: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Positions of the entry with the smallest ``key`` for each distinct ``box`` (one per box)."""
    order = torch.argsort(key, stable=True)
    order = order[torch.argsort(box[order], stable=True)]
    b = box[order]
    first = torch.ones(b.numel(), dtype=torch.bool)
    first[1:] = b[1:] != b[:-1]
    return order[first]


def pgd_attack(
    net: QNetwork,
    lo: torch.Tensor,
    hi: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int = 20,
    restarts: int = 1,
    step_size: float | None = None,
    seed: int = 0,
    x0: torch.Tensor | None = None,
    loss: str = "targeted",
) -> AttackResult:
    """PGD (Madry et al. 2018) in the integer boxes ``[lo, hi]`` against ``labels``.

    Returns an :class:`AttackResult`: ``adv`` lies in the boxes and ``success[i]`` is True only if
    ``net.predict(adv[i]) != labels[i]`` (the reference executor, ties to the smallest index).
    See :class:`PGD` for the arguments.
    """
    return PGD(net, steps, restarts, step_size, seed, loss)(lo, hi, labels, x0=x0)


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
    """L∞ PGD on a float model (Madry et al. 2018): maximise the cross-entropy over
    ``[x - eps, x + eps] ∩ input_range`` (input levels, real-valued) with signed-gradient steps of
    ``step_size`` levels (default ``2.5 * eps / steps``) from a uniform random start. Returns the
    perturbed inputs (float32, same shape). An empirical attack on the float model, not on any
    quantized network. The model's mode (train/eval) is left unchanged.

    Shapes: ``x_int``: N×input_shape (integer units, any dtype); ``labels``: int64 N.
    """
    eps = check_levels(eps, "eps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise InputError(f"steps must be a non-negative integer, got {steps!r}")
    x = x_int.to(torch.float32)
    if eps == 0 or steps == 0:
        return x.clone()
    alpha = 2.5 * eps / steps if step_size is None else check_levels(step_size, "step_size")
    lo = (x - eps).clamp(*input_range)
    hi = (x + eps).clamp(*input_range)
    adv = uniform_start(lo, hi, generator) if random_start else x.clone()
    requires = [p.requires_grad for p in model.module.parameters()]
    for p in model.module.parameters():
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model.logits(adv), labels, reduction="sum")
            (g,) = torch.autograd.grad(loss, adv)
            adv = ascent_step(adv.detach(), g, alpha, lo, hi)
    finally:
        for p, r in zip(model.module.parameters(), requires):
            p.requires_grad_(r)
    return adv.detach()


def float_pgd_accuracy(
    model: FloatModel,
    x_int: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    steps: int = 20,
    seed: int = 0,
    batch_size: int = 500,
) -> float:
    """Share of inputs the float model (in eval mode) still classifies correctly at its PGD point:
    an upper bound on the float model's robust accuracy at ``eps``."""
    model.module.eval()
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    for s in range(0, x_int.shape[0], batch_size):
        xb, yb = x_int[s : s + batch_size], labels[s : s + batch_size]
        adv = pgd_float(model, xb, yb, eps, steps, generator=gen)
        with torch.no_grad():
            correct += int((model.logits(adv).argmax(1) == yb).sum())
    return correct / max(1, x_int.shape[0])
