"""Deployed-int8 requantization (float32 multiplier as onnxruntime, gemmlowp fixed point), zero-point
offsets, max-pooling and global sum pooling: integer semantics against independent references
written from the stated formulas, ties and saturation included; interval bounds against
enumeration; the fake forward and the model file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcert.errors import FormatError, ModelFileError
from qcert.quant import (
    FixedPointFormat,
    QConv2d,
    QFlatten,
    QGlobalSumPool,
    QLinear,
    QMaxPool2d,
    QNetwork,
    QOffset,
    QRescale,
    fixed_point_rescale,
    float32_rescale,
    quantize_linear,
    quantize_multiplier,
)
from qcert.quant.io import model_from_bytes, model_to_bytes

U8 = FixedPointFormat(8, False, 0)
I8 = FixedPointFormat(8, True, 0)
I32 = FixedPointFormat(32, True, 0)
INT32 = (-(1 << 31), (1 << 31) - 1)


# ---------------------------------------------------------------- independent references
def ref_float32(acc: int, m: float, z: int, qmin: int, qmax: int) -> int:
    """MLAS: int32 saturate, cvtdq2ps, mulps, clamp, cvtps2dq (ties to even), + z; in numpy
    scalars and Python's round (half to even)."""
    a = min(max(acc, INT32[0]), INT32[1])
    v = np.float32(a) * np.float32(m)  # np.float32(int) rounds to nearest even
    v = min(max(float(v), qmin - z), qmax - z)
    return round(v) + z


def ref_fixed(acc: int, m0: int, n: int, z: int, qmin: int, qmax: int) -> int:
    """gemmlowp, in Python integers with C semantics spelled out."""
    a = min(max(acc, INT32[0]), INT32[1])
    ab = a * m0
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    num = ab + nudge
    x = abs(num) // (1 << 31) * (1 if num >= 0 else -1)  # C division truncates toward zero
    mask = (1 << n) - 1
    rem = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    y = (x >> n) + (1 if rem > threshold else 0)
    return min(max(y + z, qmin), qmax)


float32_values = st.floats(2.0**-30, 2.0**8, allow_nan=False).map(lambda v: float(np.float32(v)))
pow2_values = st.integers(-20, 4).map(lambda k: 2.0**k)  # ties are frequent with these


@settings(max_examples=300, deadline=None)
@given(
    acc=st.lists(
        st.one_of(
            st.integers(-(1 << 34), 1 << 34),
            st.integers(-300, 300),
            st.integers((1 << 24) - 5, (1 << 24) + 5),
        ),
        min_size=1,
        max_size=20,
    ),
    m=st.one_of(float32_values, pow2_values),
    signed=st.booleans(),
    z=st.integers(-128, 255),
)
def test_float32_rescale_matches_reference(acc: list[int], m: float, signed: bool, z: int) -> None:
    fmt = I8 if signed else U8
    z = min(max(z, fmt.qmin), fmt.qmax)
    got = float32_rescale(
        torch.tensor(acc), torch.tensor([m], dtype=torch.float32), z, fmt.qmin, fmt.qmax
    )
    assert got.tolist() == [ref_float32(a, m, z, fmt.qmin, fmt.qmax) for a in acc]


def test_float32_rescale_ties_and_float32_rounding() -> None:
    # ties: v = k + 1/2 rounds to the even integer
    acc = torch.tensor([1, 3, 5, -1, -3, 7])
    got = float32_rescale(acc, torch.tensor([0.5]), 0, -128, 127)
    assert got.tolist() == [0, 2, 2, 0, -2, 4]
    # fl32(acc): 2**24 + 1 is not a float32; it rounds to 2**24 (even) before the product
    acc = torch.tensor([(1 << 24) + 1, (1 << 24) + 3])
    got = float32_rescale(acc, torch.tensor([2.0**-24]), 0, -128, 127)
    assert got.tolist() == [1, 1]  # (2**24 + 4) · 2**-24 = 1.0000002 rounds to 1
    # saturation, and accumulators beyond int32 saturate first
    got = float32_rescale(torch.tensor([10**6, -(10**6), 1 << 40]), torch.tensor([1.0]), 3, 0, 255)
    assert got.tolist() == [255, 0, 255]


@settings(max_examples=300, deadline=None)
@given(
    acc=st.lists(
        st.integers(-(1 << 33), 1 << 33) | st.integers(-5000, 5000), min_size=1, max_size=20
    ),
    m0=st.integers(0, (1 << 31) - 1) | st.sampled_from([1 << 30, (1 << 31) - 1, 1518500250]),
    n=st.integers(0, 31),
    z=st.integers(-128, 127),
)
def test_fixed_point_rescale_matches_reference(acc: list[int], m0: int, n: int, z: int) -> None:
    got = fixed_point_rescale(
        torch.tensor(acc), torch.tensor([m0]), torch.tensor([n]), z, -128, 127
    )
    assert got.tolist() == [ref_fixed(a, m0, n, z, -128, 127) for a in acc]


