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
    # issue 12 item 6: a tensor on a layer that has none is refused like any unexpected tensor
    "stray tensor on flatten": (
        lambda h, t: t.update({"layers.2.weight": np.zeros((4, 27), np.int8)}),
        r"unexpected tensors \['layers.2.weight'\]",
    ),
    "stray tensor on requant": (
        lambda h, t: t.update({"layers.1.bias": np.zeros(3, np.int8)}),
        "unexpected tensors",
    ),
    # a shape one sample of which a machine cannot hold is refused before anything is allocated
    "huge input": (lambda h, t: h["input"].update(shape=[1, 65536, 65536]), "2\\*\\*26"),
    "rounding not a string": (lambda h, t: h["layers"][1].update(rounding=1), "'rounding'"),
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


def _safetensors_header(raw: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _with_header(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize(
    "offsets", [5, [], [0, "x"], [0], [0, 1, 2], None, [-1, 4], [40, 8], [True, 8], [0, 1e3]]
)
def test_bad_data_offsets(net, tmp_path, offsets) -> None:
    """Issue 12 item 6: malformed ``data_offsets`` are a ModelFileError, never a TypeError."""
    p = tmp_path / "m.qnn"
    save_model(net, p)
    header, data = _safetensors_header(p.read_bytes())
    header["layers.0.weight"]["data_offsets"] = offsets
    p.write_bytes(_with_header(header, data))
    with pytest.raises(ModelFileError, match="data_offsets"):
        load_model(p)


@pytest.mark.parametrize("entry", [5, {"dtype": 1}, {"dtype": "I8", "shape": "x"}])
def test_bad_tensor_entries(net, tmp_path, entry) -> None:
    p = tmp_path / "m.qnn"
    save_model(net, p)
    header, data = _safetensors_header(p.read_bytes())
    header["layers.0.weight"] = entry
    p.write_bytes(_with_header(header, data))
    with pytest.raises(ModelFileError, match="layers.0.weight"):
        load_model(p)


@pytest.mark.parametrize("where", ["qcert", "safetensors"])
def test_deep_json_is_refused_before_parsing(net, tmp_path, where) -> None:
    """Issue 12 item 6: JSON nested 10**5 deep (in the qcert header or the safetensors header)
    is a ModelFileError naming the limit, not a RecursionError."""
    from qcert.quant.files import MAX_JSON_DEPTH

    deep = "[" * 100_000 + "]" * 100_000
    p = tmp_path / "m.qnn"
    if where == "qcert":
        text = json.dumps(header_of(net))[:-1] + ', "deep": ' + deep + "}"
        p.write_bytes(st_save(tensors_of(net), metadata={"qcert": text}))
    else:
        text = '{"__metadata__": {"qcert": "{}"}, "x": ' + deep + "}"
        p.write_bytes(struct.pack("<Q", len(text)) + text.encode())
    with pytest.raises(ModelFileError, match=f"limit is {MAX_JSON_DEPTH}"):
        load_model(p)
    # at the limit it parses (and then fails for what the header lacks, not for its depth)
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    text = json.dumps(header_of(net))[:-1] + ', "x": ' + ok[1:-1] + "}"
    p.write_bytes(st_save(tensors_of(net), metadata={"qcert": text}))
    load_model(p)


def test_json_depth_skips_strings() -> None:
    from qcert.quant.files import json_depth

    assert json_depth('{"a": "[[[[", "b": ["\\"", "]]]"]}') == 2
    assert json_depth("") == 0 and json_depth("[[]][]") == 2


def test_header_length_over_the_limit(tmp_path) -> None:
    p = tmp_path / "m.qnn"
    p.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(ModelFileError, match="limit is 100000000"):
        load_model(p)


def test_integer_of_many_digits(net, tmp_path) -> None:
    p = tmp_path / "m.qnn"
    p.write_bytes(st_save(tensors_of(net), metadata={"qcert": "1" * 5000}))
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(p)


def test_info_refuses_a_huge_input_without_allocating(net, tmp_path, capsys) -> None:
    """Issue 12 item 6: a 500-byte model declaring a 1×65536×65536 input: one error line."""
    from qcert.cli.main import main

    header = header_of(net)
    header["layers"] = [{"type": "flatten"}]
    header["input"]["shape"] = [1, 65536, 65536]
    header["classes"] = None
    p = tmp_path / "huge.qnn"
    write(p, header, {})
    assert p.stat().st_size < 600
    assert main(["info", str(p)]) == 2
    err = capsys.readouterr().err
    assert "limit of 67108864" in err and len(err.strip().splitlines()) == 1


def test_requant_without_rounding_is_half_up(net, tmp_path) -> None:
    """Issue 12 item 13: docs/semantics.md makes half_up the default rounding of a requant."""
    header, tensors = header_of(net), tensors_of(net)
    header["layers"][1].pop("rounding")
    p = tmp_path / "m.qnn"
    write(p, header, tensors)
    assert load_model(p).layers[1].rounding.value == "half_up"


def test_any_integer_dtype_loads(net, tmp_path) -> None:
    """Issue 12 item 13: any integer dtype holds codes (uint64 too), checked on its own values:
    a uint64 code of 2**64 − 1 does not wrap to −1."""
    header, tensors = header_of(net), tensors_of(net)
    x = torch.randint(0, 256, (5, 1, 6, 6))
    for dt in (np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64):
        w = tensors["layers.3.weight"]
        t = {**tensors, "layers.3.weight": np.clip(w, 0, None).astype(dt)}
        p = tmp_path / "m.qnn"
        write(p, header, t)
        loaded = load_model(p)
        assert torch.equal(
            loaded.layers[3].int_weight(), torch.from_numpy(np.clip(w, 0, None)).long()
        )
        loaded.integer_forward(x)
    big = np.full(tensors["layers.3.weight"].shape, 2**64 - 1, np.uint64)
    write(p, header, {**tensors, "layers.3.weight": big})
    with pytest.raises(ModelFileError, match="18446744073709551615"):
        load_model(p)
