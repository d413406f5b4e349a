"""The .qnn model file: round trip, and one clear error per way a file can be malformed."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors.numpy import save as st_save

from qcert import load_model, save_model
from qcert.errors import ModelFileError
from qcert.quant import FixedPointFormat, QConv2d, QFlatten, QLinear, QNetwork, QRequant
from qcert.quant.io import header_of, tensors_of


@pytest.fixture()
def net() -> QNetwork:
    g = torch.Generator().manual_seed(0)
    w8, a8 = FixedPointFormat(8, True, 7), FixedPointFormat(8, False, 5)
    b16 = FixedPointFormat(16, True, 10)
    return QNetwork(
        [
            QConv2d.from_int(
                torch.randint(-128, 128, (3, 1, 3, 3), generator=g),
                torch.randint(-99, 99, (3,), generator=g),
                w8,
                b16,
                2,
                1,
            ),
            QRequant(a8, "half_even"),
            QFlatten(),
            QLinear.from_int(torch.randint(-128, 128, (4, 3 * 3 * 3), generator=g), None, w8, None),
        ],
        (1, 6, 6),
        classes=["a", "b", "c", "d"],
        meta={"note": "test"},
    )


def write(path, header, tensors) -> None:
    path.write_bytes(st_save(tensors, metadata={"qcert": json.dumps(header)}))


def test_round_trip_is_bit_exact(net, tmp_path) -> None:
    p = tmp_path / "m.qnn"
    save_model(net, p)
    net2 = load_model(p)
    x = torch.randint(0, 256, (20, 1, 6, 6))
    assert torch.equal(net.integer_forward(x), net2.integer_forward(x))
    assert net2.classes == ["a", "b", "c", "d"] and net2.meta == {"note": "test"}
    assert header_of(net2) == header_of(net)
    assert tensors_of(net)["layers.0.weight"].dtype == np.int8


def _case(net, mutate):
    header, tensors = header_of(net), tensors_of(net)
    mutate(header, tensors)
    return header, tensors


CASES = {
    "missing tensor": (lambda h, t: t.pop("layers.3.weight"), "missing tensor"),
    "float dtype": (
        lambda h, t: t.update({"layers.0.weight": t["layers.0.weight"].astype(np.float32)}),
        "expected an integer type",
    ),
    "wrong shape": (
        lambda h, t: t.update({"layers.3.weight": t["layers.3.weight"][:, :5].copy()}),
        "has shape",
    ),
    "value out of format": (
        lambda h, t: t.update({"layers.0.bias": t["layers.0.bias"].astype(np.int32) * 1000}),
        "outside its format",
    ),
    "bits out of range": (
        lambda h, t: h["layers"][1]["format"].update(bits=17),
        "activation bit width",
    ),
    "weight bits out of range": (
        lambda h, t: h["layers"][0]["weight_format"].update(bits=40),
        "out of range",
    ),
    "unknown layer": (lambda h, t: h["layers"][2].update(type="maxpool"), "unknown layer type"),
    "unknown rounding": (
        lambda h, t: h["layers"][1].update(rounding="stochastic"),
        "unknown rounding",
    ),
    "bad version": (lambda h, t: h.update(version=99), "unsupported format version"),
    "not qcert": (lambda h, t: h.update(format="other"), "header 'format'"),
    "missing key": (lambda h, t: h["layers"][0].pop("stride"), "missing key 'stride'"),
    "shape mismatch between layers": (
        lambda h, t: h["input"].update(shape=[1, 7, 7]),
        "expects 27 input features",
    ),
    "extra tensor": (lambda h, t: t.update({"junk": np.zeros(2, np.int8)}), "unexpected tensors"),
    "bad classes": (lambda h, t: h.update(classes=[1, 2, 3, 4]), "classes"),
    "wrong class count": (lambda h, t: h.update(classes=["a"]), "class names"),
    "input range outside format": (lambda h, t: h["input"].update(range=[0, 999]), "input range"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_header_or_tensors(net, tmp_path, case) -> None:
    mutate, message = CASES[case]
    header, tensors = _case(net, mutate)
    p = tmp_path / "bad.qnn"
    write(p, header, tensors)
    with pytest.raises(ModelFileError, match=message):
        load_model(p)


def test_bad_json(net, tmp_path) -> None:
    p = tmp_path / "bad.qnn"
    p.write_bytes(st_save(tensors_of(net), metadata={"qcert": "{not json"}))
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(p)


def test_no_qcert_header(net, tmp_path) -> None:
    p = tmp_path / "bad.qnn"
    p.write_bytes(st_save(tensors_of(net)))
    with pytest.raises(ModelFileError, match="no qcert header"):
        load_model(p)


@pytest.mark.parametrize("keep", [0, 5, 20, -1, -30])
def test_truncated_file(net, tmp_path, keep) -> None:
    p = tmp_path / "m.qnn"
    save_model(net, p)
    raw = p.read_bytes()
    p.write_bytes(raw[:keep] if keep >= 0 else raw[:keep])
    with pytest.raises(ModelFileError, match="truncated|not valid JSON|malformed"):
        load_model(p)


def test_garbage_and_missing_files(tmp_path) -> None:
    p = tmp_path / "g.qnn"
    p.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{]")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(p)
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "absent.qnn")


def test_loading_never_unpickles(net, tmp_path, monkeypatch) -> None:
    import pickle

    def boom(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    p = tmp_path / "m.qnn"
    save_model(net, p)
    load_model(p)
