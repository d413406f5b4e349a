"""A float model (:class:`FloatModel`), its input scale, and its file ``float.safetensors``.

A float model is an ``nn.Sequential`` of ``Linear``, ``Conv2d`` (groups 1, dilation 1, zero
padding), ``ReLU`` and ``Flatten`` (Dropout and Identity are skipped) applied to
``u = x_int * input_scale``. The file is a safetensors file: float32 tensors ``layers.{i}.weight``
/ ``layers.{i}.bias`` plus one JSON document under the metadata key ``"qcert_float"`` that
describes the architecture (docs/layerwise.md). Loading never unpickles anything; every malformed
file raises :class:`~qcert.errors.ModelFileError` naming the problem.

Input scales (one convention, docs/semantics.md "Input scales"):

* :data:`FLOAT_INPUT_SCALE` ``= 2**-8 = 1/256``: what qcert's own float models see (the ``float``,
  ``float-ibp`` and ``pgd`` training methods, the float model file's default, layer-wise
  quantization). It is the real value of a QNetwork's default input (uint8 with 8 fractional
  bits), so :func:`qcert.quant.from_float` with this scale folds nothing into the first layer.
* :data:`UNIT_INPUT_SCALE` ``= 1/255``: pixels scaled to ``[0, 1]`` by ``x / 255``, the PyTorch
  (torchvision ``ToTensor``) convention: :func:`qcert.quant.from_float`'s default, for float
  models trained elsewhere. Smoothing's σ and L2 radii are in the same ``[0, 1]`` units.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save as st_save
from torch import nn

from qcert.errors import FormatError, ModelFileError
from qcert.quant.files import read_bytes, read_safetensors, write_atomic
from qcert.quant.floatmodel.walker import plan
from qcert.quant.network import DEFAULT_INPUT_FORMAT

__all__ = [
    "FLOAT_INPUT_SCALE",
    "UNIT_INPUT_SCALE",
    "FloatModel",
    "describe",
    "float_model_from_bytes",
    "load_float",
    "save_float",
]

FORMAT_NAME = "qcert.float"
FORMAT_VERSION = 1
METADATA_KEY = "qcert_float"

#: qcert's float models see ``x_int / 256``: the real value of the default uint8 frac-8 input
FLOAT_INPUT_SCALE = 2.0**-DEFAULT_INPUT_FORMAT.frac
#: pixels scaled to [0, 1] by ``x / 255`` (PyTorch's convention; ``from_float``'s default)
UNIT_INPUT_SCALE = 1.0 / 255.0


@dataclass
class FloatModel:
    """A float network with what is needed to quantize it: the module, the shape of one input, the
    input scale (the module sees ``x_int * input_scale``), class names and free-form ``meta``."""

    module: nn.Sequential
    input_shape: tuple[int, ...]
    input_scale: float = FLOAT_INPUT_SCALE
    classes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(s) for s in self.input_shape)
        if not (math.isfinite(self.input_scale) and self.input_scale > 0):
            raise FormatError(f"input_scale must be a positive number, got {self.input_scale!r}")
        layers = describe(self.module)  # validates the layer types
        out = _check_shapes(layers, self.input_shape)
        if not self.classes:
            self.classes = [str(i) for i in range(out)]
        if len(self.classes) != out:
            raise FormatError(f"{len(self.classes)} class names for {out} logits")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def logits(self, x_int: torch.Tensor) -> torch.Tensor:
        """Float logits of integer-unit inputs (float or integer tensor, N×input_shape)."""
        return self.module(x_int.to(torch.float32) * self.input_scale)

    @torch.no_grad()
    def accuracy(self, x_int: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
        """Share of inputs the float model (in eval mode) classifies as ``labels``."""
        self.module.eval()
        correct = 0
        for s in range(0, x_int.shape[0], batch):
            pred = self.logits(x_int[s : s + batch]).argmax(1)
            correct += int((pred == labels[s : s + batch]).sum())
        return correct / max(1, x_int.shape[0])


def describe(module: nn.Module) -> list[dict[str, Any]]:
    """The JSON layer list of a float ``nn.Sequential`` (Linear, Conv2d, ReLU, Flatten; Dropout and
    Identity are skipped). Raises :class:`FormatError` naming an unsupported layer."""
    if not isinstance(module, nn.Sequential):
        raise FormatError(f"a float model must be an nn.Sequential, got {type(module).__name__}")
    out: list[dict[str, Any]] = []
    for s in plan(module):
        m = s.module
        if s.kind == "pool" or s.folded:
            what = "pooling" if s.kind == "pool" else "batch norm"
            raise FormatError(f"{s.label}: a float model file stores no {what}")
        if isinstance(m, nn.Linear):
            out.append(
                {
                    "type": "linear",
                    "in_features": m.in_features,
                    "out_features": m.out_features,
                    "bias": m.bias is not None,
                }
            )
        elif isinstance(m, nn.Conv2d):
            out.append(
                {
                    "type": "conv2d",
                    "in_channels": m.in_channels,
                    "out_channels": m.out_channels,
                    "kernel_size": list(m.kernel_size),
                    "stride": list(m.stride),
                    "padding": list(m.padding),
                    "bias": m.bias is not None,
                }
            )
        else:
            out.append({"type": s.kind})
    return out


def _check_shapes(layers: list[dict[str, Any]], input_shape: tuple[int, ...]) -> int:
    """Propagate ``input_shape`` through the layer list; return the number of logits."""
    shape = input_shape
    if not shape or min(shape) < 1:
        raise FormatError(f"invalid input shape {shape}")
    for i, d in enumerate(layers):
        t = d["type"]
        if t == "linear":
            if shape != (d["in_features"],):
                raise FormatError(
                    f"layer {i} (linear) expects {d['in_features']} inputs, got {shape}"
                )
            shape = (d["out_features"],)
        elif t == "conv2d":
            if len(shape) != 3 or shape[0] != d["in_channels"]:
                raise FormatError(
                    f"layer {i} (conv2d) expects C×H×W with C={d['in_channels']}, got {shape}"
                )
            hw = [
                (s + 2 * p - k) // st + 1
                for s, k, st, p in zip(shape[1:], d["kernel_size"], d["stride"], d["padding"])
            ]
            if min(hw) < 1:
                raise FormatError(f"layer {i} (conv2d): kernel larger than input {shape}")
            shape = (d["out_channels"], hw[0], hw[1])
        elif t == "flatten":
            shape = (math.prod(shape),)
    if len(shape) != 1:
        raise FormatError(f"the float model must end in a vector of logits, got shape {shape}")
    return shape[0]


def header_of(model: FloatModel) -> dict[str, Any]:
    """The JSON document of ``float.safetensors`` (everything but the tensors)."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "input": {"shape": list(model.input_shape), "scale": model.input_scale},
        "layers": describe(model.module),
        "classes": list(model.classes),
        "meta": model.meta,
    }


