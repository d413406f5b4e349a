"""Small tools to write ONNX graphs node by node and to compare two graphs structurally.

:class:`GraphBuilder` emits nodes and initializers with unique names. :func:`match_graph` decides
whether an actual graph computes the same as an expected one by matching them as data-flow graphs
from their inputs: same operator, same attributes, same constant values, same wiring. Tensor and
node names are ignored; constants may be initializers or ``Constant`` nodes. Expected initializers
listed as *wildcards* match any constant of the same dtype and shape, and the match returns their
values (the importer reads weights this way).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcert.errors import GraphMismatch

# numpy dtype of each integer ONNX element type used here
NP_OF: dict[int, Any] = {
    TensorProto.UINT8: np.uint8,
    TensorProto.INT8: np.int8,
    TensorProto.UINT16: np.uint16,
    TensorProto.INT16: np.int16,
    TensorProto.INT32: np.int32,
    TensorProto.INT64: np.int64,
    TensorProto.FLOAT: np.float32,
}


def conv_attributes(layer: Any) -> dict[str, Any]:
    """The ONNX attributes of a QConv2d's convolution (Conv, ConvInteger): kernel, strides,
    symmetric zero padding, no dilation, one group."""
    (ph, pw), (kh, kw) = layer.padding, layer.kernel_size
    return {
        "kernel_shape": [kh, kw],
        "strides": list(layer.stride),
        "pads": [ph, pw, ph, pw],
        "dilations": [1, 1],
        "group": 1,
    }


def int_dtype_for(lo: int, hi: int) -> int:
    """The narrowest ONNX integer element type (int8, int16, int32, int64) holding ``[lo, hi]``."""
    for t, bits in ((TensorProto.INT8, 8), (TensorProto.INT16, 16), (TensorProto.INT32, 32)):
        if -(1 << (bits - 1)) <= lo and hi < (1 << (bits - 1)):
            return t
    return TensorProto.INT64


class GraphBuilder:
    """Collects nodes and initializers of one graph; every name it hands out is unique."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, TensorProto] = {}
        self._used: set[str] = set()

    def fresh(self, hint: str) -> str:
        name, k = hint, 1
        while name in self._used:
            k += 1
            name = f"{hint}_{k}"
        self._used.add(name)
        return name

    def reserve(self, name: str) -> None:
        """Mark a name (a graph input) as taken."""
        self._used.add(name)

    def const(self, value: np.ndarray | int | float, hint: str, dtype: int | None = None) -> str:
        """Add an initializer; a Python number becomes a scalar of ``dtype`` (default int64)."""
        name = self.fresh(hint)
        if isinstance(value, np.ndarray):
            t = numpy_helper.from_array(np.ascontiguousarray(value), name)
        else:
            dt = TensorProto.INT64 if dtype is None else dtype
            if dt in NP_OF:
                t = numpy_helper.from_array(np.array(value, dtype=NP_OF[dt]), name)
            else:  # 4-bit and other types numpy does not hold natively
                t = helper.make_tensor(name, dt, [], [value])
        self.inits[name] = t
        return name

    def node(self, op: str, inputs: Sequence[str], hint: str, **attrs: Any) -> str:
        """Add a single-output node and return its output's name."""
        out = self.fresh(hint)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def rename_output(self, old: str, new: str) -> None:
        """Give the tensor ``old`` (produced by the last node that writes it) the name ``new``."""
        for n in self.nodes:
            for i, o in enumerate(n.output):
                if o == old:
                    n.output[i] = new
            for i, x in enumerate(n.input):
                if x == old:
                    n.input[i] = new
        self._used.add(new)


# ---------------------------------------------------------------------------------- matching
def _attr_value(a: onnx.AttributeProto) -> Any:
    v = helper.get_attribute_value(a)
    if isinstance(v, TensorProto):
        return ("tensor", v.data_type, tuple(v.dims), numpy_helper.to_array(v).tobytes())
    if isinstance(v, list | tuple):
        return tuple(v)
    return v


def tensor_key(t: TensorProto) -> tuple[int, tuple[int, ...]]:
    return t.data_type, tuple(int(d) for d in t.dims)


def tensor_values(t: TensorProto) -> np.ndarray:
    """Values of an initializer; 4-bit types come back as int64."""
    a = numpy_helper.to_array(t)
    if t.data_type in (TensorProto.INT4, TensorProto.UINT4):
        a = a.astype(np.int64)
    return a


def tensors_equal(a: TensorProto, b: TensorProto) -> bool:
    if tensor_key(a) != tensor_key(b):
        return False
    return bool(np.array_equal(tensor_values(a), tensor_values(b)))


