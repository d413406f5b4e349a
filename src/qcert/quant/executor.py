"""Executors: what runs a network on integer inputs and returns its exact int64 logits, chosen in
one place.

Every executor returns the logits of the reference executor (:meth:`QNetwork.integer_forward`)
bit for bit; the faster ones are compared with it on probe inputs (:func:`random_inputs`: the
corners of the input range, extreme and uniform inputs) when built, and refuse to run otherwise.

==========  ====================================================================================
name        executor
==========  ====================================================================================
``torch``   :class:`ReferenceExecutor`: the reference executor itself
``int8``    :class:`qcert.quant.int8.Int8Executor`: torch's int8 products with int32 accumulation
            where a static bound proves them exact, the reference code elsewhere
``onnx``    ``qcert.export.OnnxExecutor``: the model's integer-only ONNX graph in onnxruntime
==========  ====================================================================================

``quant`` imports nothing above it, and the ONNX graph is built by ``qcert.export``; so this module
keeps a registry of builders by name: ``torch`` and ``int8`` are registered here, ``onnx`` by
``qcert.export`` when it is imported (callers that offer the onnx executor import it).
:func:`make_executor` is the one place that turns a name into an executor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from qcert.errors import QcertError
from qcert.quant.inputs import random_inputs
from qcert.quant.network import QNetwork, argmax_first

__all__ = [
    "EXECUTORS",
    "Executor",
    "ReferenceExecutor",
    "check_executor",
    "classifier",
    "make_executor",
    "register_executor",
]

#: The executor names, in the order the CLI offers them (``--engine``).
EXECUTORS = ("int8", "torch", "onnx")


class Executor(Protocol):
    """Exact int64 logits (N×K) of integer inputs ``q`` (N×input shape, inside the input range:
    callers validate, executors do not)."""

    def logits(self, q: torch.Tensor) -> torch.Tensor: ...


#: A builder: ``(net, probes=…, threads=…) -> Executor``.
Builder = Callable[..., Executor]
_BUILDERS: dict[str, Builder] = {}


def register_executor(name: str, builder: Builder) -> None:
    """Make ``make_executor(net, name)`` call ``builder(net, probes=…, threads=…)``."""
    _BUILDERS[name] = builder


class ReferenceExecutor:
    """The reference executor (:meth:`QNetwork.integer_forward`) as an :class:`Executor`."""

    def __init__(self, net: QNetwork, probes: int = 0, threads: int | None = None) -> None:
        self.net = net

    def logits(self, q: torch.Tensor) -> torch.Tensor:
        return self.net.integer_forward(q)


def _int8(net: QNetwork, probes: int = 256, threads: int | None = None) -> Executor:
    from qcert.quant.int8 import Int8Executor  # numba compiles on first import: only when asked

    return Int8Executor(net, probes)


register_executor("torch", ReferenceExecutor)
register_executor("int8", _int8)


def make_executor(
    net: QNetwork, name: str = "int8", probes: int = 256, threads: int | None = None
) -> Executor:
    """The executor ``name`` of ``net`` (see the table above), checked on ``probes`` inputs.
    ``threads`` bounds onnxruntime's intra-op threads (the others ignore it)."""
    builder = _BUILDERS.get(name)
    if builder is None:
        known = ", ".join(n for n in EXECUTORS if n in _BUILDERS)
        hint = " (import qcert.export to register it)" if name in EXECUTORS else ""
        raise QcertError(f"unknown executor {name!r}{hint}; expected one of {known}")
    return builder(net, probes=probes, threads=threads)


def check_executor(executor: Executor, net: QNetwork, probes: int, what: str) -> None:
    """Raise :class:`QcertError` unless ``executor`` returns the reference executor's logits on
    ``probes`` probe inputs (:func:`random_inputs`)."""
    x = random_inputs(net, probes)
    if not torch.equal(executor.logits(x), net.integer_forward(x)):
        raise QcertError(f"{what} disagrees with the reference executor")


def classifier(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Classes (ties to the smallest index) from an exact logits function."""

    def classify(q: torch.Tensor) -> torch.Tensor:
        z = logits_fn(q)
        # numpy's argmax returns the first maximum: the tie rule, and faster than torch's masks
        return torch.from_numpy(np.argmax(z.numpy(), axis=1)) if z.dim() == 2 else argmax_first(z)

    return classify
