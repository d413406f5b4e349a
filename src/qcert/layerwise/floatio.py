"""The float model file ``float.safetensors`` and the small float architectures.

A float model is an ``nn.Sequential`` of ``Linear``, ``Conv2d`` (groups 1, dilation 1, zero
padding), ``ReLU`` and ``Flatten`` applied to ``u = x_int * input_scale`` (pixel levels times
``1/256`` by default, so that :func:`qcert.quant.from_float` with the same ``input_scale`` folds
nothing into the first layer). The file is a safetensors file: float32 tensors
``layers.{i}.weight`` / ``layers.{i}.bias`` plus one JSON document under the metadata key
``"qcert_float"`` that describes the architecture (docs/layerwise.md). Loading never unpickles
anything; every malformed file raises :class:`~qcert.errors.ModelFileError` naming the problem.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save
from torch import nn

from qcert.errors import FormatError, InputError, ModelFileError

FORMAT_NAME = "qcert.float"
FORMAT_VERSION = 1
METADATA_KEY = "qcert_float"
DEFAULT_INPUT_SCALE = 1.0 / 256.0

#: name -> (hidden layers, description); a hidden layer is ("conv", filters, kernel, stride, pad)
#: or ("dense", units); each is followed by ReLU, then a linear output layer. Same shapes as the
#: architectures of ``qcert train`` of the same names.
FLOAT_ARCHS: dict[str, tuple[tuple[tuple[Any, ...], ...], str]] = {
    "mlp-small": ((("dense", 256), ("dense", 128)), "flatten, dense 256, dense 128, dense K"),
    "cnn-small": (
        (("conv", 16, 4, 2, 1), ("conv", 32, 4, 2, 1), ("dense", 100)),
        "conv (16,4,2,pad 1), conv (32,4,2,pad 1), dense 100, dense K (Wong & Kolter 2018 small)",
    ),
}


@dataclass
class FloatModel:
    """A float network with what is needed to quantize it: the module, the shape of one input, the
    input scale (the module sees ``x_int * input_scale``), class names and free-form ``meta``."""

    module: nn.Sequential
    input_shape: tuple[int, ...]
    input_scale: float = DEFAULT_INPUT_SCALE
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


def build_float_arch(
    arch: str, input_shape: Sequence[int], num_classes: int, seed: int = 0
) -> nn.Sequential:
    """A freshly initialised float ``nn.Sequential`` of a named architecture (PyTorch's default
    initialisation, seeded with ``seed``; the global random state is left unchanged)."""
    if arch not in FLOAT_ARCHS:
        raise InputError(f"unknown architecture {arch!r}; known: {', '.join(FLOAT_ARCHS)}")
    hidden, _ = FLOAT_ARCHS[arch]
    shape = tuple(int(s) for s in input_shape)
    mods: list[nn.Module] = []
    with torch.random.fork_rng(devices=[]):  # leave the global generator as it was
        torch.manual_seed(int(seed))
        for spec in hidden:
            if spec[0] == "conv":
                _, filters, k, s, p = spec
                if len(shape) != 3:
                    raise InputError(f"{arch}: a convolution needs C×H×W inputs, got {shape}")
                h, w = ((d + 2 * p - k) // s + 1 for d in shape[1:])
                if min(h, w) < 1:
                    raise InputError(f"{arch}: input {shape} is too small for its convolutions")
                mods += [nn.Conv2d(shape[0], filters, k, s, p), nn.ReLU()]
                shape = (filters, h, w)
            else:
                if len(shape) != 1:
                    mods.append(nn.Flatten())
                    shape = (math.prod(shape),)
                mods += [nn.Linear(shape[0], spec[1]), nn.ReLU()]
                shape = (spec[1],)
        if len(shape) != 1:
            mods.append(nn.Flatten())
            shape = (math.prod(shape),)
        mods.append(nn.Linear(shape[0], num_classes))
    return nn.Sequential(*mods)


def _leaves(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [leaf for child in module.children() for leaf in _leaves(child)]
    return [module]


def describe(module: nn.Module) -> list[dict[str, Any]]:
    """The JSON layer list of a float ``nn.Sequential`` (Linear, Conv2d, ReLU, Flatten; Dropout and
    Identity are skipped). Raises :class:`FormatError` naming an unsupported layer."""
    if not isinstance(module, nn.Sequential):
        raise FormatError(f"a float model must be an nn.Sequential, got {type(module).__name__}")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(_leaves(module)):
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
            if m.groups != 1 or m.dilation != (1, 1) or m.padding_mode != "zeros":
                raise FormatError(f"layer {i} (Conv2d): only groups=1, dilation=1, zero padding")
            if isinstance(m.padding, str):
                raise FormatError(f"layer {i} (Conv2d): string padding {m.padding!r} unsupported")
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
        elif isinstance(m, nn.ReLU):
            out.append({"type": "relu"})
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise FormatError(f"layer {i}: only Flatten(start_dim=1, end_dim=-1) is supported")
            out.append({"type": "flatten"})
        elif isinstance(m, nn.Dropout | nn.Identity):
            continue
        else:
            raise FormatError(
                f"layer {i} ({type(m).__name__}) is not supported in a float model; "
                "use Linear, Conv2d, ReLU, Flatten"
            )
    if not any(d["type"] in ("linear", "conv2d") for d in out):
        raise FormatError("the float model has no Linear or Conv2d layer")
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
    affine = [m for m in _leaves(model.module) if not isinstance(m, nn.Dropout | nn.Identity)]
    for i, m in enumerate(affine):
        if isinstance(m, nn.Linear | nn.Conv2d):
            tensors[f"layers.{i}.weight"] = m.weight.detach().float().contiguous().numpy()
            if m.bias is not None:
                tensors[f"layers.{i}.bias"] = m.bias.detach().float().contiguous().numpy()
    data = st_save(tensors, metadata={METADATA_KEY: json.dumps(header, sort_keys=True)})
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


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


def _read(raw: bytes, name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if len(raw) < 8:
        raise ModelFileError(f"{name}: truncated file ({len(raw)} bytes): not a safetensors file")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise ModelFileError(f"{name}: truncated file: the safetensors header does not fit")
    try:
        st_header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{name}: the safetensors header is not valid JSON ({e})") from None
    meta = st_header.get("__metadata__") if isinstance(st_header, dict) else None
    if not isinstance(meta, dict) or METADATA_KEY not in meta:
        raise ModelFileError(
            f"{name}: not a qcert float model: the safetensors metadata has no "
            f"'{METADATA_KEY}' entry"
        )
    try:
        header = json.loads(meta[METADATA_KEY])
    except (TypeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{name}: the qcert_float header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{name}: the qcert_float header is not a JSON object")
    try:
        tensors = dict(st_load(raw))
    except (SafetensorError, ValueError, TypeError) as e:
        raise ModelFileError(f"{name}: corrupt safetensors data ({e})") from None
    return header, tensors


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
            has_bias = d.get("bias")
            if not isinstance(has_bias, bool):
                raise ModelFileError(f"{what}: 'bias' must be true or false")
            if t == "linear":
                fin, fout = _pos_int(d, "in_features", what), _pos_int(d, "out_features", what)
                m: nn.Linear | nn.Conv2d = nn.Linear(fin, fout, bias=has_bias)
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
                m.weight.copy_(_tensor(tensors, f"layers.{i}.weight", wshape, what))
                if has_bias:
                    assert m.bias is not None
                    m.bias.copy_(_tensor(tensors, f"layers.{i}.bias", (wshape[0],), what))
            mods.append(m)
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
    header, tensors = _read(raw, name)
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
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such float model file") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: is a directory, not a float model file") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read float model file ({e.strerror})") from None
    return float_model_from_bytes(raw, name=path)


__all__ = [
    "DEFAULT_INPUT_SCALE",
    "FLOAT_ARCHS",
    "FloatModel",
    "build_float_arch",
    "describe",
    "float_model_from_bytes",
    "load_float",
    "save_float",
]
