"""Networks, strategies and helpers shared by the tests.

* ``small_mlp`` / ``small_cnn`` / ``small_nets``: small random QNetworks with integer weights and
  tiny input ranges, so that every input of a box can be enumerated (``box_points``);
* ``digits_mlp``: a random 8-bit MLP for the 8×8 digits images;
* ``random_networks``: the hypothesis strategy of random QNetworks (convolution, pooling, linear,
  every format and rounding rule), drawn from a ``NetSpace`` that each test narrows to what it
  exercises;
* ``fit``: a few steps of full-batch training of a float model.
"""

from __future__ import annotations

import itertools
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
#: the rounding rules by name
ROUNDINGS = st.sampled_from(["half_up", "half_even", "floor"])
ANY_ROUNDING = st.sampled_from(list(Rounding))
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
    seed: int = 0, hidden: int = 16, act_frac: int = 4, constant_class: int | None = None
) -> QNetwork:
    """A random 8-bit MLP for 8×8 digits: flatten → 64→``hidden`` → 8-bit unsigned activations
    with ``act_frac`` fractional bits → 10 logits. With ``constant_class`` every weight is zero and
    only that class has a bias: it always wins."""
    g = torch.Generator().manual_seed(seed)
    w = FixedPointFormat(8, True, 7)
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
    height: st.SearchStrategy[int] = st.integers(1, 6)
    width: st.SearchStrategy[int] = st.integers(1, 6)
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
        c, h, w = draw(space.channels), draw(space.height), draw(space.width)
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