def save_float(model: FloatModel, path: str | os.PathLike[str]) -> None:
    """Write ``model`` to a float safetensors file (atomically: a partial file never replaces a
    good one)."""
    header = header_of(model)
    tensors: dict[str, np.ndarray] = {}
    for i, s in enumerate(plan(model.module)):
        m = s.module
        if isinstance(m, nn.Linear | nn.Conv2d):
            tensors[f"layers.{i}.weight"] = m.weight.detach().float().contiguous().numpy()
            if m.bias is not None:
                tensors[f"layers.{i}.bias"] = m.bias.detach().float().contiguous().numpy()
    write_atomic(
        path, st_save(tensors, metadata={METADATA_KEY: json.dumps(header, sort_keys=True)})
    )


def _pair(v: Any, what: str) -> tuple[int, int]:
    if (
        not isinstance(v, list)
        or len(v) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    ):
        raise ModelFileError(f"{what} must be a list of two integers, got {v!r}")
    return v[0], v[1]


def _pos_int(d: dict[str, Any], key: str, what: str) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ModelFileError(f"{what}: '{key}' must be a positive integer, got {v!r}")
    return v


def _tensor(
    tensors: dict[str, np.ndarray], name: str, shape: tuple[int, ...], what: str
) -> torch.Tensor:
    if name not in tensors:
        raise ModelFileError(f"{what}: tensor {name!r} is missing")
    a = tensors.pop(name)
    if a.dtype not in (np.float32, np.float64, np.float16):
        raise ModelFileError(f"{what}: tensor {name!r} has dtype {a.dtype}, expected a float type")
    if tuple(a.shape) != shape:
        raise ModelFileError(
            f"{what}: tensor {name!r} has shape {tuple(a.shape)}, expected {shape}"
        )
    t = torch.from_numpy(np.array(a, dtype=np.float32, copy=True))
    if not bool(torch.isfinite(t).all()):
        raise ModelFileError(f"{what}: tensor {name!r} contains NaN or infinity")
    return t


