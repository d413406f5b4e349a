"""Fuzzing the model file reader (issue 12): random changes to a valid ``.qnn`` file, to its
safetensors header and to its qcert JSON document give a correct load or a ModelFileError, never
another exception (and never a huge allocation)."""

from __future__ import annotations

import json
import struct

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mutations import byte_edits, mutate
from qnets import digits_mlp
from safetensors.numpy import save as st_save

from qcert.errors import ModelFileError
from qcert.quant import QNetwork
from qcert.quant.io import header_of, model_from_bytes, model_to_bytes, tensors_of

NET = digits_mlp(hidden=4)
RAW = model_to_bytes(NET)
HEADER = header_of(NET)
TENSORS = tensors_of(NET)
FUZZ = settings(max_examples=200, deadline=None)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def check(raw: bytes) -> None:
    """A correct load or a ModelFileError; a loaded network evaluates and saves to a file that
    loads as the same network."""
    try:
        net = model_from_bytes(raw, "fuzz.qnn")
    except ModelFileError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(net, QNetwork)
    again = model_from_bytes(model_to_bytes(net))
    assert header_of(again) == header_of(net)
    x = torch.full((1, *net.input_shape), net.input_range[0], dtype=torch.int64)
    assert torch.equal(net.integer_forward(x), again.integer_forward(x))


@FUZZ
@given(byte_edits(len(RAW), 5))
def test_byte_mutations(changes) -> None:
    check(mutate(RAW, changes))


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _replace(obj, path, value):
    if not path:
        return value
    obj = json.loads(json.dumps(obj))
    cur = obj
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return obj


HEADER_PATHS = list(_paths(HEADER))
TENSOR_NAMES = sorted(TENSORS)


@FUZZ
@given(st.sampled_from(HEADER_PATHS), json_values, st.booleans())
def test_header_value_mutations(path, value, drop) -> None:
    """Any value of the qcert document replaced by any JSON value (or removed)."""
    header = _replace(HEADER, path, value)
    if drop and path:
        header = json.loads(json.dumps(HEADER))
        cur = header
        for k in path[:-1]:
            cur = cur[k]
        del cur[path[-1]]
    check(st_save(TENSORS, metadata={"qcert": json.dumps(header)}))


@FUZZ
@given(
    st.sampled_from(TENSOR_NAMES),
    st.sampled_from(["dtype", "shape", "data_offsets", None]),
    json_values,
)
def test_safetensors_entry_mutations(name, field, value) -> None:
    n = int.from_bytes(RAW[:8], "little")
    st_header = json.loads(RAW[8 : 8 + n])
    if field is None:
        st_header[name] = value
    else:
        st_header[name][field] = value
    text = json.dumps(st_header).encode()
    check(struct.pack("<Q", len(text)) + text + RAW[8 + n :])


@FUZZ
@given(
    st.sampled_from(TENSOR_NAMES),
    st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                     np.uint64, np.float32, np.float16, np.bool_]),
    st.integers(-(2**63), 2**63 - 1),
)  # fmt: skip
def test_tensor_dtype_and_value_mutations(name, dtype, value) -> None:
    t = dict(TENSORS)
    a = t[name].astype(np.int64)
    a.flat[0] = value
    with np.errstate(all="ignore"):
        t[name] = a.astype(dtype)
    check(st_save(t, metadata={"qcert": json.dumps(HEADER)}))
