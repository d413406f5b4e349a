"""Discrete Gaussian noise on the integers, sampled exactly from a finite integer table.

The smoothing noise of qcert is the discrete Gaussian ``N_Z(0, sigma^2)``,
``P(k) ∝ exp(-k^2 / (2 sigma^2))`` for ``k ∈ Z``, with ``sigma`` in integer input levels.
It is sampled from a *finite table of integer weights* ``w_k`` (``|k| <= T``, summing to
``2**62``) by drawing a uniform integer ``u`` in ``[0, 2**62)`` and looking it up in the
cumulative weights. Uniform 62-bit integers are produced exactly (no floating point) by both
``torch.randint`` and ``numpy.random.Generator.integers``, so the noise actually used has the
probability mass function ``w_k / 2**62`` *exactly*.

That sampled distribution differs from the ideal discrete Gaussian by truncation (mass beyond
``±T``, :attr:`DiscreteGaussian.tail_mass` ``< 1e-15``) and by rounding the weights to integers.
Both are accounted for, not assumed away: :attr:`DiscreteGaussian.tv_bound` is an upper bound on
the total-variation distance between the sampled distribution and the analysis distribution used
by :mod:`qcert.smoothing.radius`; the certificate subtracts ``dim * tv_bound`` from the
probabilities (see ``docs/smoothing.md``).
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal, localcontext
from functools import lru_cache

import numpy as np
import torch

from qcert.errors import SmoothingError

__all__ = ["DiscreteGaussian", "NoiseStream", "SmoothingError", "MAX_SIGMA", "RESOLUTION_BITS"]

#: The table weights sum to ``2**RESOLUTION_BITS``; each draw uses one uniform integer below it.
RESOLUTION_BITS = 62
_ONE = 1 << RESOLUTION_BITS
#: Largest supported ``sigma`` (integer levels); the table has about ``16.5 * sigma`` entries.
MAX_SIGMA = 10_000.0
#: Decimal digits used to build the table (the ideal probabilities are exact to ~1e-45).
_PREC = 60
_GUIDE_BITS = 16
_GUIDE_SHIFT = RESOLUTION_BITS - _GUIDE_BITS
_AMBIGUOUS = 1 << 40  # marks guide buckets that contain a threshold
#: The 32-bit guide table's mark for a bucket that contains a threshold.
GUIDE32_AMBIGUOUS = np.int32(-(2**31))


def validate_sigma(
    sigma: object, unit: str = "integer input levels", max_sigma: float = MAX_SIGMA
) -> float:
    """Return ``sigma`` as a float after checking it is a finite real number in (0, max_sigma].

    The one check of a noise level: in integer input levels (the default, for the noise itself)
    or in the ``[0, 1]`` units of the smoothed classifiers (``unit``, with their own bound)."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.integer, np.floating)):
        raise SmoothingError(f"sigma must be a real number, got {type(sigma).__name__}")
    value = float(sigma)
    if math.isnan(value) or math.isinf(value):
        raise SmoothingError(f"sigma must be finite, got {value}")
    if value <= 0.0:
        raise SmoothingError(f"sigma must be > 0 ({unit}), got {value}")
    if value > max_sigma:
        raise SmoothingError(f"sigma must be <= {max_sigma:g} {unit}, got {value}")
    return value


def _ceil_float(x: Decimal) -> float:
    """The smallest float >= ``x`` (for rigorous upper bounds)."""
    f = float(x)
    return f if Decimal(f) >= x else math.nextafter(f, math.inf)


