"""The ``.qnn`` model file: safetensors with integer tensors plus a JSON header (docs/model-format.md).

Loading never unpickles: the safetensors container is parsed by the ``safetensors`` library (a
length-prefixed JSON header and raw little-endian buffers) and every field is validated; each way a
file can be malformed raises one :class:`~qcert.errors.ModelFileError` that says what is wrong.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save as st_save

from qcert.errors import FormatError, ModelFileError
from qcert.quant.files import read_bytes, read_safetensors, write_atomic
from qcert.quant.format import FixedPointFormat, Rounding, smallest_int_dtype
from qcert.quant.layers import (
    QAvgPool2d,
    QConv2d,
    QFlatten,
    QGlobalSumPool,
    QLayer,
    QLinear,
    QMaxPool2d,
    QOffset,
    QRequant,
    QRescale,
)
from qcert.quant.network import QNetwork

FORMAT_NAME = "qcert.qnn"
#: the newest format version this qcert writes and reads. Version 2 added the layers ``rescale``,
#: ``offset``, ``maxpool2d`` and ``global_sumpool``; a network made only of version-1 layers is
#: still written as version 1, so older readers load it.
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
V1_LAYERS = ("linear", "conv2d", "requant", "flatten", "avgpool2d")
V2_LAYERS = ("rescale", "offset", "maxpool2d", "global_sumpool")
METADATA_KEY = "qcert"
INTEGER_DTYPES = (
    np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64
)  # fmt: skip
#: the rounding rule of a ``requant`` layer whose header names none (docs/semantics.md)
DEFAULT_ROUNDING = Rounding.HALF_UP


def header_of(net: QNetwork) -> dict[str, Any]:
    """The JSON header describing ``net`` (everything but the integer tensors)."""
    v1 = all(layer.kind in V1_LAYERS for layer in net.layers)
    return {
        "format": FORMAT_NAME,
        "version": 1 if v1 else FORMAT_VERSION,
        "input": {
            "shape": list(net.input_shape),
            "format": net.input_format.to_dict(),
            "range": list(net.input_range),
        },
        "layers": [layer.config() for layer in net.layers],
        "classes": list(net.classes),
        "meta": net.meta,
    }


def tensors_of(net: QNetwork) -> dict[str, np.ndarray]:
    """The integer tensors of ``net`` by file name (``layers.{i}.weight`` / ``layers.{i}.bias``),
    each in the narrowest signed integer dtype that holds its format."""
    out = {}
    for i, layer in enumerate(net.layers):
        if not isinstance(layer, QLinear | QConv2d):  # the only layers with tensors
            continue
        for name, t in layer.int_tensors().items():
            fmt = layer.weight_format if name == "weight" else layer.bias_format
            assert fmt is not None
            dt = smallest_int_dtype(fmt.qmin, fmt.qmax)
            out[f"layers.{i}.{name}"] = t.to(dt).contiguous().numpy()
    return out


def model_to_bytes(net: QNetwork) -> bytes:
    """The bytes of the ``.qnn`` file of ``net`` (see :func:`model_from_bytes`)."""
    header = header_of(net)
    return st_save(tensors_of(net), metadata={METADATA_KEY: json.dumps(header, sort_keys=True)})


def save_model(net: QNetwork, path: str | os.PathLike[str]) -> None:
    """Write ``net`` to a ``.qnn`` file (atomically: a partial file never replaces a good one)."""
    write_atomic(path, model_to_bytes(net))


def load_model(path: str | os.PathLike[str]) -> QNetwork:
    """Read a ``.qnn`` file. Raises :class:`ModelFileError` naming the problem for a malformed file."""
    return model_from_bytes(read_bytes(path, "model file"), name=os.fspath(path))


def _get(d: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if key not in d:
        raise ModelFileError(f"{where}: missing key '{key}'")
    v = d[key]
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise ModelFileError(f"{where}: '{key}' has the wrong type ({type(v).__name__})")
    return v


def _format(d: dict[str, Any], key: str, where: str) -> FixedPointFormat:
    try:
        return FixedPointFormat.from_dict(_get(d, key, where, dict))
    except FormatError as e:
        raise ModelFileError(f"{where}: {key}: {e}") from None


def _int_tensor(
    tensors: dict[str, np.ndarray],
    key: str,
    shape: tuple[int, ...],
    fmt: FixedPointFormat,
    where: str,
) -> torch.Tensor:
    if key not in tensors:
        raise ModelFileError(f"{where}: missing tensor '{key}'")
    a = tensors[key]
    if a.dtype.type not in INTEGER_DTYPES:
        raise ModelFileError(
            f"{where}: tensor '{key}' has dtype {a.dtype}, expected an integer type"
        )
    if tuple(a.shape) != shape:
        raise ModelFileError(
            f"{where}: tensor '{key}' has shape {tuple(a.shape)}, expected {shape}"
        )
    # the range is checked on the file's own dtype: a uint64 code above 2**63 must not wrap
    if a.size and (int(a.min()) < fmt.qmin or int(a.max()) > fmt.qmax):
        raise ModelFileError(
            f"{where}: tensor '{key}' has values in [{int(a.min())}, {int(a.max())}], "
            f"outside its format {fmt} [{fmt.qmin}, {fmt.qmax}]"
        )
    return torch.from_numpy(a.astype(np.int64))


def _pair_of(d: dict[str, Any], key: str, where: str) -> tuple[int, int]:
    v = _get(d, key, where, list)
    if len(v) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise ModelFileError(f"{where}: '{key}' must be a list of two integers, got {v!r}")
    return v[0], v[1]


def _int_list(d: dict[str, Any], key: str, where: str) -> list[int]:
    v = _get(d, key, where, list)
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise ModelFileError(f"{where}: '{key}' must be a list of integers")
    return v


def _layer(i: int, d: Any, tensors: dict[str, np.ndarray], version: int = FORMAT_VERSION) -> QLayer:
    where = f"layer {i}"
    if not isinstance(d, dict):
        raise ModelFileError(f"{where}: not a JSON object")
    kind = _get(d, "type", where, str)
    where = f"layer {i} ({kind})"
    if version < 2 and kind in V2_LAYERS:
        raise ModelFileError(f"{where}: this layer type needs format version 2, the file says 1")
    if kind in ("linear", "conv2d"):
        wf = _format(d, "weight_format", where)
        bf = None if d.get("bias_format") is None else _format(d, "bias_format", where)
        if kind == "linear":
            shape: tuple[int, ...] = (
                _get(d, "out_features", where, int),
                _get(d, "in_features", where, int),
            )
        else:
            kh, kw = _pair_of(d, "kernel_size", where)
            shape = (
                _get(d, "out_channels", where, int),
                _get(d, "in_channels", where, int),
                kh,
                kw,
            )
        w = _int_tensor(tensors, f"layers.{i}.weight", shape, wf, where)
        b = None if bf is None else _int_tensor(tensors, f"layers.{i}.bias", shape[:1], bf, where)
        if bf is None and f"layers.{i}.bias" in tensors:
            raise ModelFileError(f"{where}: tensor 'layers.{i}.bias' present but no bias_format")
        if kind == "linear":
            return QLinear.from_int(w, b, wf, bf)
        return QConv2d.from_int(
            w, b, wf, bf, _pair_of(d, "stride", where), _pair_of(d, "padding", where)
        )
    if kind == "requant":
        rounding = DEFAULT_ROUNDING if "rounding" not in d else _get(d, "rounding", where, str)
        return QRequant(_format(d, "format", where), Rounding.parse(rounding))
    if kind == "flatten":
        return QFlatten()
    if kind == "avgpool2d":
        return QAvgPool2d(_pair_of(d, "kernel_size", where), _pair_of(d, "stride", where))
    if kind == "maxpool2d":
        return QMaxPool2d(
            _pair_of(d, "kernel_size", where),
            _pair_of(d, "stride", where),
            _pair_of(d, "padding", where),
        )
    if kind == "global_sumpool":
        return QGlobalSumPool()
    if kind == "offset":
        return QOffset(_get(d, "zero_point", where, int))
    if kind == "rescale":
        fmt = _format(d, "format", where)
        zp = _get(d, "zero_point", where, int)
        mode = _get(d, "mode", where, str)
        if mode == "float32":
            scale = _get(d, "scale", where, list)
            return QRescale(fmt, zp, scale=scale)
        if mode == "fixed_point":
            m = _int_list(d, "multiplier", where)
            return QRescale(fmt, zp, multiplier=m, shift=_int_list(d, "shift", where))
        raise ModelFileError(f"{where}: mode must be float32 or fixed_point, got {mode!r}")
    raise ModelFileError(
        f"{where}: unknown layer type; expected linear, conv2d, requant, flatten, avgpool2d, "
        "maxpool2d, global_sumpool, offset or rescale"
    )


def network_from(header: dict[str, Any], tensors: dict[str, np.ndarray], name: str) -> QNetwork:
    """Build a :class:`QNetwork` from a parsed header and integer tensors, validating both."""
    if header.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{name}: header 'format' must be '{FORMAT_NAME}'")
    version = header.get("version")
    if isinstance(version, bool) or version not in READ_VERSIONS:
        raise ModelFileError(
            f"{name}: unsupported format version {version!r} (this qcert reads "
            f"{', '.join(map(str, READ_VERSIONS))})"
        )
    try:
        inp = _get(header, "input", name, dict)
        in_shape = _get(inp, "shape", f"{name}: input", list)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in in_shape):
            raise ModelFileError(f"{name}: input shape must be positive integers, got {in_shape}")
        in_fmt = _format(inp, "format", f"{name}: input")
        in_range = _pair_of(inp, "range", f"{name}: input")
        layer_dicts = _get(header, "layers", name, list)
        layers = [_layer(i, d, tensors, version) for i, d in enumerate(layer_dicts)]
        known = {
            f"layers.{i}.{k}"
            for i, layer in enumerate(layers)
            if isinstance(layer, QLinear | QConv2d)  # the only layers with tensors
            for k in ("weight", "bias")
        }
        extra = sorted(set(tensors) - known)
        if extra:
            raise ModelFileError(f"{name}: unexpected tensors {extra}")
        classes = header.get("classes")
        if classes is not None and (
            not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)
        ):
            raise ModelFileError(f"{name}: 'classes' must be a list of strings")
        meta = header.get("meta") or {}
        if not isinstance(meta, dict):
            raise ModelFileError(f"{name}: 'meta' must be a JSON object")
        return QNetwork(layers, in_shape, in_fmt, in_range, classes, meta)
    except FormatError as e:
        raise ModelFileError(f"{name}: {e}") from None


def model_from_bytes(raw: bytes, name: str = "<bytes>") -> QNetwork:
    """Parse the bytes of a ``.qnn`` file."""
    header, tensors = read_safetensors(raw, name, METADATA_KEY, "qcert model file")
    return network_from(header, tensors, name)