def test_fixed_point_rounding_of_ties() -> None:
    # M = 2**30 · 2**-31 = 1/2 with n = 0: SRDHM rounds ties up (toward +inf): its nudge is
    # 2**30 for a non-negative product, 1 - 2**30 for a negative one, then C division truncates
    acc = torch.tensor([1, 3, -1, -3, 2, -2])
    got = fixed_point_rescale(acc, torch.tensor([1 << 30]), torch.tensor([0]), 0, -128, 127)
    assert got.tolist() == [1, 2, 0, -1, 1, -1]
    # the shift rounds ties away from zero: 1/2 · 2**-1 = 1/4, rounded twice as gemmlowp does
    # (SRDHM: 2, 6, -2, -6, 5 → 1, 3, -1, -3, 3; RDBPOT by 1: → 1, 2, -1, -2, 2)
    acc = torch.tensor([2, 6, -2, -6, 5])
    got = fixed_point_rescale(acc, torch.tensor([1 << 30]), torch.tensor([1]), 0, -128, 127)
    assert got.tolist() == [1, 2, -1, -2, 2]


def test_quantize_multiplier() -> None:
    for real in [0.5, 0.25, 0.3, 1e-6, 0.999999]:
        m0, n = quantize_multiplier(real)
        assert (1 << 30) <= m0 < (1 << 31)
        assert abs(m0 * 2.0 ** (-31 - n) - real) <= 2.0 ** (-31 - n)
    with pytest.raises(FormatError):
        quantize_multiplier(1.5)


def test_quantize_linear() -> None:
    x = np.array([0.0, 0.5, 1.0, -1.0, 0.25], np.float32)
    assert quantize_linear(x, 0.5, 10, 0, 255).tolist() == [10, 11, 12, 8, 10]  # 0.5 → 0 (even)


# ---------------------------------------------------------------- layers
def rescales() -> st.SearchStrategy[QRescale]:
    fmt = st.sampled_from([U8, I8, FixedPointFormat(4, True, 0)])

    def build(f: FixedPointFormat, z: int, kind: str, m: float, m0: int, n: int) -> QRescale:
        z = min(max(z, f.qmin), f.qmax)
        if kind == "float32":
            return QRescale(f, z, scale=[m])
        return QRescale(f, z, multiplier=[m0], shift=[n])

    return st.builds(
        build,
        fmt,
        st.integers(-128, 255),
        st.sampled_from(["float32", "fixed_point"]),
        st.one_of(float32_values, pow2_values),
        st.integers(0, (1 << 31) - 1),
        st.integers(0, 31),
    )


@settings(max_examples=200, deadline=None)
@given(layer=rescales(), lo=st.integers(-(1 << 32), 1 << 32), width=st.integers(0, 60))
def test_rescale_bounds_equal_enumeration(layer: QRescale, lo: int, width: int) -> None:
    QNetwork([QFlatten(), layer], (1,), FixedPointFormat(8, True, 0))  # binds the layer
    xs = torch.arange(lo, lo + width + 1)
    ys = layer.integer(xs.view(-1, 1)).view(-1)
    assert bool((ys[1:] >= ys[:-1]).all()), "monotone"
    blo, bhi = layer.int_bounds(torch.tensor([[lo]]), torch.tensor([[lo + width]]))
    assert int(blo) == int(ys.min()) and int(bhi) == int(ys.max())