def _affine(d: dict[str, Any], i: int, tensors: dict[str, np.ndarray], what: str) -> nn.Module:
    has_bias = d.get("bias")
    if not isinstance(has_bias, bool):
        raise ModelFileError(f"{what}: 'bias' must be true or false")
    if d["type"] == "linear":
        fin, fout = _pos_int(d, "in_features", what), _pos_int(d, "out_features", what)
        m: nn.Module = nn.Linear(fin, fout, bias=has_bias)
        wshape: tuple[int, ...] = (fout, fin)
    else:
        cin, cout = _pos_int(d, "in_channels", what), _pos_int(d, "out_channels", what)
        k = _pair(d.get("kernel_size"), f"{what}: kernel_size")
        s = _pair(d.get("stride"), f"{what}: stride")
        p = _pair(d.get("padding"), f"{what}: padding")
        if min(k) < 1 or min(s) < 1 or min(p) < 0:
            raise ModelFileError(f"{what}: kernel and stride must be ≥ 1, padding ≥ 0")
        m = nn.Conv2d(cin, cout, k, s, p, bias=has_bias)
        wshape = (cout, cin, *k)
    with torch.no_grad():
        m.weight.copy_(_tensor(tensors, f"layers.{i}.weight", wshape, what))  # type: ignore[operator]
        if has_bias:
            m.bias.copy_(_tensor(tensors, f"layers.{i}.bias", (wshape[0],), what))  # type: ignore[operator]
    return m


def _module_from(
    header: dict[str, Any], tensors: dict[str, np.ndarray], name: str
) -> tuple[nn.Sequential, tuple[int, ...]]:
    inp = header.get("input")
    if not isinstance(inp, dict):
        raise ModelFileError(f"{name}: 'input' must be an object with 'shape' and 'scale'")
    shape = inp.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
    ):
        raise ModelFileError(f"{name}: input shape must be a list of positive integers: {shape!r}")
    layers = header.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ModelFileError(f"{name}: 'layers' must be a non-empty list")
    mods: list[nn.Module] = []
    for i, d in enumerate(layers):
        what = f"{name}: layer {i}"
        if not isinstance(d, dict) or "type" not in d:
            raise ModelFileError(f"{what}: a layer must be an object with a 'type'")
        t = d["type"]
        if t in ("linear", "conv2d"):
            mods.append(_affine(d, i, tensors, what))
        elif t == "relu":
            mods.append(nn.ReLU())
        elif t == "flatten":
            mods.append(nn.Flatten())
        else:
            raise ModelFileError(
                f"{what}: unknown layer type {t!r} (linear, conv2d, relu, flatten)"
            )
    if tensors:
        raise ModelFileError(f"{name}: unexpected tensors {sorted(tensors)}")
    return nn.Sequential(*mods), tuple(shape)


def float_model_from_bytes(raw: bytes, name: str = "<bytes>") -> FloatModel:
    """Parse the bytes of a float safetensors file (see :func:`load_float`)."""
    header, tensors = read_safetensors(raw, name, METADATA_KEY, "qcert float model")
    if header.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{name}: format is {header.get('format')!r}, expected {FORMAT_NAME!r}"
        )
    if header.get("version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{name}: unsupported version {header.get('version')!r} (this qcert reads "
            f"{FORMAT_VERSION})"
        )
    module, shape = _module_from(header, tensors, name)
    scale = header["input"].get("scale")
    if (
        not isinstance(scale, int | float)
        or isinstance(scale, bool)
        or not math.isfinite(scale)
        or scale <= 0
    ):
        raise ModelFileError(f"{name}: input scale must be a positive number, got {scale!r}")
    classes = header.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ModelFileError(f"{name}: 'classes' must be a list of strings")
    meta = header.get("meta", {})
    if not isinstance(meta, dict):
        raise ModelFileError(f"{name}: 'meta' must be an object")
    try:
        return FloatModel(module.eval(), shape, float(scale), list(classes), meta)
    except FormatError as e:
        raise ModelFileError(f"{name}: {e}") from None


def load_float(path: str | os.PathLike[str]) -> FloatModel:
    """Read a float model file written by :func:`save_float` (no unpickling). Raises
    :class:`ModelFileError` naming the problem for a missing or malformed file."""
    return float_model_from_bytes(read_bytes(path, "float model file"), name=os.fspath(path))
