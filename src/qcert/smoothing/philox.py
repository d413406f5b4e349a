"""Philox4x32-10, the counter-based random number generator of Salmon, Moraes, Dror and Shaw,
"Parallel Random Numbers: As Easy as 1, 2, 3" (SC 2011) — the generator behind cuRAND's and
PyTorch's CUDA streams. A keyed bijection of a 128-bit counter: block ``(c0, c1, c2, c3)`` under key
``(k0, k1)`` gives four uniform 32-bit words, and any block can be computed on its own, so noise
can be generated in parallel, in any order, and the same draws come out whatever the batching.

This is the vectorized numpy version (the reference); :mod:`qcert.smoothing.kernels` has the
compiled one. Both are tested against Random123's published known-answer vectors.
"""

from __future__ import annotations

import numpy as np

__all__ = ["philox4x32", "ROUNDS"]

ROUNDS = 10
M0, M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85  # key schedule (Weyl) increments
_M32 = np.uint64(0xFFFFFFFF)


def philox4x32(
    c0: np.ndarray | int,
    c1: np.ndarray | int,
    c2: np.ndarray | int,
    c3: np.ndarray | int,
    k0: int,
    k1: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four 32-bit output words (as uint64 arrays) of the blocks with counter words
    ``c0..c3`` (broadcast together) under the key ``(k0, k1)``."""
    c = [np.asarray(v, dtype=np.uint64) & _M32 for v in (c0, c1, c2, c3)]
    x0, x1, x2, x3 = np.broadcast_arrays(*c)
    r0, r1 = np.uint64(k0 & 0xFFFFFFFF), np.uint64(k1 & 0xFFFFFFFF)  # the round keys
    for i in range(ROUNDS):
        if i:
            r0 = (r0 + np.uint64(W0)) & _M32
            r1 = (r1 + np.uint64(W1)) & _M32
        p0 = np.uint64(M0) * x0
        p1 = np.uint64(M1) * x2
        x0, x1, x2, x3 = (
            (p1 >> np.uint64(32)) ^ x1 ^ r0,
            p1 & _M32,
            (p0 >> np.uint64(32)) ^ x3 ^ r1,
            p0 & _M32,
        )
    return x0, x1, x2, x3