class DiscreteGaussian:
    """The discrete Gaussian ``N_Z(0, sigma^2)`` on the integers, as an exact sampling table.

    Guarantee: :meth:`sample` draws i.i.d. integers whose law is *exactly*
    ``pmf(k) = weights[k + T] / 2**62`` on ``{-T, ..., T}`` (``T = support_bound``); this law is
    symmetric (``pmf(k) == pmf(-k)``, mean exactly 0) and within total variation
    :attr:`tv_bound` of the ideal discrete Gaussian (and of the analysis distribution of
    ``docs/smoothing.md``). ``tail_mass`` is an upper bound on the ideal mass beyond ``±T``;
    ``T`` is the smallest bound with ``tail_mass < max_tail_mass``.

    Parameters
    ----------
    sigma:
        Standard-deviation parameter in integer input levels (``0 < sigma <= MAX_SIGMA``).
    max_tail_mass:
        Truncation threshold for the ideal tail mass ``P(|k| > T)`` (default ``1e-15``).
    """

    sigma: float
    support_bound: int
    tail_mass: float
    tv_bound: float
    weights: np.ndarray
    log_ideal_tail: np.ndarray
    log_ideal_tail_ratio: float

    def __init__(self, sigma: float, *, max_tail_mass: float = 1e-15) -> None:
        self.sigma = validate_sigma(sigma)
        if not (isinstance(max_tail_mass, (int, float)) and 1e-40 <= max_tail_mass <= 1e-6):
            raise SmoothingError(f"max_tail_mass must be in [1e-40, 1e-6], got {max_tail_mass!r}")
        table = _build_table(self.sigma, float(max_tail_mass))
        (
            self.support_bound,
            weights,
            self.tail_mass,
            self.tv_bound,
            log_tail,
            self.log_ideal_tail_ratio,
        ) = table
        self.weights = np.array(weights, dtype=np.int64)
        self.weights.setflags(write=False)
        #: ``log P_ideal(delta >= j)`` for ``j = 0 .. T + 1`` (ideal discrete Gaussian).
        self.log_ideal_tail = np.array(log_tail, dtype=np.float64)
        self.log_ideal_tail.setflags(write=False)
        cum = np.cumsum(self.weights)  # exact: int64, total 2**62 < 2**63
        if int(cum[-1]) != _ONE:
            raise AssertionError("weights do not sum to 2**62")  # pragma: no cover
        # u in [0, 2**62) maps to index i with cum[i-1] <= u < cum[i]; the last threshold is
        # never reached, so it is left out.
        self._thresholds_np = cum[:-1].copy()
        self._thresholds_np.setflags(write=False)
        # Guide table on the top _GUIDE_BITS bits of u: the sampled value when every u of the
        # bucket maps to the same index, else _AMBIGUOUS (then a binary search decides). It only
        # speeds the lookup up; the result is identical to searchsorted on the thresholds.
        starts = np.arange(1 << _GUIDE_BITS, dtype=np.int64) << _GUIDE_SHIFT
        first = np.searchsorted(self._thresholds_np, starts, side="right")
        last = np.searchsorted(self._thresholds_np, starts + ((1 << _GUIDE_SHIFT) - 1), "right")
        self._guide_np = np.where(first == last, first - self.support_bound, _AMBIGUOUS)
        self._guide_np.setflags(write=False)
        # the thresholds inside bucket b are thresholds[first[b]:last[b]]
        self._bucket_ranges = np.stack([first, last], axis=1)
        self._bucket_ranges.setflags(write=False)
        self._torch_tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._guide32: np.ndarray | None = None
        self._pmf = self.weights.astype(np.float64) / float(_ONE)
        self._pmf.setflags(write=False)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def cached(cls, sigma: float) -> DiscreteGaussian:
        """A shared instance for ``sigma`` (default truncation); tables are built once."""
        return _cached_noise(validate_sigma(sigma))

    def __repr__(self) -> str:
        return (
            f"DiscreteGaussian(sigma={self.sigma!r}, support_bound={self.support_bound}, "
            f"tail_mass={self.tail_mass:.3g}, tv_bound={self.tv_bound:.3g})"
        )

    # ------------------------------------------------------------------ distribution
    @property
    def support(self) -> np.ndarray:
        """The integers ``-T .. T`` (int64), aligned with :attr:`weights`."""
        t = self.support_bound
        return np.arange(-t, t + 1, dtype=np.int64)

    def pmf(self, k: int | np.ndarray) -> float | np.ndarray:
        """Probability of ``k`` under the sampled law (``weights / 2**62``; 0 outside ``±T``)."""
        arr = np.asarray(k)
        if not np.issubdtype(arr.dtype, np.integer):
            raise SmoothingError(f"pmf expects integers, got dtype {arr.dtype}")
        t = self.support_bound
        inside = np.abs(arr) <= t
        idx = np.where(inside, arr + t, 0)
        out = np.where(inside, self._pmf[idx], 0.0)
        return float(out) if out.ndim == 0 else out

    def log_pmf(self, k: int | np.ndarray) -> float | np.ndarray:
        """Natural log of :meth:`pmf` (``-inf`` outside the support)."""
        p = np.asarray(self.pmf(k), dtype=np.float64)
        with np.errstate(divide="ignore"):
            out = np.log(p)
        return float(out) if out.ndim == 0 else out

    def mean(self) -> float:
        """Mean of the sampled law: exactly 0 (the weights are symmetric by construction)."""
        return 0.0

    def variance(self) -> float:
        """Exact variance of the sampled law, ``sum k^2 w_k / 2**62`` (exact integer sum)."""
        t = self.support_bound
        total = sum(k * k * int(self.weights[k + t]) for k in range(1, t + 1)) * 2
        return total / _ONE

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        shape: int | tuple[int, ...] | torch.Size,
        generator: torch.Generator | np.random.Generator,
    ) -> torch.Tensor | np.ndarray:
        """Draw i.i.d. noise of the given shape, exactly from :meth:`pmf`.

        With a ``torch.Generator`` the result is a ``torch.int64`` tensor on the generator's
        device; with a ``numpy.random.Generator`` it is an ``int64`` array. The same generator
        state gives the same draws. Each draw consumes one uniform integer in ``[0, 2**62)``.
        """
        size = _as_shape(shape)
        t = self.support_bound
        if isinstance(generator, torch.Generator):
            device = generator.device
            u = torch.randint(
                0, _ONE, size, generator=generator, dtype=torch.int64, device=device
            ).reshape(-1)
            if device.type == "cpu":  # numpy's gather is ~3x faster than torch's on CPU
                return torch.from_numpy(self.values_from_uniform(u.numpy())).reshape(size)
            tables = self._torch_tables.get(device)
            if tables is None:
                tables = (
                    torch.from_numpy(np.array(self._thresholds_np)).to(device),
                    torch.from_numpy(np.array(self._guide_np)).to(device),
                )
                self._torch_tables[device] = tables
            thresholds, guide = tables
            out = guide[u >> _GUIDE_SHIFT]
            sel = (out == _AMBIGUOUS).nonzero().squeeze(1)
            if sel.numel():
                out[sel] = torch.searchsorted(thresholds, u[sel], right=True) - t
            return out.reshape(size)
        if isinstance(generator, np.random.Generator):
            return self.values_from_uniform(generator.integers(0, _ONE, size=size, dtype=np.int64))
        if isinstance(generator, NoiseStream):
            d = size[-1] if size else 1
            rows = math.prod(size[:-1]) if size else 1
            return self.sample_rows(rows, d, generator).reshape(size)
        raise SmoothingError(
            "generator must be a torch.Generator, numpy.random.Generator or NoiseStream, "
            f"got {type(generator).__name__}"
        )

    @property
    def guide32(self) -> np.ndarray:
        """The guide table on the top 16 bits of ``u`` as int32: the value, or
        ``GUIDE32_AMBIGUOUS`` for a bucket that contains a threshold."""
        g = self._guide32
        if g is None:
            g = np.where(self._guide_np == _AMBIGUOUS, GUIDE32_AMBIGUOUS, self._guide_np)
            g = g.astype(np.int32)
            g.setflags(write=False)
            self._guide32 = g
        return g

    @property
    def bucket_ranges(self) -> np.ndarray:
        """``65536 × 2`` int64: the thresholds inside 16-bit bucket ``b`` are
        ``thresholds[first:last]`` with ``(first, last) = bucket_ranges[b]``; ``first`` is the
        number of thresholds at or below the bucket's smallest ``u``."""
        return self._bucket_ranges

    @property
    def thresholds(self) -> np.ndarray:
        """The cumulative weights ``C(-T) .. C(T-1)`` (int64, read-only)."""
        return self._thresholds_np

    def sample_rows(self, rows: int, d: int, stream: NoiseStream) -> np.ndarray:
        """``rows × d`` i.i.d. draws (int64) from a :class:`NoiseStream`, exactly from :meth:`pmf`.

        The 62-bit uniform ``u`` of each draw is built in two parts: its top 16 bits are the
        stream's bulk draw; when that 16-bit bucket contains a threshold, its low 46 bits are the
        stream's refinement draw for the same position. Both parts are uniform and independent,
        so ``u`` is uniform on ``[0, 2**62)`` and the value is the inverse-CDF lookup of
        :meth:`values_from_uniform`: the law is exactly ``weights / 2**62``, and a bucket without
        a threshold gives the same value for every low part. About 98 % of draws at σ = 64 levels
        need only the 16 bits. (Fused version: :func:`qcert.smoothing.kernels.noisy_rows`.)
        """
        row0 = stream.take_rows(rows)
        top = stream.indices(row0, rows, d)
        out = self.guide32[top].astype(np.int64)
        amb_r, amb_c = np.nonzero(out == GUIDE32_AMBIGUOUS)
        if amb_r.size:
            low = stream.refinement(amb_r + row0, amb_c)
            u = (top[amb_r, amb_c].astype(np.int64) << _GUIDE_SHIFT) | low
            out[amb_r, amb_c] = (
                np.searchsorted(self._thresholds_np, u, side="right") - self.support_bound
            )
        return out

    def values_from_uniform(self, u: np.ndarray) -> np.ndarray:
        """Map uniform integers ``u`` in ``[0, 2**62)`` to noise values (inverse-CDF lookup).

        Returns the ``k`` with ``C(k-1) <= u < C(k)``, ``C(k) = sum_{j <= k} w_j``; a uniform
        ``u`` therefore yields ``k`` with probability exactly ``w_k / 2**62``.
        """
        arr = np.asarray(u, dtype=np.int64)
        flat = arr.reshape(-1)
        if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= _ONE):
            raise SmoothingError("uniform integers must lie in [0, 2**62)")
        out = self._guide_np[flat >> _GUIDE_SHIFT]  # a fresh array
        sel = np.flatnonzero(out == _AMBIGUOUS)
        if sel.size:
            out[sel] = np.searchsorted(self._thresholds_np, flat[sel], side="right")
            out[sel] -= self.support_bound
        return out.reshape(arr.shape)


