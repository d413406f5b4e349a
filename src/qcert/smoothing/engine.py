"""Exact integer engines for the smoothed base classifier.

``int8``: :class:`qcert.quant.int8.Int8Executor` (torch's int8 matrix products with int32
accumulation where a static bound proves them exact, the reference code elsewhere; checked against
the reference executor when built). ``torch``: the reference executor (``QNetwork.integer_forward``).
``onnx``: the model's integer-only
ONNX graph (MatMulInteger / ConvInteger with integer requantization) in onnxruntime, which uses int8
kernels. Both give the same int64 logits; the onnx engine checks that on probe inputs (the corners of
the input range, extreme and uniform inputs) before it is used, and refuses to run otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from qcert.errors import QcertError
from qcert.quant import QNetwork, argmax_first

ENGINES = ("int8", "torch", "onnx")


def integer_engine(
    net: QNetwork, engine: str = "onnx", probes: int = 256, threads: int | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function mapping integer inputs (N×input shape, already inside the input range) to the
    exact int64 logits of ``net``."""
    if engine == "torch":
        return net.integer_forward
    if engine == "int8":
        from qcert.quant.int8 import Int8Executor

        return Int8Executor(net, probes).logits
    if engine != "onnx":
        raise QcertError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    from qcert.export import onnx_model, random_inputs, session

    sess = session(onnx_model(net, "integer"), threads=threads)
    inp = sess.get_inputs()[0]
    dtype = np.uint8 if inp.type == "tensor(uint8)" else np.int64

    def logits(q: torch.Tensor) -> torch.Tensor:
        # callers pass values inside the input range, which the input dtype holds
        arr = q.numpy().astype(dtype, copy=False)
        return torch.from_numpy(sess.run(None, {inp.name: arr})[0])

    x = random_inputs(net, probes)
    if not torch.equal(logits(x), net.integer_forward(x)):
        raise QcertError("the ONNX integer graph disagrees with the reference executor")
    return logits


def integer_classifier(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Classes (ties to the smallest index) from an exact logits function."""

    def classify(q: torch.Tensor) -> torch.Tensor:
        z = logits_fn(q)
        # numpy's argmax returns the first maximum: the tie rule, and faster than torch's masks
        return torch.from_numpy(np.argmax(z.numpy(), axis=1)) if z.dim() == 2 else argmax_first(z)

    return classify
