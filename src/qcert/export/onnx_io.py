"""Reading an ONNX file: load and check it, its ``qcert`` metadata, its one input and output."""

from __future__ import annotations

import os
from typing import Any

import onnx

from qcert.errors import ModelFileError
from qcert.export.exporter import METADATA_KEY, ONNX_FORMAT_NAME, ONNX_FORMAT_VERSION
from qcert.quant.files import load_json, read_bytes

__all__ = ["graph_io", "input_shape", "load_onnx", "read_metadata"]


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read and check an ONNX file; every problem is a :class:`ModelFileError`."""
    path = os.fspath(path)
    raw = read_bytes(path, "ONNX file")
    try:
        model = onnx.load_model_from_string(raw)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ModelFileError(f"{path}: not an ONNX model ({type(e).__name__}: {e})") from None
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid"
        raise ModelFileError(f"{path}: invalid ONNX model: {first}") from None
    return model


def read_metadata(model: onnx.ModelProto, name: str) -> dict[str, Any] | None:
    """The ``qcert`` metadata entry (format, version, flavour, model header), or None."""
    raw = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    if raw is None:
        return None
    meta = load_json(raw, f"{name}: the '{METADATA_KEY}' metadata")
    if not isinstance(meta, dict) or meta.get("format") != ONNX_FORMAT_NAME:
        raise ModelFileError(f"{name}: the '{METADATA_KEY}' metadata is not a qcert ONNX header")
    if meta.get("version") != ONNX_FORMAT_VERSION:
        raise ModelFileError(
            f"{name}: qcert ONNX metadata version {meta.get('version')!r} "
            f"(this qcert reads {ONNX_FORMAT_VERSION})"
        )
    if not isinstance(meta.get("model"), dict):
        raise ModelFileError(f"{name}: the qcert metadata has no 'model' header")
    return meta


def graph_io(g: onnx.GraphProto, name: str) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    """The graph's one input (initializers aside) and one output."""
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1 or len(g.output) != 1:
        raise ModelFileError(
            f"{name}: qcert imports graphs with one input and one output, this one has "
            f"{len(inputs)} and {len(g.output)}"
        )
    return inputs[0], g.output[0]


def input_shape(vi: onnx.ValueInfoProto, name: str) -> tuple[int, tuple[int, ...]]:
    """Element type and static shape (without the batch) of an N×... graph input."""
    t = vi.type.tensor_type
    dims = list(t.shape.dim)
    if len(dims) < 2:
        raise ModelFileError(f"{name}: input '{vi.name}' must be N×..., got rank {len(dims)}")
    shape = []
    for d in dims[1:]:
        if not d.HasField("dim_value") or d.dim_value < 1:
            raise ModelFileError(f"{name}: input '{vi.name}' needs a static shape after the batch")
        shape.append(int(d.dim_value))
    return t.elem_type, tuple(shape)
