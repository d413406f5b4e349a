"""Exact QA-IBP bounds of a specification's rows over batches of integer input boxes.

The same interval propagation as :meth:`QNetwork.int_bounds` (each monotone step applied to both
bounds), with the last linear layer fused with the specification matrix (``A z = (A W) h + A b``, as
``qcert.bounds.margin_lower_bounds`` fuses the margin matrix). Two arithmetic paths
(``arith_path``) compute the same integers:

* ``int64``: the network's own ``int_bounds`` and int64 products (the reference);
* ``float``: centre/radius products ``W (l+u)`` and ``|W| (u-l)`` (convolutions as direct sums
  of products: NNPACK's Winograd/FFT switched off), each layer in float32 where a static bound over the whole input range proves
  every intermediate value (products and partial sums, in any order) is an integer below
  ``2**24``, else in float64 where it is below ``2**52``; then every sum and product is exact.
  Tests check both arithmetic paths agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from qcert.errors import InputError
from qcert.quant.format import round_float
from qcert.quant.layers import QAvgPool2d, QConv2d, QFlatten, QLinear, QRequant
from qcert.quant.network import QNetwork
from qcert.verify.spec import OutputSpec

EXACT = float(1 << 52)
F32_EXACT = float(1 << 24)
INT64_SAFE = float(1 << 61)

Step = Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]]


class NetBounds:
    """The part of the bound computation that depends on the network only (build once per
    network, reuse for every query): the layers before the fused last linear layer, their
    magnitudes over the whole input range, and the float64 steps where those prove exactness.

    Args:
        net: the network (its weights must not change while this object is used).
        arith_path: ``"auto"`` (float64 where proven exact, else int64) or ``"int64"``.
    """

    def __init__(self, net: QNetwork, arith_path: str = "auto") -> None:
        if arith_path not in ("auto", "int64"):
            raise InputError(f"arith_path must be 'auto' or 'int64', got {arith_path!r}")
        self.net = net
        layers = list(net.layers)
        self.fused = isinstance(layers[-1], QLinear)
        self.prefix = layers[:-1] if self.fused else layers
        self.last_w: torch.Tensor | None = None
        self.last_b: torch.Tensor | None = None
        if self.fused:
            last = layers[-1]
            assert isinstance(last, QLinear)
            self.last_w, self.last_b = last.int_weight(), last.int_bias_acc()
        # magnitudes over the whole input range (a superset of every box's bounds)
        lo_v, hi_v = net.input_range
        full_lo = torch.full((1, *net.input_shape), lo_v, dtype=torch.int64)
        full_hi = torch.full((1, *net.input_shape), hi_v, dtype=torch.int64)
        mags = [torch.maximum(full_lo.abs(), full_hi.abs()).to(torch.float64)]
        for (l, u), _ in zip(net.int_bounds(full_lo, full_hi), self.prefix):
            mags.append(torch.maximum(l.abs(), u.abs()).to(torch.float64))
        self.h_mag = mags[len(self.prefix)].reshape(-1)
        self.steps = self._float_steps(mags) if arith_path == "auto" else None

    def _float_steps(self, mags: list[torch.Tensor]) -> list[Step] | None:
        """Float steps, each in float32 where its magnitudes stay below ``2**23`` (exact there),
        else float64 (below ``2**52``); None when some layer is not provably exact in float64."""
        f32_ok = float32_exact_mode()
        steps: list[Step] = []
        self.dtypes: list[torch.dtype | None] = []
        for layer, m in zip(self.prefix, mags):
            if isinstance(layer, QLinear | QConv2d):
                wi = layer.int_weight()
                b = layer.int_bias_acc()
                op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                if isinstance(layer, QLinear):
                    op = _linear_op
                    bshape: tuple[int, ...] = (1, -1)
                else:
                    op = _conv_op(layer, direct=True)
                    bshape = (1, -1, 1, 1)
                peak = op(2 * m, wi.abs().to(torch.float64))
                if b is not None:
                    peak = peak + 2 * b.abs().to(torch.float64).view(bshape)
                top = 2 * float(peak.max())  # bounds |s ± r| and every partial sum
                dtype = torch.float32 if f32_ok and top < F32_EXACT else torch.float64
                if top >= EXACT:
                    return None
                if isinstance(layer, QConv2d) and dtype == torch.float32:
                    # float32 convolutions as an explicit im2col product: exact by construction,
                    # whichever algorithm a convolution backend would pick
                    op = _conv_op(layer, direct=False)
                w = wi.to(dtype)
                b2 = None if b is None else (2 * b).to(dtype).view(bshape)
                steps.append(_affine_step(op, w, w.abs(), b2, dtype))
                self.dtypes.append(dtype)
            elif isinstance(layer, QRequant):
                assert layer.in_frac is not None
                shift = layer.in_frac - layer.format.frac
                # |l · 2**-shift| < 2**22 (2**51) and shift <= 22 (50): l·2**-shift and
                # l·2**-shift + 1/2 are exact in float32 (float64), so is the rounding
                top = float(m.max()) * max(1.0, 2.0**-shift)
                if top < F32_EXACT / 4 and shift <= 22:
                    dtype = torch.float32
                elif top < EXACT / 2 and shift <= 50:
                    dtype = torch.float64
                else:
                    return None
                steps.append(_requant_step(shift, layer, dtype))
                self.dtypes.append(dtype)
            elif isinstance(layer, QFlatten):
                steps.append(lambda l, u: (l.flatten(1), None if u is None else u.flatten(1)))
                self.dtypes.append(None)
            elif isinstance(layer, QAvgPool2d):
                top = float(m.max()) * layer.kernel_size[0] * layer.kernel_size[1]
                if top >= EXACT:
                    return None
                dtype = torch.float32 if top < F32_EXACT else torch.float64
                steps.append(_pool_step(layer, dtype))
                self.dtypes.append(dtype)
            else:
                return None
        return steps

    def prefix_bounds(
        self, lo: torch.Tensor, hi: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact bounds (flat, float64 or int64) of the input of the fused last layer."""
        shape = (-1, *self.net.input_shape)
        lo, hi = lo.reshape(shape), hi.reshape(shape)
        if self.steps is not None:
            l: torch.Tensor = lo.to(torch.float64)
            u: torch.Tensor | None = hi.to(torch.float64)
            for step in self.steps:
                l, u = step(l, u)
            assert u is not None
            return l.flatten(1).to(torch.float64), u.flatten(1).to(torch.float64)
        if self.prefix:
            l, u = self.net.int_bounds(lo, hi, upto=len(self.prefix))[-1]
        else:
            l, u = lo, hi
        return l.flatten(1), u.flatten(1)

    def prefix_values(self, x: torch.Tensor) -> torch.Tensor:
        """Exact values (flat, float64 or int64) of the input of the fused last layer."""
        x = x.reshape(-1, *self.net.input_shape)
        if self.steps is not None:
            v: torch.Tensor = x.to(torch.float64)
            for step in self.steps:
                v, _ = step(v, None)
            return v.flatten(1).to(torch.float64)
        h = x
        for layer in self.prefix:
            h = layer.integer(h)
        return h.flatten(1)


