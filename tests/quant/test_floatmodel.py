"""The float model file: round trip, documented layout, and clear errors for malformed files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save as st_save
from torch import nn

from qcert.errors import FormatError, InputError, ModelFileError
from qcert.quant.floatmodel import (
    FloatModel,
    build_float,
    float_model_from_bytes,
    load_float,
    save_float,
)


def cnn() -> FloatModel:
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(1, 3, 3, 2, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.Linear(3 * 4 * 4, 5, bias=False),
        nn.ReLU(),
        nn.Linear(5, 4),
    )
    return FloatModel(module.eval(), (1, 8, 8), 1 / 256, ["a", "b", "c", "d"], {"eps": 3})


def test_round_trip_keeps_weights_and_outputs(tmp_path: Path) -> None:
    model = cnn()
    path = tmp_path / "float.safetensors"
    save_float(model, path)
    back = load_float(path)
    assert back.input_shape == (1, 8, 8)
    assert back.input_scale == 1 / 256
    assert back.classes == ["a", "b", "c", "d"]
    assert back.meta == {"eps": 3}
    x = torch.randint(0, 256, (6, 1, 8, 8))
    with torch.no_grad():
        assert torch.equal(model.logits(x), back.logits(x))
    assert not any(isinstance(m, nn.Dropout) for m in back.module)


@pytest.mark.parametrize("arch", ["cnn-medium", "cnn-small", "mlp-small"])
def test_named_architectures_round_trip(arch: str, tmp_path: Path) -> None:
    module = build_float(arch, (1, 8, 8), 10, seed=1)
    model = FloatModel(module, (1, 8, 8))
    save_float(model, tmp_path / "m.safetensors")
    back = load_float(tmp_path / "m.safetensors")
    x = torch.randint(0, 256, (3, 1, 8, 8))
    with torch.no_grad():
        assert torch.equal(model.logits(x), back.logits(x))
    # the same seed gives the same network; the global generator is untouched
    state = torch.random.get_rng_state()
    again = build_float(arch, (1, 8, 8), 10, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(module.parameters(), again.parameters()))


def test_the_documented_layout(tmp_path: Path) -> None:
    """A file written by hand from the documented layout loads (docs/layerwise.md)."""
    header = {
        "format": "qcert.float",
        "version": 1,
        "input": {"shape": [4], "scale": 0.00390625},
        "layers": [
            {"type": "linear", "in_features": 4, "out_features": 3, "bias": True},
            {"type": "relu"},
            {"type": "linear", "in_features": 3, "out_features": 2, "bias": False},
        ],
        "classes": ["no", "yes"],
        "meta": {},
    }
    tensors = {
        "layers.0.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
        "layers.0.bias": np.ones(3, dtype=np.float32),
        "layers.2.weight": np.ones((2, 3), dtype=np.float32),
    }
    raw = st_save(tensors, metadata={"qcert_float": json.dumps(header)})
    model = float_model_from_bytes(raw)
    x = torch.tensor([[256, 0, 0, 0]])
    with torch.no_grad():
        # u = [1, 0, 0, 0]: hidden = W[:, 0] + 1 = [1, 5, 9], logits = [15, 15]
        assert model.logits(x).tolist() == [[15.0, 15.0]]


def good_parts() -> tuple[dict, dict]:
    header = {
        "format": "qcert.float",
        "version": 1,
        "input": {"shape": [2], "scale": 0.5},
        "layers": [{"type": "linear", "in_features": 2, "out_features": 2, "bias": True}],
        "classes": [],
        "meta": {},
    }
    tensors = {
        "layers.0.weight": np.eye(2, dtype=np.float32),
        "layers.0.bias": np.zeros(2, dtype=np.float32),
    }
    return header, tensors


def raw_of(header: dict, tensors: dict) -> bytes:
    return st_save(tensors, metadata={"qcert_float": json.dumps(header)})


def test_good_parts_load() -> None:
    h, t = good_parts()
    assert float_model_from_bytes(raw_of(h, t)).num_classes == 2


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda h, t: h.update(format="qcert.qnn"), "expected 'qcert.float'"),
        (lambda h, t: h.update(version=9), "unsupported version"),
        (lambda h, t: t.pop("layers.0.bias"), "'layers.0.bias' is missing"),
        (lambda h, t: t.update({"extra": np.zeros(1, np.float32)}), "unexpected tensors"),
        (
            lambda h, t: t.update({"layers.0.weight": np.zeros((3, 2), np.float32)}),
            "has shape",
        ),
        (
            lambda h, t: t.update({"layers.0.weight": np.eye(2, dtype=np.int32)}),
            "expected a float type",
        ),
        (
            lambda h, t: t.update({"layers.0.bias": np.array([np.nan, 0], np.float32)}),
            "NaN",
        ),
        (lambda h, t: h["layers"].append({"type": "tanh"}), "unknown layer type"),
        (lambda h, t: h["layers"][0].update(bias="yes"), "'bias' must be true or false"),
        (lambda h, t: h["layers"][0].update(in_features=0), "positive integer"),
        (lambda h, t: h["input"].update(scale=-1), "input scale"),
        (lambda h, t: h["input"].update(shape=[3]), "expects 2 inputs"),
        (lambda h, t: h["input"].update(shape="2"), "input shape"),
        (lambda h, t: h.update(classes=["a"]), "class names"),
        (lambda h, t: h.update(meta=[]), "'meta' must be an object"),
        (lambda h, t: h.update(layers=[]), "non-empty list"),
    ],
)
def test_malformed_headers_and_tensors(mutate, message: str) -> None:  # noqa: ANN001
    h, t = good_parts()
    mutate(h, t)
    with pytest.raises(ModelFileError, match=message):
        float_model_from_bytes(raw_of(h, t), "m.safetensors")


def test_malformed_containers(tmp_path: Path) -> None:
    h, t = good_parts()
    raw = raw_of(h, t)
    with pytest.raises(ModelFileError, match="truncated"):
        float_model_from_bytes(raw[:5])
    with pytest.raises(ModelFileError, match="truncated|corrupt"):
        float_model_from_bytes(raw[:-3])
    with pytest.raises(ModelFileError, match="not valid JSON"):
        float_model_from_bytes((10).to_bytes(8, "little") + b"{not json!")
    with pytest.raises(ModelFileError, match="not a qcert float model"):
        float_model_from_bytes(st_save(t))
    bad = st_save(t, metadata={"qcert_float": "{oops"})
    with pytest.raises(ModelFileError, match="qcert_float header is not valid JSON"):
        float_model_from_bytes(bad)
    with pytest.raises(ModelFileError, match="no such float model file"):
        load_float(tmp_path / "missing.safetensors")
    with pytest.raises(ModelFileError, match="is a directory"):
        load_float(tmp_path)


def test_unsupported_modules_and_bad_models() -> None:
    with pytest.raises(FormatError, match="Tanh"):
        FloatModel(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), (2,))
    with pytest.raises(FormatError, match="nn.Sequential"):
        FloatModel(nn.Linear(2, 2), (2,))  # type: ignore[arg-type]
    with pytest.raises(FormatError, match="expects 3 inputs"):
        FloatModel(nn.Sequential(nn.Linear(3, 2)), (2,))
    with pytest.raises(FormatError, match="input_scale"):
        FloatModel(nn.Sequential(nn.Linear(2, 2)), (2,), float("nan"))
    with pytest.raises(InputError, match="unknown architecture"):
        build_float("resnet", (1, 8, 8), 10)
