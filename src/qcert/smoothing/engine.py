"""Exact integer engines for the smoothed base classifier.

``torch``: the reference executor (``QNetwork.integer_forward``). ``onnx``: the model's integer-only
ONNX graph (MatMulInteger / ConvInteger with integer requantization) in onnxruntime, which uses int8
kernels. Both return the same int64 logits; the onnx engine checks that on probe inputs (the corners of
the input range, extreme and uniform inputs) before it is used, and refuses to run otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from qcert.errors import QcertError
from qcert.quant import QNetwork

ENGINES = ("onnx", "torch")


def integer_engine(
    net: QNetwork, engine: str = "onnx", probes: int = 256, threads: int | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function mapping int64 inputs (N×input shape) to the exact int64 logits of ``net``."""
    if engine == "torch":
        return net.integer_forward
    if engine != "onnx":
        raise QcertError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    from qcert.export import onnx_logits, onnx_model, random_inputs, session

    sess = session(onnx_model(net, "integer"), threads=threads)

    def logits(q: torch.Tensor) -> torch.Tensor:
        return onnx_logits(sess, q, batch_size=max(1, q.shape[0]))

    x = random_inputs(net, probes)
    if not torch.equal(logits(x), net.integer_forward(x)):
        raise QcertError("the ONNX integer graph disagrees with the reference executor")
    return logits