class NoiseStream:
    """The random source of the integer smoothing noise: Philox4x32-10
    (:mod:`qcert.smoothing.philox`) under a 64-bit key derived from ``seed``, addressed by
    (row, column). Draw ``j`` of row ``r`` takes 16 bits of block ``(j // 8, r mod 2**32,
    r // 2**32, 0)`` (word ``(j mod 8) // 2``, low half first) and, only when its 16-bit bucket is
    ambiguous, 46 more bits from block ``(j, r mod 2**32, r // 2**32, 1)`` (``x0`` and the low 14
    bits of ``x1``). Rows are numbered in the order they are drawn, so the draws do not depend on
    how the rows are split into calls. See :meth:`DiscreteGaussian.sample_rows`.

    ``seed``: a non-negative int or a sequence of them (hashed by numpy's ``SeedSequence``).
    """

    def __init__(self, seed: int | tuple[int, ...] | list[int]) -> None:
        try:
            k0, k1 = np.random.SeedSequence(seed).generate_state(2, np.uint32)
        except (TypeError, ValueError) as e:
            raise SmoothingError(f"invalid noise seed {seed!r}: {e}") from None
        self.key = (int(k0), int(k1))
        self.row = 0

    def take_rows(self, k: int) -> int:
        """Reserve the next ``k`` rows; returns the first one's number."""
        first = self.row
        self.row += int(k)
        return first

    def indices(self, row0: int, rows: int, d: int) -> np.ndarray:
        """The 16-bit bulk draws (uint16, ``rows × d``) of rows ``row0 .. row0 + rows − 1``."""
        from qcert.smoothing.philox import philox4x32

        r = np.arange(row0, row0 + rows, dtype=np.uint64)[:, None]
        b = np.arange(-(-d // 8), dtype=np.uint64)[None, :]
        words = np.stack(philox4x32(b, r, r >> np.uint64(32), 0, *self.key), axis=-1)
        halves = np.stack([words & np.uint64(0xFFFF), words >> np.uint64(16)], axis=-1)
        return halves.reshape(rows, -1)[:, :d].astype(np.uint16)

    def refinement(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The 46 refinement bits (int64) of the draws at absolute ``rows`` and ``cols``."""
        from qcert.smoothing.philox import philox4x32

        r = np.asarray(rows, dtype=np.uint64)
        x0, x1, _, _ = philox4x32(cols, r, r >> np.uint64(32), 1, *self.key)
        return (((x1 & np.uint64(0x3FFF)) << np.uint64(32)) | x0).astype(np.int64)


def _as_shape(shape: int | tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        dims: tuple[int, ...] = (int(shape),)
    elif isinstance(shape, (tuple, list, torch.Size)):
        dims = tuple(int(s) for s in shape)
    else:
        raise SmoothingError(f"shape must be an int or a tuple of ints, got {shape!r}")
    if any(s < 0 for s in dims):
        raise SmoothingError(f"shape must be non-negative, got {dims}")
    return dims


@lru_cache(maxsize=64)
def _cached_noise(sigma: float) -> DiscreteGaussian:
    return DiscreteGaussian(sigma)


def _build_table(
    sigma: float, max_tail_mass: float
) -> tuple[int, list[int], float, float, list[float], float]:
    """Exact-enough ideal probabilities (60 decimal digits) and the integer table.

    Returns ``(T, weights, tail_mass, tv_bound, log_tail, log_tail_ratio)`` where ``log_tail[j]
    = log P(delta >= j)`` for ``j = 0..T+1`` and ``log_tail_ratio = log(P(delta >= T+1) /
    P(delta >= T))``, all for the ideal discrete Gaussian.
    """
    with localcontext() as ctx:
        ctx.prec = _PREC
        ctx.Emin = -(10**9)
        ctx.Emax = 10**9
        s = Decimal(sigma)
        two_s2 = 2 * s * s
        # Terms e_k = exp(-k^2 / (2 sigma^2)) for k = 0..K by an exact-in-form recurrence
        # e_{k+1} = e_k * g_k, g_k = exp(-(2k+1)/(2 sigma^2)), g_{k+1} = g_k * exp(-1/sigma^2).
        # K is chosen so that sum_{k>K} e_k <= (sigma^2/K) exp(-K^2/(2 sigma^2)) < 1e-50.
        kmax = int(math.ceil(sigma * math.sqrt(2.0 * (120.0 + max(0.0, math.log(sigma)))))) + 4
        r = (-2 / two_s2).exp()
        g = (-1 / two_s2).exp()
        e = Decimal(1)
        terms = [e]
        for _ in range(kmax):
            e = e * g
            g = g * r
            terms.append(e)
        z = terms[0] + 2 * sum(terms[1:])
        # Tails t_j = sum_{k >= j} e_k / Z, accumulated from the top (j = kmax .. 0).
        tails = [Decimal(0)] * (kmax + 1)
        acc = Decimal(0)
        for k in range(kmax, -1, -1):
            acc += terms[k]
            tails[k] = acc / z
        bound = Decimal(max_tail_mass)
        t = 0
        while 2 * tails[t + 1] >= bound:
            t += 1
        if t + 2 > kmax:  # pragma: no cover - kmax is ~15.5 sigma, T is ~8.1 sigma
            raise AssertionError("table bound too small")
        probs = [terms[k] / z for k in range(t + 1)]
        weights_half = [
            int((p * _ONE).to_integral_value(rounding=ROUND_HALF_EVEN)) for p in probs[1:]
        ]
        w0 = _ONE - 2 * sum(weights_half)
        if w0 <= 0:  # pragma: no cover - p0 > 0 always dominates the rounding error
            raise AssertionError("central weight not positive")
        weights = weights_half[::-1] + [w0] + weights_half
        # TV(table, ideal) = 1/2 * (sum_{|k|<=T} |w_k/2^62 - p_k| + P(|delta| > T)).
        one = Decimal(_ONE)
        diff = abs(Decimal(w0) / one - probs[0]) + 2 * sum(
            abs(Decimal(w) / one - p) for w, p in zip(weights_half, probs[1:])
        )
        tail_mass = 2 * tails[t + 1]
        tv = (diff + tail_mass) / 2
        # Slack for the neglected terms beyond kmax and for the decimal rounding (< 1e-40).
        tv_bound = _ceil_float((tv + Decimal("1e-40")).quantize(Decimal("1e-45"), ROUND_CEILING))
        tail_bound = _ceil_float(tail_mass + Decimal("1e-45"))
        log_tail = [float(tails[j].ln()) for j in range(t + 2)]
        log_ratio = float((tails[t + 1] / tails[t]).ln())
    return t, weights, tail_bound, tv_bound, log_tail, log_ratio
