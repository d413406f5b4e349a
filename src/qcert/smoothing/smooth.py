"""Randomized smoothing of a QNetwork: integer-only (discrete Gaussian noise, integer network) and the
float baseline (Cohen et al.'s continuous Gaussian noise, float twin network).

Units: ``sigma`` and radii are given for inputs scaled to ``[0, 1]`` by ``x / 255`` (Cohen et al.'s
convention: σ = 0.25 is a standard deviation of 63.75 pixel levels). Internally noise and radii are in
integer input levels: ``sigma_levels = sigma * LEVELS``, ``radius = radius_levels / LEVELS`` with
``LEVELS = input_range[1] - input_range[0]`` (255 for 8-bit pixels).

Each sample ``idx`` draws its noise from a generator seeded by ``(seed, idx)``: results do not depend
on batching, on resuming, or on which worker handles the sample. The integer path draws from a
:class:`~qcert.smoothing.noise.NoiseStream` (the same draws on every executor), the float path from a
``torch.Generator``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import qcert.export  # noqa: F401 (registers the onnx executor with make_executor)
from qcert.quant import QNetwork, to_float
from qcert.quant.executor import classifier, make_executor
from qcert.smoothing.noise import DiscreteGaussian, NoiseStream, SmoothingError, validate_sigma
from qcert.smoothing.radius import NOT_CERTIFIED, certified_radius
from qcert.smoothing.stats import binom_test_abstain, lower_confidence_bound

ABSTAIN = -1


def sample_generator(seed: int, idx: int, stage: int) -> torch.Generator:
    """The float path's generator for sample ``idx`` and stage (0: selection, 1: estimation,
    2: predict)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + idx) * 4 + stage)


def noise_stream(seed: int, idx: int, stage: int) -> NoiseStream:
    """The integer path's noise stream for sample ``idx`` and stage (as :func:`sample_generator`)."""
    return NoiseStream((seed, idx, stage))


@dataclass
class CertifyResult:
    """Outcome of CERTIFY for one input."""

    predict: int  # class, or ABSTAIN
    radius: float  # certified L2 radius in [0, 1] units (0.0 when abstaining)
    p_lower: float
    counts: list[int]
    noisy_samples: int
    seconds: float


class _Smoothing:
    """Shared PREDICT / CERTIFY logic (Cohen, Rosenfeld, Kolter, ICML 2019, Algorithm 1/2)."""

    arith = ""

    def __init__(self, net: QNetwork, sigma: float, batch: int = 1000) -> None:
        if batch < 1:
            raise SmoothingError(f"batch must be ≥ 1, got {batch}")
        self.net = net
        self.sigma = validate_sigma(sigma, "units of the input scaled to [0, 1]", math.inf)
        self.levels = net.input_range[1] - net.input_range[0]
        self.sigma_levels = self.sigma * self.levels
        self.batch = batch
        self.dim = math.prod(net.input_shape)
        self.num_classes = net.num_classes

    def noisy(self, x: torch.Tensor, k: int, g) -> torch.Tensor:  # noqa: ANN001
        """``k`` noisy copies of ``x`` drawn from the random source ``g``, clamped to the input
        range, in the form :meth:`classify` takes."""
        raise NotImplementedError

    def classify(self, noisy: torch.Tensor) -> torch.Tensor:
        """The base classifier's classes of a batch from :meth:`noisy`."""
        raise NotImplementedError

    def _classify_noisy(self, x: torch.Tensor, k: int, g) -> torch.Tensor:  # noqa: ANN001
        return self.classify(self.noisy(x, k, g))

    def generator(self, seed: int, idx: int, stage: int):  # noqa: ANN201
        """The random source of sample ``idx`` at ``stage``."""
        return sample_generator(seed, idx, stage)

    def radius(self, p_lower: float) -> float:
        raise NotImplementedError

    def sample_counts(self, x: torch.Tensor, num: int, generator) -> np.ndarray:  # noqa: ANN001
        """Class counts of the base classifier on ``num`` noisy copies of ``x`` (one input)."""
        counts = np.zeros(self.num_classes, dtype=np.int64)
        left = num
        while left > 0:
            k = min(self.batch, left)
            preds = self._classify_noisy(x, k, generator)
            counts += np.bincount(preds.numpy(), minlength=self.num_classes)
            left -= k
        return counts

    def predict(self, x: torch.Tensor, n: int, alpha: float, seed: int = 0, idx: int = 0) -> int:
        """PREDICT: the top class if a two-sided binomial test at level ``alpha`` says it beats the
        runner-up, else ABSTAIN. Guarantee (Cohen et al., Thm. 2): returns a class other than
        ``g(x)`` with probability at most ``alpha``."""
        counts = self.sample_counts(x, n, self.generator(seed, idx, 2))
        top2 = np.argsort(-counts, kind="stable")[:2]
        n_a, n_b = int(counts[top2[0]]), int(counts[top2[1]])
        return ABSTAIN if binom_test_abstain(n_a, n_b, alpha) else int(top2[0])

    def certify(
        self, x: torch.Tensor, n0: int, n: int, alpha: float, seed: int = 0, idx: int = 0
    ) -> CertifyResult:
        """CERTIFY: guess ``c_A`` from ``n0`` samples, estimate ``p_A``'s one-sided (1 − alpha)
        Clopper–Pearson lower bound from ``n`` fresh samples; if the radius is certified return
        ``c_A`` and the radius, else ABSTAIN. Guarantee: with probability ≥ 1 − alpha over the
        sampling, a returned ``c_A`` is ``g(x')`` for every input ``x'`` within the radius."""
        t0 = time.perf_counter()
        c0 = self.sample_counts(x, n0, self.generator(seed, idx, 0))
        c_a = int(np.argmax(c0))  # ties to the smallest index
        counts = self.sample_counts(x, n, self.generator(seed, idx, 1))
        p_lower = lower_confidence_bound(int(counts[c_a]), n, alpha)
        r = self.radius(p_lower)
        pred, radius = (c_a, r) if r >= 0 else (ABSTAIN, 0.0)
        return CertifyResult(
            pred, radius, p_lower, counts.tolist(), n0 + n, time.perf_counter() - t0
        )