def ref_maxpool(
    x: np.ndarray, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int]
) -> np.ndarray:
    n, c, h, w = x.shape
    oh, ow = (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1
    out = np.zeros((n, c, oh, ow), np.int64)
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * s[0] - p[0], j * s[1] - p[1]
            rs = slice(max(r0, 0), min(r0 + k[0], h))
            cs = slice(max(c0, 0), min(c0 + k[1], w))
            out[:, :, i, j] = x[:, :, rs, cs].max(axis=(2, 3))
    return out


@pytest.mark.parametrize(
    "k,s,p",
    [
        ((2, 2), (2, 2), (0, 0)),
        ((3, 3), (1, 1), (1, 1)),
        ((3, 2), (2, 1), (1, 0)),
        ((2, 2), (1, 1), (1, 1)),
    ],
)
def test_maxpool_matches_reference_and_bounds(k, s, p) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(0)
    layer = QMaxPool2d(k, s, p)
    net = QNetwork([QOffset(7), layer, QFlatten()], (2, 5, 6), I8)
    x = torch.randint(-128, 128, (20, 2, 5, 6), generator=g)
    y = net.integer_forward(x)
    want = ref_maxpool(x.numpy() - 7, k, s, p).reshape(20, -1)
    assert np.array_equal(y.numpy(), want)
    # fake forward (float64) equals it
    assert torch.equal(net(x.double()).to(torch.int64), y)
    # bounds: every input of a small box stays inside, and the ends are attained
    lo = torch.randint(-128, 120, (1, 2, 5, 6), generator=g)
    hi = lo + torch.randint(0, 3, lo.shape, generator=g)
    (blo, bhi) = net.int_bounds(lo, hi)[-1]
    for _ in range(50):
        xi = lo + (torch.rand(lo.shape, generator=g) * (hi - lo + 1)).floor().to(torch.int64)
        yi = net.integer_forward(xi)
        assert bool((yi >= blo).all() and (yi <= bhi).all())
    assert torch.equal(net.integer_forward(lo), blo) and torch.equal(net.integer_forward(hi), bhi)


def test_maxpool_refuses_wide_padding() -> None:
    with pytest.raises(FormatError):
        QMaxPool2d(2, 2, 2)


def deployed_net(seed: int, mode: str = "float32") -> QNetwork:
    """offset → conv → rescale → maxpool → offset → global sum → rescale → flatten → offset →
    linear → rescale: every new layer, per-channel and per-tensor multipliers."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    def rescale(fmt: FixedPointFormat, z: int, c: int, lo: float, hi: float) -> QRescale:
        m = rng.uniform(lo, hi, c).astype(np.float32)
        if mode == "float32":
            return QRescale(fmt, z, scale=[float(v) for v in m])
        mn = [quantize_multiplier(float(v)) for v in m]
        return QRescale(fmt, z, multiplier=[a for a, _ in mn], shift=[b for _, b in mn])

    return QNetwork(
        [
            QOffset(int(rng.integers(0, 256))),
            QConv2d.from_int(
                torch.randint(-127, 128, (4, 1, 3, 3), generator=g),
                torch.randint(-3000, 3000, (4,), generator=g),
                I8,
                I32,
                1,
                1,
            ),
            rescale(U8, int(rng.integers(0, 40)), 4, 1e-3, 1e-2),
            QMaxPool2d(2),
            QOffset(3),
            QGlobalSumPool(),
            rescale(I8, -5, 1, 1e-3, 2e-2),
            QFlatten(),
            QOffset(-5),
            QLinear.from_int(torch.randint(-127, 128, (3, 4), generator=g), None, I8, None),
            rescale(U8, 100, 3, 1e-3, 5e-2),
        ],
        input_shape=(1, 6, 6),
        input_format=U8,
    )


@pytest.mark.parametrize("mode", ["float32", "fixed_point"])
def test_fake_forward_and_file_round_trip(mode: str) -> None:
    g = torch.Generator().manual_seed(1)
    for seed in range(5):
        net = deployed_net(seed, mode)
        x = torch.randint(0, 256, (64, 1, 6, 6), generator=g)
        y = net.integer_forward(x)
        assert torch.equal((net(x.double()) * 2.0**net.logit_frac).to(torch.int64), y)
        assert torch.equal(net.double()(x.double()).to(torch.int64), y)  # .double() keeps float32 M
        back = model_from_bytes(model_to_bytes(net))
        assert torch.equal(back.integer_forward(x), y)
        lo = torch.zeros(1, 1, 6, 6, dtype=torch.int64)
        blo, bhi = net.int_bounds(lo, lo + 255)[-1]
        assert bool((y >= blo).all() and (y <= bhi).all())


def test_gradient_flows_where_not_saturated() -> None:
    net = deployed_net(0)
    x = torch.full((1, 1, 6, 6), 100.0, requires_grad=True)
    z = net(x)
    z.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def _header(net: QNetwork) -> dict:
    from safetensors import safe_open  # noqa: F401  (the container is read by model_from_bytes)

    raw = model_to_bytes(net)
    n = int.from_bytes(raw[:8], "little")
    return json.loads(json.loads(raw[8 : 8 + n])["__metadata__"]["qcert"])


def test_file_versions() -> None:
    from safetensors.numpy import save

    net = deployed_net(0)
    h = _header(net)
    assert h["version"] == 2
    assert h["layers"][2]["mode"] == "float32" and len(h["layers"][2]["scale"]) == 4
    # a version-1 network is still written as version 1
    old = QNetwork([QFlatten(), QLinear.from_int(torch.ones(2, 4), None, I8, None)], (1, 2, 2))
    assert _header(old)["version"] == 1
    # a version-1 file may not use the new layers
    h["version"] = 1
    tensors = {k: v for k, v in _tensors(net).items()}
    raw = save(tensors, metadata={"qcert": json.dumps(h)})
    with pytest.raises(ModelFileError, match="needs format version 2"):
        model_from_bytes(raw)
    # a scale that is not a float32 value is refused, not rounded silently
    h["version"] = 2
    h["layers"][2]["scale"][0] = 0.1
    with pytest.raises(ModelFileError, match="not a float32"):
        model_from_bytes(save(tensors, metadata={"qcert": json.dumps(h)}))


def _tensors(net: QNetwork) -> dict:
    from qcert.quant.io import tensors_of

    return tensors_of(net)


def test_rescale_validation() -> None:
    with pytest.raises(FormatError):
        QRescale(U8, 300, scale=[0.5])
    with pytest.raises(FormatError):
        QRescale(U8, 0, scale=[-0.5])
    with pytest.raises(FormatError):
        QRescale(U8, 0, multiplier=[1 << 31], shift=[0])
    with pytest.raises(FormatError):
        QRescale(U8, 0, multiplier=[1 << 30], shift=[32])
    with pytest.raises(FormatError):
        QRescale(U8, 0)
    with pytest.raises(FormatError, match="per-channel"):
        QNetwork([QFlatten(), QRescale(U8, 0, scale=[0.5, 0.25])], (3,), U8)
