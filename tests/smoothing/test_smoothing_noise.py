"""Tests of the discrete Gaussian sampling table and sampler (qcert.smoothing.noise)."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import stats

from qcert.errors import QcertError
from qcert.smoothing import MAX_SIGMA, DiscreteGaussian, SmoothingError
from qcert.smoothing.kernels import noisy_rows, philox_block
from qcert.smoothing.noise import NoiseStream
from qcert.smoothing.philox import philox4x32

SIGMAS = [0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 30.0, 64.0]
ONE = 1 << 62


def _ideal(sigma: float, kmax: int) -> tuple[list[mpmath.mpf], mpmath.mpf]:
    """Independent high-precision ideal pmf for k = 0..kmax (mpmath, 50 digits)."""
    mpmath.mp.dps = 50
    s = mpmath.mpf(sigma)
    big = int(20 * sigma) + 40
    terms = [mpmath.exp(-(mpmath.mpf(k) ** 2) / (2 * s * s)) for k in range(big + 1)]
    z = terms[0] + 2 * mpmath.fsum(terms[1:])
    return [terms[k] / z for k in range(kmax + 1)], z


@pytest.mark.parametrize("bad", [0.0, -1.0, -0.0, math.nan, math.inf, -math.inf, MAX_SIGMA * 2])
def test_invalid_sigma_raises_value_error(bad: float) -> None:
    with pytest.raises(ValueError, match="sigma"):
        DiscreteGaussian(bad)


@pytest.mark.parametrize("bad", [True, "2.0", None, [1.0]])
def test_non_numeric_sigma_raises(bad: object) -> None:
    with pytest.raises(SmoothingError):
        DiscreteGaussian(bad)  # type: ignore[arg-type]


def test_error_class_hierarchy() -> None:
    assert issubclass(SmoothingError, QcertError)
    assert issubclass(SmoothingError, ValueError)


def test_integer_sigma_accepted() -> None:
    assert DiscreteGaussian(2).sigma == 2.0
    assert DiscreteGaussian(np.float32(2.0)).sigma == 2.0


@pytest.mark.parametrize("sigma", SIGMAS)
def test_table_is_exact_symmetric_and_truncated_correctly(sigma: float) -> None:
    noise = DiscreteGaussian(sigma)
    t = noise.support_bound
    w = [int(x) for x in noise.weights]
    assert len(w) == 2 * t + 1
    assert sum(w) == ONE
    assert w == w[::-1]
    assert min(w) > 0
    assert noise.mean() == 0.0
    # tail mass beyond T is below 1e-15 and T is the smallest such bound (independent check)
    probs, _ = _ideal(sigma, t + 1)
    tail_t = 1 - probs[0] - 2 * mpmath.fsum(probs[1 : t + 1])
    tail_t_minus_1 = tail_t + 2 * probs[t]
    assert tail_t < 1e-15 <= tail_t_minus_1
    assert noise.tail_mass >= tail_t
    assert noise.tail_mass <= float(tail_t) * 1.000001 + 1e-44
    # weights are the rounded ideal probabilities (the centre absorbs the rounding)
    for k in range(1, t + 1):
        assert abs(w[t + k] - probs[k] * ONE) <= 0.5
    # TV bound: at least half the tail, and equal to an independent recomputation
    diff = abs(mpmath.mpf(w[t]) / ONE - probs[0]) + 2 * mpmath.fsum(
        abs(mpmath.mpf(w[t + k]) / ONE - probs[k]) for k in range(1, t + 1)
    )
    tv = (diff + tail_t) / 2
    assert noise.tv_bound >= tv
    assert noise.tv_bound <= tv * 1.000001 + 1e-39
    assert noise.tv_bound < 2e-15


@pytest.mark.parametrize("sigma", [0.5, 2.0, 8.0, 64.0])
def test_log_ideal_tail_matches_high_precision(sigma: float) -> None:
    noise = DiscreteGaussian(sigma)
    t = noise.support_bound
    probs, z = _ideal(sigma, t + 1)
    mpmath.mp.dps = 50
    s = mpmath.mpf(sigma)
    big = int(20 * sigma) + 40
    for j in [0, 1, t // 2, t, t + 1]:
        tail = (
            mpmath.fsum(mpmath.exp(-(mpmath.mpf(k) ** 2) / (2 * s * s)) for k in range(j, big)) / z
        )
        assert noise.log_ideal_tail[j] == pytest.approx(
            float(mpmath.log(tail)), rel=1e-14, abs=1e-15
        )
    assert len(noise.log_ideal_tail) == t + 2


@pytest.mark.parametrize("sigma", [0.5, 3.0, 30.0])
def test_pmf_log_pmf_variance(sigma: float) -> None:
    noise = DiscreteGaussian(sigma)
    t = noise.support_bound
    ks = np.arange(-t - 3, t + 4)
    p = noise.pmf(ks)
    assert isinstance(p, np.ndarray) and p.shape == ks.shape
    assert math.fsum(p) == pytest.approx(1.0, abs=1e-15)
    assert p[0] == 0.0 and p[-1] == 0.0
    assert noise.pmf(0) == float(noise.weights[t]) / ONE
    assert noise.pmf(t + 1) == 0.0
    assert noise.log_pmf(t + 1) == -math.inf
    assert noise.log_pmf(1) == pytest.approx(math.log(noise.pmf(1)))
    np.testing.assert_array_equal(noise.pmf(ks), noise.pmf(-ks))
    probs, _ = _ideal(sigma, t)
    for k in [0, 1, t // 2, t]:
        assert noise.pmf(k) == pytest.approx(float(probs[k]), rel=1e-12, abs=3e-19)
    var_exact = sum(k * k * int(noise.weights[k + t]) for k in range(-t, t + 1)) / ONE
    assert noise.variance() == var_exact
    ideal_var = 2 * mpmath.fsum(k * k * probs[k] for k in range(1, t + 1))
    assert noise.variance() == pytest.approx(float(ideal_var), rel=1e-12)
    with pytest.raises(SmoothingError):
        noise.pmf(0.5)  # type: ignore[arg-type]


def test_variance_below_sigma_squared_for_small_sigma() -> None:
    # Known property of the discrete Gaussian: Var < sigma^2, markedly so for sigma < 1.
    assert DiscreteGaussian(0.5).variance() == pytest.approx(0.2150127, rel=1e-6)
    assert DiscreteGaussian(1.0).variance() < 1.0
    assert DiscreteGaussian(8.0).variance() == pytest.approx(64.0, rel=1e-12)


@pytest.mark.parametrize("shape", [(7,), (2, 3, 4), 5, torch.Size([3, 2]), (0,)])
def test_sample_shape_and_dtype(shape: object) -> None:
    noise = DiscreteGaussian(2.0)
    g = torch.Generator().manual_seed(1)
    x = noise.sample(shape, g)  # type: ignore[arg-type]
    expected = (shape,) if isinstance(shape, int) else tuple(shape)  # type: ignore[arg-type]
    assert isinstance(x, torch.Tensor)
    assert x.dtype == torch.int64
    assert tuple(x.shape) == expected
    y = noise.sample(shape, np.random.default_rng(1))  # type: ignore[arg-type]
    assert isinstance(y, np.ndarray)
    assert y.dtype == np.int64
    assert y.shape == expected
    if x.numel():
        assert int(x.abs().max()) <= noise.support_bound
        assert int(np.abs(y).max()) <= noise.support_bound


def test_sample_determinism() -> None:
    noise = DiscreteGaussian(3.0)
    a = noise.sample((1000,), torch.Generator().manual_seed(123))
    b = noise.sample((1000,), torch.Generator().manual_seed(123))
    c = noise.sample((1000,), torch.Generator().manual_seed(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    g = torch.Generator().manual_seed(5)
    first = noise.sample((10,), g)
    second = noise.sample((10,), g)
    assert not torch.equal(first, second)  # the generator state advances
    u = noise.sample((1000,), np.random.default_rng(9))
    v = noise.sample((1000,), np.random.default_rng(9))
    np.testing.assert_array_equal(u, v)


def test_sample_rejects_bad_arguments() -> None:
    noise = DiscreteGaussian(1.0)
    with pytest.raises(SmoothingError):
        noise.sample((3,), None)  # type: ignore[arg-type]
    with pytest.raises(SmoothingError):
        noise.sample((3,), np.random.RandomState(0))  # type: ignore[arg-type]
    with pytest.raises(SmoothingError):
        noise.sample((-1,), torch.Generator())
    with pytest.raises(SmoothingError):
        noise.sample("3", torch.Generator())  # type: ignore[arg-type]


@pytest.mark.parametrize("sigma", [0.5, 2.0, 64.0, 255.0])
def test_lookup_is_the_inverse_cdf(sigma: float) -> None:
    """values_from_uniform (guide table + binary search) == plain inverse-CDF lookup."""
    noise = DiscreteGaussian(sigma)
    t = noise.support_bound
    cum = np.cumsum(noise.weights)
    edges = np.concatenate([[0, ONE - 1], cum[:-1] - 1, cum[:-1], cum[:-1] + 1])
    rng = np.random.default_rng(3)
    u = np.concatenate([edges[(edges >= 0) & (edges < ONE)], rng.integers(0, ONE, 100_000)])
    expected = np.searchsorted(cum, u, side="right") - t
    np.testing.assert_array_equal(noise.values_from_uniform(u), expected)
    # every value k is hit exactly on [C(k-1), C(k)): check both ends of each interval
    lows = np.concatenate([[0], cum[:-1]])
    np.testing.assert_array_equal(noise.values_from_uniform(lows), np.arange(-t, t + 1))
    np.testing.assert_array_equal(noise.values_from_uniform(cum - 1), np.arange(-t, t + 1))
    assert noise.values_from_uniform(np.int64(0)).shape == ()
    with pytest.raises(SmoothingError):
        noise.values_from_uniform(np.array([ONE]))


def test_torch_sample_is_lookup_of_the_randint_stream() -> None:
    noise = DiscreteGaussian(5.0)
    x = noise.sample((4, 1000), torch.Generator().manual_seed(77))
    u = torch.randint(0, ONE, (4, 1000), generator=torch.Generator().manual_seed(77))
    np.testing.assert_array_equal(x.numpy(), noise.values_from_uniform(u.numpy()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sampling() -> None:
    noise = DiscreteGaussian(8.0)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = noise.sample((300_000,), g)
    assert x.device.type == "cuda" and x.dtype == torch.int64
    g2 = torch.Generator(device="cuda").manual_seed(0)
    assert torch.equal(x, noise.sample((300_000,), g2))
    obs, exp = _sample_counts(noise, x.cpu().numpy())
    assert stats.chisquare(obs, exp).pvalue > 1e-3


def test_uniform_integer_source_has_full_62_bit_resolution() -> None:
    """The exactness argument needs u uniform on [0, 2^62) at full resolution (not a float)."""
    g = torch.Generator().manual_seed(0)
    u = torch.randint(0, 1 << 62, (200_000,), generator=g, dtype=torch.int64)
    assert int(u.min()) >= 0 and int(u.max()) < (1 << 62)
    for bits in (u & 255, (u >> 54) & 255):  # lowest and highest 8 of the 62 bits
        counts = torch.bincount(bits, minlength=256).numpy()
        assert stats.chisquare(counts).pvalue > 1e-4
    rng = np.random.default_rng(0)
    v = rng.integers(0, 1 << 62, size=200_000, dtype=np.int64)
    assert stats.chisquare(np.bincount(v & 255, minlength=256)).pvalue > 1e-4


def _sample_counts(noise: DiscreteGaussian, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Observed and expected counts over bins with expected count >= 20 (tails merged)."""
    t = noise.support_bound
    n = sample.size
    counts = np.bincount(sample + t, minlength=2 * t + 1).astype(np.float64)
    expected = noise.weights.astype(np.float64) / ONE * n
    keep = np.nonzero(expected >= 20)[0]
    lo, hi = keep.min(), keep.max()
    obs = np.concatenate([[counts[:lo].sum()], counts[lo : hi + 1], [counts[hi + 1 :].sum()]])
    exp = np.concatenate([[expected[:lo].sum()], expected[lo : hi + 1], [expected[hi + 1 :].sum()]])
    mask = exp > 0
    obs, exp = obs[mask], exp[mask]
    return obs, exp * (obs.sum() / exp.sum())


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 8.0, 64.0])
@pytest.mark.parametrize("backend", ["torch", "numpy", "stream", "kernel"])
def test_goodness_of_fit(sigma: float, backend: str) -> None:
    noise = DiscreteGaussian(sigma)
    n = 300_000
    seed = 20240 + int(sigma * 10)
    if backend == "torch":
        x = noise.sample((n,), torch.Generator().manual_seed(seed)).numpy()
    elif backend == "stream":
        x = noise.sample((n,), NoiseStream(seed))
    elif backend == "kernel":  # the fused kernel on a zero input, no clamping: x + δ = δ
        big = noise.support_bound
        x = noisy_rows(noise, np.zeros(600), n // 600, NoiseStream(seed), -big, big).reshape(-1)
    else:
        x = noise.sample((n,), np.random.default_rng(seed))
    # moments: mean 0 and the exact table variance, within 5 standard errors
    var = noise.variance()
    t = noise.support_bound
    k = np.arange(-t, t + 1, dtype=np.float64)
    mu4 = float(np.sum(k**4 * noise.weights.astype(np.float64) / ONE))
    assert abs(x.mean()) <= 5 * math.sqrt(var / n)
    assert abs(x.var() - var) <= 5 * math.sqrt((mu4 - var * var) / n)
    obs, exp = _sample_counts(noise, x)
    assert stats.chisquare(obs, exp).pvalue > 1e-3


PHILOX_KAT = [  # Random123's known-answer vectors for Philox4x32-10: counter, key, output
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("ctr,key,want", PHILOX_KAT)
def test_philox_known_answers(ctr, key, want) -> None:
    assert tuple(int(v) for v in philox4x32(*ctr, *key)) == want
    compiled = philox_block(*(np.uint64(v) for v in (*ctr, *key)))
    assert tuple(int(v) for v in compiled) == want


@pytest.mark.parametrize("sigma", [0.5, 3.0, 63.75, 2000.0])
def test_stream_sample_is_the_inverse_cdf_of_its_62_bit_uniforms(sigma: float) -> None:
    """sample_rows == values_from_uniform(u) with u rebuilt from Philox blocks by the documented
    layout (top 16 bits: block (j // 8, r, 0, 0), word (j % 8) // 2, low half first; low 46 bits,
    where the bucket is ambiguous: block (j, r, 0, 1)). Any u in an unambiguous bucket gives the
    same value, so the law is exactly the table's."""
    noise = DiscreteGaussian(sigma)
    rows, d = 7, 45
    s = NoiseStream(11)
    s.take_rows(3)  # rows are numbered from where the stream stands
    got = noise.sample_rows(rows, d, s)
    k0, k1 = NoiseStream(11).key
    top = np.zeros((rows, d), dtype=np.int64)
    low = np.zeros((rows, d), dtype=np.int64)
    for r in range(rows):
        for j in range(d):
            words = philox4x32(j // 8, r + 3, 0, 0, k0, k1)
            top[r, j] = (int(words[(j % 8) // 2]) >> (16 * (j % 2))) & 0xFFFF
            x0, x1, _, _ = philox4x32(j, r + 3, 0, 1, k0, k1)
            low[r, j] = ((int(x1) & 0x3FFF) << 32) | int(x0)
    amb = noise.guide32[top] == np.iinfo(np.int32).min
    u = (top << 46) | np.where(amb, low, 0)
    np.testing.assert_array_equal(got, noise.values_from_uniform(u))
    lo_u, hi_u = top[~amb] << 46, (top[~amb] << 46) | ((1 << 46) - 1)
    np.testing.assert_array_equal(noise.values_from_uniform(lo_u), noise.values_from_uniform(hi_u))
    if sigma == 63.75:  # σ = 0.25 on 8-bit pixels: a few percent of draws need the refinement
        assert 0 < amb.mean() < 0.05
    assert s.row == 3 + rows


def test_bucket_ranges_hold_the_thresholds_of_each_bucket() -> None:
    noise = DiscreteGaussian(63.75)
    thr, ranges = noise.thresholds, noise.bucket_ranges
    starts = np.arange(1 << 16, dtype=np.int64) << 46
    np.testing.assert_array_equal(ranges[:, 0], np.searchsorted(thr, starts, side="right"))
    np.testing.assert_array_equal(
        ranges[:, 1], np.searchsorted(thr, starts + (1 << 46) - 1, "right")
    )
    amb = noise.guide32 == np.iinfo(np.int32).min
    np.testing.assert_array_equal(amb, ranges[:, 1] > ranges[:, 0])


@pytest.mark.parametrize("d", [1, 3, 4, 784])
@pytest.mark.parametrize("sigma", [0.7, 63.75])
def test_fused_kernel_equals_clamped_sample_and_ignores_batching(d: int, sigma: float) -> None:
    noise = DiscreteGaussian(sigma)
    x = np.random.default_rng(d).integers(0, 256, d)
    ref = np.clip(x + noise.sample_rows(40, d, NoiseStream((5, d))), 0, 255)
    s = NoiseStream((5, d))
    parts = [noisy_rows(noise, x, k, s, 0, 255, 128, np.int8) for k in (1, 16, 23)]
    got = np.concatenate(parts).astype(np.int64) + 128
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(noisy_rows(noise, x, 40, NoiseStream((5, d)), 0, 255), ref)


def test_noise_stream_and_kernel_reject_bad_arguments() -> None:
    with pytest.raises(SmoothingError, match="seed"):
        NoiseStream(-1)
    with pytest.raises(SmoothingError, match="seed"):
        NoiseStream("x")  # type: ignore[arg-type]
    noise = DiscreteGaussian(2.0)
    with pytest.raises(ValueError, match="does not fit"):
        noisy_rows(noise, np.zeros(4), 2, NoiseStream(0), 0, 255, 0, np.int8)
    with pytest.raises(ValueError, match="does not fit"):
        noisy_rows(noise, np.zeros(4), 2, NoiseStream(0), 5, 4)
    a, b = NoiseStream((1, 2, 3)), NoiseStream((1, 2, 4))
    assert a.key != b.key
    assert not np.array_equal(a.indices(0, 2, 8), b.indices(0, 2, 8))


def test_goodness_of_fit_detects_wrong_sigma() -> None:
    """Sanity check of the chi-square procedure: samples at sigma=2.2 are rejected for 2.0."""
    x = DiscreteGaussian(2.2).sample((300_000,), np.random.default_rng(0))
    obs, exp = _sample_counts(DiscreteGaussian(2.0), x)
    assert stats.chisquare(obs, exp).pvalue < 1e-6


def test_cached_instances_are_shared() -> None:
    assert DiscreteGaussian.cached(4.0) is DiscreteGaussian.cached(4)
    assert DiscreteGaussian.cached(4.0).support_bound == DiscreteGaussian(4.0).support_bound


def test_custom_truncation() -> None:
    tight = DiscreteGaussian(2.0, max_tail_mass=1e-30)
    assert tight.tail_mass < 1e-30
    assert tight.support_bound > DiscreteGaussian(2.0).support_bound
    with pytest.raises(SmoothingError):
        DiscreteGaussian(2.0, max_tail_mass=0.1)


@pytest.mark.slow
def test_sampler_speed_ten_million() -> None:
    import time

    noise = DiscreteGaussian(64.0)
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    x = noise.sample((10_000_000,), g)
    elapsed = time.perf_counter() - start
    assert x.shape == (10_000_000,)
    assert elapsed < 5.0