@dataclass
class GraphIndex:
    """Consumers and constants (initializers and ``Constant`` node outputs) of a graph."""

    nodes: list[onnx.NodeProto]
    consts: dict[str, TensorProto]
    consumers: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, nodes: Iterable[onnx.NodeProto], inits: Iterable[TensorProto]) -> GraphIndex:
        consts = {t.name: t for t in inits}
        real: list[onnx.NodeProto] = []
        for n in nodes:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.output) == 1:
                attrs = {a.name: a for a in n.attribute}
                if "value" in attrs and attrs["value"].type == onnx.AttributeProto.TENSOR:
                    consts[n.output[0]] = attrs["value"].t
                    continue
            real.append(n)
        idx = cls(real, consts)
        for i, n in enumerate(real):
            for x in n.input:
                if x:
                    idx.consumers.setdefault(x, []).append(i)
        return idx

    @classmethod
    def of_graph(cls, g: onnx.GraphProto) -> GraphIndex:
        return cls.of(g.node, g.initializer)


@dataclass
class Match:
    """Result of :func:`match_graph`: expected tensor name → actual tensor name, wildcard values,
    and the indices of the actual nodes that were matched."""

    names: dict[str, str]
    wildcards: dict[str, np.ndarray]
    used: set[int]


@dataclass
class _State:
    names: dict[str, str]
    bound: dict[str, str]
    taken: set[int]

    def copy(self) -> _State:
        return _State(dict(self.names), dict(self.bound), set(self.taken))


def _describe(n: onnx.NodeProto) -> str:
    return f"{n.op_type} node '{n.name or n.output[0]}'"


def match_graph(
    expected: GraphIndex,
    actual: GraphIndex,
    inputs: dict[str, str],
    wildcards: Iterable[str] = (),
    used: set[int] | None = None,
) -> Match:
    """Match every expected node to one actual node computing the same thing.

    ``inputs`` maps expected input tensors to actual ones. Nodes are matched in the expected order,
    each among the consumers of an already matched tensor; nodes that only read constants (a
    ``Cast`` of weights) are matched through the node that consumes them. Raises
    :class:`GraphMismatch` naming the first expected node with no counterpart. Actual nodes in
    ``used`` are not matched again.
    """
    wild = set(wildcards)
    e_prod = {o: n for n in expected.nodes for o in n.output}
    a_prod = {o: i for i, n in enumerate(actual.nodes) for o in n.output}
    deferred: set[str] = set()
    st = _State(dict(inputs), {}, set(used or ()))

    def try_node(e: onnx.NodeProto, ai: int, s: _State) -> bool:
        a = actual.nodes[ai]
        if ai in s.taken or (a.op_type, a.domain or "") != (e.op_type, e.domain or ""):
            return False
        if len(a.input) != len(e.input) or len(a.output) != len(e.output):
            return False
        if {t.name: _attr_value(t) for t in a.attribute} != {
            t.name: _attr_value(t) for t in e.attribute
        }:
            return False
        s.taken.add(ai)
        for x, ax in zip(e.input, a.input):
            if not x:
                ok = ax == ""
            elif x in wild:
                ok = ax in actual.consts and tensor_key(actual.consts[ax]) == tensor_key(
                    expected.consts[x]
                )
                ok = ok and s.bound.setdefault(x, ax) == ax
            elif x in expected.consts:
                ok = ax in actual.consts and tensors_equal(actual.consts[ax], expected.consts[x])
            elif x in s.names:
                ok = ax == s.names[x]
            elif x in deferred:
                ok = ax in a_prod and try_node(e_prod[x], a_prod[ax], s)
            else:
                raise GraphMismatch(f"internal: expected graph uses {x!r} before defining it")
            if not ok:
                return False
        for eo, ao in zip(e.output, a.output):
            s.names[eo] = ao
        return True

    for e in expected.nodes:
        tensors = [x for x in e.input if x and x not in wild and x not in expected.consts]
        mapped = [x for x in tensors if x in st.names]
        if not mapped:
            if all(x in deferred for x in tensors):
                deferred.update(e.output)
                continue
            raise GraphMismatch(f"internal: expected {_describe(e)} reads an undefined tensor")
        anchor = st.names[mapped[0]]
        for ci in actual.consumers.get(anchor, []):
            trial = st.copy()
            if try_node(e, ci, trial):
                st = trial
                break
        else:
            raise GraphMismatch(
                f"no node matching the expected {_describe(e)} after tensor '{anchor}'"
            )
    values = {v: tensor_values(actual.consts[ax]) for v, ax in st.bound.items()}
    return Match(st.names, values, st.taken - set(used or ()))