class IntegerSmoothing(_Smoothing):
    """Integer-arithmetic-only smoothing (Lin et al., ICCV 2021): base classifier
    ``f(x) = argmax integer_forward(clamp(x + δ))`` with ``δ`` discrete Gaussian on the integers.

    The radius is :func:`qcert.smoothing.radius.certified_radius` for the noise actually sampled
    (sound for integer perturbations, in any dimension; see docs/smoothing.md), divided by LEVELS.
    The noisy inputs come from the fused kernel :func:`qcert.smoothing.kernels.noisy_rows`; the
    logits from ``executor`` (:func:`qcert.quant.executor.make_executor`): ``int8`` (default:
    :class:`qcert.quant.int8.Int8Executor`, torch's int8 products where provably exact),
    ``torch`` (the reference executor) or ``onnx`` (the integer ONNX graph in onnxruntime).
    ``logits_fn`` replaces the executor by another exact integer function; all must return the
    same int64 logits, so every executor gives the same results.
    """

    arith = "int"

    def __init__(
        self,
        net: QNetwork,
        sigma: float,
        batch: int = 1000,
        logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        executor: str = "int8",
    ) -> None:
        super().__init__(net, sigma, batch)
        self.noise = DiscreteGaussian(self.sigma_levels)
        self.offset = 0
        self.noisy_dtype: type[np.integer[Any]] = np.int64
        logits_of_noisy: Callable[[torch.Tensor], torch.Tensor] | None = None
        if logits_fn is None:
            ex = make_executor(net, executor)
            logits_fn = ex.logits
            offset = getattr(ex, "input_offset", None)
            if getattr(ex, "input_dtype", None) == torch.uint8:  # a oneDNN first layer: uint8 q
                self.noisy_dtype = np.uint8
                logits_of_noisy = ex.logits
            elif offset is not None:  # the int8 executor takes int8 inputs q − offset directly
                self.offset, self.noisy_dtype = offset, np.int8
                logits_of_noisy = ex.logits_offset  # type: ignore[attr-defined]
        self.logits_fn = logits_fn
        self.classify = classifier(  # type: ignore[method-assign,assignment]
            logits_of_noisy or (lambda q: self.logits_fn(q))
        )
        # compile (or load from numba's cache) the noise kernels now, not inside the first input's time
        self._classify_noisy(torch.full(net.input_shape, net.input_range[0]), 1, NoiseStream(0))

    def generator(self, seed: int, idx: int, stage: int) -> NoiseStream:
        return noise_stream(seed, idx, stage)

    def noisy(self, x: torch.Tensor, k: int, g: NoiseStream) -> torch.Tensor:
        """``clamp(x + δ) − offset`` (uint8 or int8 for the int8 executor, else int64 with offset
        0)."""
        from qcert.smoothing.kernels import noisy_rows

        lo, hi = self.net.input_range
        noisy = noisy_rows(
            self.noise, x.reshape(-1).numpy(), k, g, lo, hi, self.offset, self.noisy_dtype
        )
        return torch.from_numpy(noisy).view(k, *self.net.input_shape)

    def radius(self, p_lower: float) -> float:
        r = certified_radius(p_lower, self.noise, self.dim)
        return NOT_CERTIFIED if r < 0 else r / self.levels


class FloatSmoothing(_Smoothing):
    """Cohen et al.'s float smoothing: continuous Gaussian noise on the real input, clamped to the
    input range like the int path, the float twin network (:func:`qcert.quant.to_float`), radius
    ``σ Φ⁻¹(p_lower)``. The baseline; its guarantee
    is about the float network, not the integer one."""

    arith = "float"

    def __init__(self, net: QNetwork, sigma: float, batch: int = 1000) -> None:
        super().__init__(net, sigma, batch)
        self.model = to_float(net)
        self.scale = 2.0**-net.input_format.frac

    def noisy(self, x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
        lo, hi = self.net.input_range
        noise = torch.randn((k, *x.shape), generator=g) * self.sigma_levels
        # clamping to the input range is part of the base classifier (as on the int path): it is
        # post-processing of x + δ, so Cohen's guarantee is unchanged
        return (x.to(torch.float32).unsqueeze(0) + noise).clamp_(lo, hi) * self.scale

    @torch.no_grad()
    def classify(self, noisy: torch.Tensor) -> torch.Tensor:
        return self.model(noisy).argmax(dim=1)

    def radius(self, p_lower: float) -> float:
        from scipy.stats import norm

        return self.sigma * float(norm.ppf(p_lower)) if p_lower > 0.5 else NOT_CERTIFIED


def make_smoothing(
    net: QNetwork,
    sigma: float,
    arith: str = "int",
    batch: int = 1000,
    executor: str = "int8",
    **kw,
) -> IntegerSmoothing | FloatSmoothing:
    """The smoothed classifier for ``arith`` ``"int"`` (on ``executor``) or ``"float"``."""
    if arith == "int":
        return IntegerSmoothing(net, sigma, batch, executor=executor, **kw)
    if arith == "float":
        return FloatSmoothing(net, sigma, batch)
    raise SmoothingError(f"arith must be 'int' or 'float', got {arith!r}")
