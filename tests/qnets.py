"""Networks, strategies and helpers shared by the tests.

* ``small_mlp`` / ``small_cnn`` / ``small_nets`` / ``enumerable_net``: small random QNetworks
  with integer weights and tiny input ranges, so that every input of a box can be enumerated
  (``box_points``);
* ``digits_mlp``: a random 8-bit MLP for the 8×8 digits images; ``random_layer``: a linear or
  convolution layer with uniform random codes;
* ``random_networks``: the hypothesis strategy of random QNetworks (convolution, pooling, linear,
  every format and rounding rule), drawn from a ``NetSpace`` that each test narrows to what it
  exercises;
* ``fit``: a few steps of full-batch training of a float model.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from hypothesis import assume
from hypothesis import strategies as st
from torch import nn

from qcert.errors import FormatError
from qcert.quant import (
    FixedPointFormat,
    QAvgPool2d,
    QConv2d,
    QFlatten,
    QLinear,
    QNetwork,
    QRequant,
    Rounding,
)

#: 4-bit unsigned inputs (0..15): boxes small enough to enumerate
SMALL_INPUT = FixedPointFormat(4, False, 2)
#: every rounding rule (enum members), and a strategy of them by name and as members
ROUNDING_RULES = list(Rounding)
ROUNDINGS = st.sampled_from([r.value for r in ROUNDING_RULES])
ANY_ROUNDING = st.sampled_from(ROUNDING_RULES)
ACT3, ACT4 = FixedPointFormat(3, False, 1), FixedPointFormat(4, False, 2)
BIAS8, BIAS8_4 = FixedPointFormat(8, True, 3), FixedPointFormat(8, True, 4)


def small_mlp(
    seed: int | torch.Generator,
    d: int,
    k: int,
    logit_requant: bool = False,
    rounding: str = "half_up",
    hidden: int = 5,
    logit_bits: int = 3,
    act: FixedPointFormat = ACT3,
    bias: FixedPointFormat = BIAS8,
    bias_bounds: tuple[int, int] = (40, 20),
) -> QNetwork:
    """d → hidden → k MLP with 4-bit weights, ``act`` ReLU activations (3 bits) and ``bias``
    biases (8 bits) drawn from ±``bias_bounds`` (per layer); with ``logit_requant`` the logits are
    requantized to ``logit_bits`` signed bits (ties are common). ``seed`` may be a generator, which
    the caller can go on drawing from."""
    g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    w = FixedPointFormat(4, True, 2)
    layers = [
        QLinear.from_int(
            torch.randint(-8, 8, (hidden, d), generator=g),
            torch.randint(-bias_bounds[0], bias_bounds[0], (hidden,), generator=g),
            w,
            bias,
        ),
        QRequant(act, rounding),
        QLinear.from_int(
            torch.randint(-8, 8, (k, hidden), generator=g),
            torch.randint(-bias_bounds[1], bias_bounds[1], (k,), generator=g),
            w,
            bias,
        ),
    ]
    if logit_requant:
        layers.append(QRequant(FixedPointFormat(logit_bits, True, 0), rounding))
    return QNetwork(layers, (d,), SMALL_INPUT)


def small_cnn(seed: int, k: int, rounding: str) -> QNetwork:
    """conv (3 ch, 2×2, stride 1, pad 1) → requant → avgpool 2×2 → flatten → linear, on a 1×2×2
    input of ``SMALL_INPUT``."""
    g = torch.Generator().manual_seed(seed)
    w, b = FixedPointFormat(4, True, 2), FixedPointFormat(8, True, 3)
    layers = [
        QConv2d.from_int(
            torch.randint(-8, 8, (3, 1, 2, 2), generator=g),
            torch.randint(-40, 40, (3,), generator=g),
            w,
            b,
            stride=1,
            padding=1,
        ),
        QRequant(FixedPointFormat(4, False, 2), rounding),
        QAvgPool2d(2),
        QFlatten(),
        QLinear.from_int(
            torch.randint(-8, 8, (k, 3), generator=g),
            torch.randint(-20, 20, (k,), generator=g),
            w,
            b,
        ),
    ]
    return QNetwork(layers, (1, 2, 2), SMALL_INPUT)


def small_nets(logit_bits: int = 4) -> st.SearchStrategy[QNetwork]:
    """``small_mlp`` (1–3 inputs, optional requantized logits) or ``small_cnn``, 2–4 classes."""
    return st.one_of(
        st.builds(
            small_mlp,
            seed=st.integers(0, 10**6),
            d=st.integers(1, 3),
            k=st.integers(2, 4),
            logit_requant=st.booleans(),
            rounding=ROUNDINGS,
            logit_bits=st.just(logit_bits),
        ),
        st.builds(small_cnn, seed=st.integers(0, 10**6), k=st.integers(2, 4), rounding=ROUNDINGS),
    )


def digits_mlp(
    seed: int = 0, hidden: int | None = 16, act_frac: int = 4, constant_class: int | None = None
) -> QNetwork:
    """A random 8-bit MLP for 8×8 digits: flatten → 64→``hidden`` → 8-bit unsigned activations
    with ``act_frac`` fractional bits → 10 logits; with ``hidden=None`` one linear layer 64→10
    (fast to verify). With ``constant_class`` every weight is zero and only that class has a bias:
    it always wins."""
    g = torch.Generator().manual_seed(seed)
    w = FixedPointFormat(8, True, 7)
    if hidden is None:
        lin = QLinear.from_int(torch.randint(-128, 128, (10, 64), generator=g), None, w, None)
        return QNetwork([QFlatten(), lin], (1, 8, 8))
    w1 = torch.randint(-128, 128, (hidden, 64), generator=g)
    w2 = torch.randint(-128, 128, (10, hidden), generator=g)
    b2, bf = None, None
    if constant_class is not None:
        w1, w2 = torch.zeros_like(w1), torch.zeros_like(w2)
        b2 = torch.zeros(10, dtype=torch.int64)
        b2[constant_class] = 5
        bf = FixedPointFormat(8, True, 0)
    return QNetwork(
        [
            QFlatten(),
            QLinear.from_int(w1, None, w, None),
            QRequant(FixedPointFormat(8, False, act_frac)),
            QLinear.from_int(w2, b2, w, bf),
        ],
        (1, 8, 8),
    )


def enumerable_net(seed: int) -> QNetwork:
    """A small QNN drawn from ``seed``: 2-4 integer inputs of 4 bits, MLP or conv (+ avgpool),
    random rounding, signed/unsigned activations, requantization shifts sized so that units are
    neither constant nor always saturated (some shifts are 0 or -1), optional requantized logits
    (so ties between logits happen)."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    rounding = rng.choice(["half_up", "half_even", "floor"])
    in_fmt = FixedPointFormat(4, rng.random() < 0.3, rng.choice([0, 2, 3]))
    in_range = None
    if rng.random() < 0.3:
        in_range = (in_fmt.qmin + 2, in_fmt.qmax - 3)
    wf = FixedPointFormat(rng.choice([3, 4]), True, rng.choice([1, 2, 3]))
    k = rng.choice([2, 3, 4])

    def affine(out_n: int, in_n: int, frac: int, conv: bool = False) -> QLinear | QConv2d:
        acc = frac + wf.frac
        shape = (out_n, in_n, 2, 2) if conv else (out_n, in_n)
        w = torch.randint(wf.qmin, wf.qmax + 1, shape, generator=g)
        if rng.random() < 0.85:
            bf = FixedPointFormat(8, True, max(-30, acc - rng.choice([0, 1])))
            b = torch.randint(-8, 8, (out_n,), generator=g)
        else:
            bf, b = None, None
        if conv:
            return QConv2d.from_int(w, b, wf, bf, 1, rng.choice([0, 1]))
        return QLinear.from_int(w, b, wf, bf)

    def requant(layer: QLinear | QConv2d, frac: int, mag: int, signed: bool | None = None):
        w = layer.int_weight().abs().reshape(layer.int_weight().shape[0], -1).sum(1)
        acc_mag = int(w.float().mean() * mag) // 2  # a typical accumulator magnitude
        bits = rng.choice([2, 3, 4])
        signed = rng.random() < 0.3 if signed is None else signed
        qmax = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
        s = max(-1, (max(1, acc_mag) // max(1, qmax)).bit_length() - rng.choice([0, 1, 2]))
        rq = QRequant(FixedPointFormat(bits, signed, frac + wf.frac - s), rounding)
        return rq, max(qmax, -rq.format.qmin)

    layers: list = []
    frac = in_fmt.frac
    mag = max(abs(in_fmt.qmin), in_fmt.qmax)
    if rng.random() < 0.3:
        shape: tuple[int, ...] = (1, 2, 2)
        c = affine(2, 1, frac, conv=True)
        rq, mag = requant(c, frac, mag)
        layers += [c, rq]
        frac = rq.format.frac
        side = 1 + 2 * c.padding[0]
        if side >= 2 and rng.random() < 0.6:
            layers.append(QAvgPool2d(2, 1))
            frac, mag, side = frac + 2, mag * 4, side - 1
        layers.append(QFlatten())
        n = 2 * side * side
    else:
        d = rng.choice([2, 3, 4])
        shape = (d,)
        n = d
        for _ in range(rng.choice([1, 1, 2])):
            h = rng.choice([3, 4, 5, 6])
            lin = affine(h, n, frac)
            rq, mag = requant(lin, frac, mag)
            layers += [lin, rq]
            frac, n = rq.format.frac, h
    last = affine(k, n, frac)
    layers.append(last)
    if rng.random() < 0.35:
        layers.append(requant(last, frac, mag, signed=True)[0])
    return QNetwork(layers, shape, in_fmt, input_range=in_range)


def random_layer(
    g: torch.Generator,
    shape: tuple[int, ...],
    w: FixedPointFormat,
    b: FixedPointFormat | None = None,
    stride: int = 1,
    padding: int = 0,
) -> QLinear | QConv2d:
    """A linear layer (``shape`` out × in) or a convolution (out × in × k × k) whose weights and
    biases are uniform over their formats' codes."""
    weight = torch.randint(w.qmin, w.qmax + 1, shape, generator=g)
    bias = None if b is None else torch.randint(b.qmin, b.qmax + 1, shape[:1], generator=g)
    if len(shape) == 2:
        return QLinear.from_int(weight, bias, w, b)
    return QConv2d.from_int(weight, bias, w, b, stride, padding)


def box_points(lo: Any, hi: Any) -> torch.Tensor:
    """Every integer point of the box [lo, hi] (the bounds of one sample, any shape), as a batch
    of that shape."""
    lo, hi = torch.as_tensor(lo), torch.as_tensor(hi)
    ranges = [range(int(a), int(b) + 1) for a, b in zip(lo.reshape(-1), hi.reshape(-1))]
    return torch.tensor(list(itertools.product(*ranges))).reshape(-1, *lo.shape)


def fit(
    forward: Callable[[torch.Tensor], torch.Tensor],
    params: Iterable[nn.Parameter],
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lr: float,
) -> None:
    """``steps`` steps of full-batch Adam on the cross-entropy of ``forward(x)`` against ``y``."""
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(forward(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


# ------------------------------------------------------------------ random networks (hypothesis)


def rand_codes(g: torch.Generator, shape, fmt: FixedPointFormat, extreme: float) -> torch.Tensor:
    """Uniform integer codes of ``fmt``; a share ``extreme`` of them set to its ends."""
    q = torch.randint(fmt.qmin, fmt.qmax + 1, shape, generator=g)
    u = torch.rand(shape, generator=g)
    q = torch.where(u < extreme / 2, torch.full_like(q, fmt.qmin), q)
    return torch.where(u > 1 - extreme / 2, torch.full_like(q, fmt.qmax), q)


def formats(
    bits: st.SearchStrategy[int], signed: st.SearchStrategy[bool], frac: st.SearchStrategy[int]
) -> st.SearchStrategy[FixedPointFormat]:
    return st.builds(FixedPointFormat, bits, signed, frac)


#: picks a bias format for an accumulator with the given fractional bits (None: none fits)
BiasRule = Callable[[Callable[..., Any], int], FixedPointFormat | None]
#: picks the requantization of an accumulator with the given fractional bits
RequantRule = Callable[[Callable[..., Any], int], QRequant]


def wide_bias(bits: st.SearchStrategy[int], headroom: int) -> BiasRule:
    """Signed biases of ``bits`` bits at any scale from the accumulator's down to where the
    shifted bias would need more than ``headroom`` bits."""

    def rule(draw, acc_frac: int) -> FixedPointFormat | None:
        b = draw(bits)
        lo, hi = max(-32, acc_frac - (headroom - b)), min(32, acc_frac)
        if lo > hi:  # the accumulator scale is beyond what a bias format can hold
            return None
        return FixedPointFormat(b, True, draw(st.integers(lo, hi)))

    return rule


def accumulator_bias(bits: st.SearchStrategy[int]) -> BiasRule:
    """Signed biases of ``bits`` bits at the accumulator's scale (at most 32 fractional bits)."""
    return lambda draw, acc_frac: FixedPointFormat(draw(bits), True, min(acc_frac, 32))


def requant_rule(
    bits: st.SearchStrategy[int],
    shift: st.SearchStrategy[int],
    rounding: st.SearchStrategy[Any] = ANY_ROUNDING,
) -> RequantRule:
    """Requantize to ``bits`` bits (signed or not) ``shift`` fractional bits below the input."""

    def rule(draw, in_frac: int) -> QRequant:
        fmt = FixedPointFormat(
            draw(bits), draw(st.booleans()), max(-32, min(32, in_frac - draw(shift)))
        )
        return QRequant(fmt, draw(rounding))

    return rule


@dataclass(frozen=True)
class NetSpace:
    """What ``random_networks`` draws from. The defaults are the general space (the exactness
    test's): 2- to 16-bit formats, every rounding rule, wide shifts, small MLPs or CNNs."""

    #: shares of weights, biases (and inputs) at the ends of their formats
    extremes: Sequence[float] = (0.0, 0.2, 0.6)
    input_format: st.SearchStrategy[FixedPointFormat] = formats(
        st.integers(2, 16), st.booleans(), st.integers(-4, 16)
    )
    weight_format: st.SearchStrategy[FixedPointFormat] = formats(
        st.integers(2, 16), st.booleans(), st.integers(-4, 16)
    )
    bias: st.SearchStrategy[bool] = st.booleans()
    bias_format: BiasRule = wide_bias(st.integers(2, 32), headroom=62)
    # small shifts make exact ties (x.5) common; large ones exercise saturation
    requant: RequantRule = requant_rule(
        st.integers(2, 16),
        st.one_of(st.integers(-2, 3), st.integers(-3, 20), st.integers(-45, -4)),
    )
    # image inputs: convolutions (each followed by an optional pool and a requantization)
    image: st.SearchStrategy[bool] = st.booleans()
    channels: st.SearchStrategy[int] = st.integers(1, 2)
    side: st.SearchStrategy[int] = st.integers(1, 6)  # the height, and the width
    convs: st.SearchStrategy[int] = st.integers(0, 2)
    padding: st.SearchStrategy[int] = st.integers(0, 1)
    stride: st.SearchStrategy[int] = st.integers(1, 2)
    out_channels: st.SearchStrategy[int] = st.integers(1, 3)
    pool: st.SearchStrategy[bool] = st.booleans()
    pool_kernel: st.SearchStrategy[tuple[int, int]] = st.sampled_from([(1, 2), (2, 1), (2, 2)])
    pool_stride: st.SearchStrategy[tuple[int, int] | None] = st.none()
    conv_requant: st.SearchStrategy[bool] = st.just(True)
    # vector inputs, then (after the convolutions) linear layers
    features: st.SearchStrategy[int] = st.integers(1, 6)
    linears: st.SearchStrategy[int] = st.integers(1, 3)
    hidden: st.SearchStrategy[int] = st.integers(1, 5)
    classes: st.SearchStrategy[int] = st.integers(2, 5)
    hidden_requant: st.SearchStrategy[bool] = st.just(True)
    logit_requant: st.SearchStrategy[bool] = st.booleans()
    #: the logit layer's weight format and bias, where they differ from the other layers'
    logit_weight_format: st.SearchStrategy[FixedPointFormat] | None = None
    logit_bias: st.SearchStrategy[bool] | None = None


class RandomNet(NamedTuple):
    """A drawn network's parts, with the seed and share of extremes its codes were drawn with
    (for drawing inputs alike)."""

    layers: list
    input_shape: tuple[int, ...]
    input_format: FixedPointFormat
    seed: int
    extreme: float

    def network(self, skip_overflow: bool = False) -> QNetwork:
        """The network; with ``skip_overflow`` the example is skipped when the constructor rightly
        rejects it (a static bound shows int64 could overflow: the random formats can ask for
        that)."""
        try:
            return QNetwork(self.layers, self.input_shape, self.input_format)
        except FormatError as e:
            assume(not skip_overflow or "overflow int64" not in str(e))
            raise


@st.composite
def random_networks(draw, space: NetSpace) -> RandomNet:
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    extreme = draw(st.sampled_from(list(space.extremes)))

    def affine_parts(shape, wf: FixedPointFormat, frac: int, biased: bool):
        bf = space.bias_format(draw, frac + wf.frac) if biased else None
        b = None if bf is None else rand_codes(g, shape[:1], bf, extreme)
        return rand_codes(g, shape, wf, extreme), b, wf, bf

    in_fmt = draw(space.input_format)
    layers: list = []
    frac = in_fmt.frac
    if draw(space.image):
        c, h, w = draw(space.channels), draw(space.side), draw(space.side)
        shape: tuple[int, ...] = (c, h, w)
        input_shape = shape
        for _ in range(draw(space.convs)):
            pad = draw(space.padding)
            k = draw(st.integers(1, min(h, w) + 2 * pad))
            stride, oc = draw(space.stride), draw(space.out_channels)
            wf = draw(space.weight_format)
            conv = QConv2d.from_int(
                *affine_parts((oc, c, k, k), wf, frac, draw(space.bias)), stride, pad
            )
            layers.append(conv)
            shape, frac = conv.bind(shape, frac)
            if draw(space.pool) and min(shape[1:]) >= 2:
                pool = QAvgPool2d(draw(space.pool_kernel), draw(space.pool_stride))
                layers.append(pool)
                shape, frac = pool.bind(shape, frac)
            if draw(space.conv_requant):
                rq = space.requant(draw, frac)
                layers.append(rq)
                shape, frac = rq.bind(shape, frac)
            c, h, w = shape
        layers.append(QFlatten())
        d = c * h * w
    else:
        d = draw(space.features)
        input_shape = (d,)
    n_linear = draw(space.linears)
    for i in range(n_linear):
        last = i == n_linear - 1
        out = draw(space.classes if last else space.hidden)
        wf_s, bias_s = space.weight_format, space.bias
        if last and space.logit_weight_format is not None:
            wf_s = space.logit_weight_format
        if last and space.logit_bias is not None:
            bias_s = space.logit_bias
        layers.append(QLinear.from_int(*affine_parts((out, d), draw(wf_s), frac, draw(bias_s))))
        frac += layers[-1].weight_format.frac
        if draw(space.logit_requant if last else space.hidden_requant):
            rq = space.requant(draw, frac)
            layers.append(rq)
            frac = rq.format.frac
        d = out
    return RandomNet(layers, input_shape, in_fmt, seed, extreme)


def truth_verdict(net: QNetwork, x: torch.Tensor, label: int, eps: int) -> str:
    """The verdict on sample ``x`` (input_shape) by enumerating every integer point of its ε-box."""
    from qcert.bounds import eps_box

    if int(net.predict(x[None])[0]) != label:
        return "misclassified"
    lo, hi = eps_box(net, x[None], eps)
    return (
        "vulnerable" if bool((net.predict(box_points(lo[0], hi[0])) != label).any()) else "robust"
    )


def sample_queries(
    net: QNetwork, seed: int, salt: int, n: int = 3
) -> Iterable[tuple[int, torch.Tensor, int, int, str]]:
    """``n`` random samples of ``net`` with ε in 1..3, each asked for its predicted class and for
    another one: ``(q, x, label, eps, truth)`` with the enumerated verdict."""
    rng = random.Random(salt + seed)
    lo_v, hi_v = net.input_range
    for q in range(n):
        g = torch.Generator().manual_seed(seed * 10 + q)
        x = torch.randint(lo_v, hi_v + 1, net.input_shape, generator=g)
        eps = rng.choice([1, 2, 3])
        pred = int(net.predict(x[None])[0])
        for label in (pred, (pred + 1 + q) % net.num_classes):
            yield q, x, label, eps, truth_verdict(net, x, label, eps)
