"""Fused, compiled noise kernels of the integer smoothing path (numba).

:func:`noisy_rows` writes ``clamp(x + δ, lo, hi) − offset`` for ``k`` noisy copies of one input in
one parallel pass: it generates the stream's Philox4x32-10 blocks in place, looks the 16-bit draws
up in the guide table and clamps, with no intermediate arrays. It is the same computation as
``np.clip(x + noise.sample_rows(k, d, stream), lo, hi) − offset`` (tested equal draw for draw). The
~2 % of draws whose 16-bit bucket is ambiguous are marked and finished by a second parallel pass
that computes their 46 refinement bits and binary-searches the cumulative weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from qcert.smoothing.noise import GUIDE32_AMBIGUOUS, DiscreteGaussian, NoiseStream
from qcert.smoothing.philox import M0, M1, ROUNDS, W0, W1

__all__ = ["noisy_rows", "philox_block"]

_AMB = GUIDE32_AMBIGUOUS
_SHIFT = 46
_M32 = np.uint64(0xFFFFFFFF)


@njit(inline="always", cache=True)
def philox_block(c0, c1, c2, c3, k0, k1):  # pragma: no cover - compiled
    """Philox4x32-10 on uint64 words holding 32-bit values (the numba twin of
    :func:`qcert.smoothing.philox.philox4x32`)."""
    for i in range(ROUNDS):
        if i:
            k0 = (k0 + np.uint64(W0)) & _M32
            k1 = (k1 + np.uint64(W1)) & _M32
        p0 = np.uint64(M0) * c0
        p1 = np.uint64(M1) * c2
        c0, c1, c2, c3 = (
            (p1 >> np.uint64(32)) ^ c1 ^ k0,
            p1 & _M32,
            (p0 >> np.uint64(32)) ^ c3 ^ k1,
            p0 & _M32,
        )
    return c0, c1, c2, c3


@njit(parallel=True, cache=True, nogil=True)
def _bulk(
    k0, k1, row0, guide, x, lo, hi, offset, words, out, ambiguous, mark
):  # pragma: no cover - compiled
    k, d = out.shape
    nb = words.shape[1] // 4
    for r in prange(k):
        row = np.uint64(row0 + r)
        c1, c2 = row & _M32, row >> np.uint64(32)
        for b in range(nb):  # the row's Philox blocks (independent: vectorizable)
            y0, y1, y2, y3 = philox_block(np.uint64(b), c1, c2, np.uint64(0), k0, k1)
            words[r, 4 * b] = y0
            words[r, 4 * b + 1] = y1
            words[r, 4 * b + 2] = y2
            words[r, 4 * b + 3] = y3
        c = 0
        for j in range(d):  # branch-free lookup, clamp and store
            idx = (words[r, j >> 1] >> np.uint32(16 * (j & 1))) & np.uint32(0xFFFF)
            v = guide[idx]
            amb = v == _AMB
            c += amb
            mark[r, j] = amb
            v = 0 if amb else v
            out[r, j] = min(max(x[j] + v, lo), hi) - offset
        ambiguous[r] = c


@njit(parallel=True, cache=True, nogil=True)
def _refine(
    k0, k1, row0, thresholds, ranges, t, x, lo, hi, offset, words, out, ambiguous, mark
):  # pragma: no cover - compiled
    k, d = out.shape
    marks = mark.view(np.uint64)  # 8 marks per word: skip the (mostly) empty words
    for r in prange(k):
        if ambiguous[r] == 0:
            continue
        row = np.uint64(row0 + r)
        c1, c2 = row & _M32, row >> np.uint64(32)
        for q in range(marks.shape[1]):
            if marks[r, q] == 0:
                continue
            for j in range(8 * q, min(8 * q + 8, d)):
                if not mark[r, j]:
                    continue
                idx = (words[r, j >> 1] >> np.uint32(16 * (j & 1))) & np.uint32(0xFFFF)
                y0, y1, _, _ = philox_block(np.uint64(j), c1, c2, np.uint64(1), k0, k1)
                low = ((y1 & np.uint64(0x3FFF)) << np.uint64(32)) | y0
                u = (np.int64(idx) << _SHIFT) | np.int64(low)
                first, last = ranges[idx, 0], ranges[idx, 1]
                v = first + np.searchsorted(thresholds[first:last], u, side="right") - t
                out[r, j] = min(max(x[j] + v, lo), hi) - offset


def noisy_rows(
    noise: DiscreteGaussian,
    x: np.ndarray,
    k: int,
    stream: NoiseStream,
    lo: int,
    hi: int,
    offset: int = 0,
    dtype: type = np.int64,
) -> np.ndarray:
    """``k × d`` array ``clamp(x + δ_r, lo, hi) − offset`` of ``dtype`` for the flat integer input
    ``x`` (length ``d``), with ``δ_r`` the rows of ``noise.sample_rows(k, d, stream)`` (same draws,
    same rows of the stream consumed). The caller chooses ``offset`` and ``dtype`` so that
    ``[lo − offset, hi − offset]`` fits."""
    x = np.ascontiguousarray(x, dtype=np.int64).reshape(-1)
    d = x.size
    info: np.iinfo[Any] = np.iinfo(dtype)
    if lo > hi or lo - offset < info.min or hi - offset > info.max:
        raise ValueError(f"[{lo}, {hi}] − {offset} does not fit {np.dtype(dtype).name}")
    row0 = stream.take_rows(k)
    k0, k1 = (np.uint64(v) for v in stream.key)
    words = np.empty((k, 4 * -(-d // 8)), dtype=np.uint32)
    out: np.ndarray = np.empty((k, d), dtype=dtype)
    ambiguous = np.empty(k, dtype=np.int64)
    mark = np.zeros((k, 8 * -(-d // 8)), dtype=np.bool_)  # padded to whole uint64 words
    _bulk(k0, k1, row0, noise.guide32, x, lo, hi, offset, words, out, ambiguous, mark)
    if ambiguous.any():
        _refine(
            k0, k1, row0, noise.thresholds, noise.bucket_ranges, noise.support_bound, x, lo, hi,
            offset, words, out, ambiguous, mark,
        )  # fmt: skip
    return out