class SpecBounds:
    """Upper bounds and exact values of a specification's rows ``A_r · z`` over integer boxes
    and points (int64 results).

    Args:
        net: the network, or a prebuilt :class:`NetBounds` of it.
        spec: the output specification (rows ``A``).
        arith_path: ``"auto"`` or ``"int64"`` (ignored when ``net`` is a :class:`NetBounds`).
    """

    def __init__(
        self, net: QNetwork | NetBounds, spec: OutputSpec, arith_path: str = "auto"
    ) -> None:
        nb = net if isinstance(net, NetBounds) else NetBounds(net, arith_path)
        if spec.num_classes != nb.net.num_classes:
            raise InputError(
                f"the specification is over {spec.num_classes} outputs, the network has "
                f"{nb.net.num_classes}"
            )
        self.nb, self.net, self.spec = nb, nb.net, spec
        a = spec.A
        if nb.fused:
            assert nb.last_w is not None
            self.M = a @ nb.last_w  # R×D, exact int64 (|A| <= 2**40, |W| <= 2**15, K small)
            b = nb.last_b
            self.c = a @ b if b is not None else torch.zeros(a.shape[0], dtype=torch.int64)
        else:
            self.M = a
            self.c = torch.zeros(a.shape[0], dtype=torch.int64)
        spec_mag = float(
            (self.M.abs().to(torch.float64) @ (2 * nb.h_mag)).max() + 2 * float(self.c.abs().max())
        )
        if spec_mag >= INT64_SAFE:
            raise InputError(
                "the specification's coefficients are too large: its bounds could overflow int64"
            )
        self.float64 = nb.steps is not None and spec_mag < EXACT
        self.arith_path = "float64" if self.float64 else "int64"
        self.M64 = self.M.to(torch.float64)
        self.Mabs64 = self.M64.abs()
        self.Mpos, self.Mneg = self.M.clamp(min=0), self.M.clamp(max=0)

    @torch.no_grad()
    def values(self, x: torch.Tensor) -> torch.Tensor:
        """Exact values (int64 N×R) of every spec row ``A_r · z`` at the integer points ``x``
        (int64, N×input_shape or flattened, already validated)."""
        h = self.nb.prefix_values(x)
        if self.float64:
            return (h @ self.M64.t()).to(torch.int64) + self.c
        return h.to(torch.int64) @ self.M.t() + self.c

    @torch.no_grad()
    def upper(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Exact upper bounds (int64 B×R) of every spec row over the integer boxes ``[lo, hi]``
        (int64, B×input_shape or flattened, already validated)."""
        l, u = self.nb.prefix_bounds(lo, hi)
        if self.float64:
            ub = ((u + l) @ self.M64.t() + (u - l) @ self.Mabs64.t()) * 0.5
            return ub.to(torch.int64) + self.c
        l, u = l.to(torch.int64), u.to(torch.int64)
        return u @ self.Mpos.t() + l @ self.Mneg.t() + self.c


def _linear_op(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x @ w.t()


def _conv_op(conv: QConv2d, direct: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The convolution as a plain sum of products per output (no Winograd/FFT transform), so
    integer operands below the exactness limits give exact results in any summation order.

    ``direct=True``: ``F.conv2d`` with NNPACK (Winograd/FFT) switched off, which leaves oneDNN's
    direct algorithm (the one PyTorch requests) or the im2col GEMM; ``direct=False``: an explicit
    im2col product (slower, no backend choice involved)."""
    (kh, kw), stride, pad = conv.kernel_size, conv.stride, conv.padding

    def unfold(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        n, _, h, wd = x.shape
        oh = (h + 2 * pad[0] - kh) // stride[0] + 1
        ow = (wd + 2 * pad[1] - kw) // stride[1] + 1
        cols = F.unfold(x, (kh, kw), padding=pad, stride=stride)  # N × (C·kh·kw) × L
        return (w.reshape(w.shape[0], -1) @ cols).view(n, w.shape[0], oh, ow)

    def conv2d(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        with torch.backends.nnpack.flags(enabled=False):
            return F.conv2d(x, w, None, stride, pad)

    return conv2d if direct else unfold


def float32_exact_mode() -> bool:
    """True when PyTorch computes float32 products in full float32 (no TF32/bf16 shortcuts)."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    mk = torch.backends.mkldnn
    for obj in (torch.backends, mk, getattr(mk, "conv", None), getattr(mk, "matmul", None)):
        if obj is not None and getattr(obj, "fp32_precision", "none") not in ("none", "ieee"):
            return False
    return True


def _affine_step(
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    w: torch.Tensor,
    wabs: torch.Tensor,
    b2: torch.Tensor | None,
    dtype: torch.dtype,
) -> Step:
    b1 = None if b2 is None else b2 * 0.5

    def step(l: torch.Tensor, u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        l = l.to(dtype)
        if u is None:  # a point: the exact image
            v = op(l, w)
            return (v if b1 is None else v + b1), None
        u = u.to(dtype)
        s = op(u + l, w)  # 2 × centre image
        if b2 is not None:
            s = s + b2
        r = op(u - l, wabs)  # 2 × radius image
        return (s - r) * 0.5, (s + r) * 0.5

    return step


def _pool_step(layer: QAvgPool2d, dtype: torch.dtype) -> Step:
    def step(l: torch.Tensor, u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        lo = layer.integer(l.to(dtype))
        return lo, None if u is None else layer.integer(u.to(dtype))

    return step


def _requant_step(shift: int, layer: QRequant, dtype: torch.dtype) -> Step:
    scale = 2.0**-shift
    qmin, qmax, rounding = layer.format.qmin, layer.format.qmax, layer.rounding

    def step(l: torch.Tensor, u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        lo = round_float(l.to(dtype) * scale, rounding).clamp(qmin, qmax)
        if u is None:
            return lo, None
        return lo, round_float(u.to(dtype) * scale, rounding).clamp(qmin, qmax)

    return step
