"""verify_dataset: one JSON line per decided sample, resume without duplicates, summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from qnets import ACT4, BIAS8_4, small_mlp

from qcert.errors import InputError
from qcert.quant import FixedPointFormat, QLinear, QNetwork, QRequant, save_model
from qcert.runs import model_sha256
from qcert.verify import verify_dataset, verify_sample


def net_and_data() -> tuple[QNetwork, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    net = small_mlp(g, 3, 3, hidden=6, act=ACT4, bias=BIAS8_4, bias_bounds=(8, 8))
    x = torch.randint(0, 16, (12, 3), generator=g)
    y = net.predict(x)
    y[::5] = (y[::5] + 1) % 3  # some misclassified samples
    return net, x, y


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_records_and_summary(tmp_path: Path) -> None:
    net, x, y = net_and_data()
    out = tmp_path / "v.jsonl"
    seen: list[dict] = []
    summary = verify_dataset(net, x, y, 2, out=out, timeout=30, on_result=seen.append)
    recs = read(out)
    assert [r["index"] for r in recs] == list(range(12)) == [r["index"] for r in seen]
    for r in recs:
        assert {"index", "label", "verdict", "seconds", "counterexample"} <= set(r)
        single = verify_sample(net, x[r["index"]], int(y[r["index"]]), 2)
        assert r["verdict"] == single.verdict
        if r["verdict"] == "misclassified":
            assert r["counterexample"] == x[r["index"]].tolist()
        if r["verdict"] == "vulnerable":
            cex = torch.tensor(r["counterexample"]).reshape(1, 3)
            assert int(net.predict(cex)[0]) != r["label"]
    assert summary["n"] == 12
    assert sum(summary[k] for k in ("robust", "vulnerable", "timeout", "misclassified")) == 12
    assert summary["misclassified"] == 3
    assert summary["certified_acc"] == summary["robust"] / 12
    assert summary["median_seconds"] >= 0


def test_resume_skips_done_samples(tmp_path: Path) -> None:
    net, x, y = net_and_data()
    out = tmp_path / "v.jsonl"
    # "interrupted" after 5 samples: run on a prefix, then on everything with the same file
    first = verify_dataset(net, x[:5], y[:5], 1, out=out, timeout=30)
    assert first["n"] == 5 and len(read(out)) == 5
    before = out.read_text()
    calls: list[int] = []
    summary = verify_dataset(
        net, x, y, 1, out=out, timeout=30, on_result=lambda r: calls.append(r["index"])
    )
    recs = read(out)
    assert out.read_text().startswith(before)  # old lines untouched
    assert [r["index"] for r in recs] == list(range(12))  # no duplicates
    assert calls == list(range(12)) and summary["n"] == 12
    # a third run decides nothing new
    verify_dataset(net, x, y, 1, out=out, timeout=30)
    assert len(read(out)) == 12
    # start: only samples from 7 on count in the summary
    assert verify_dataset(net, x, y, 1, out=out, start=7)["n"] == 5


def test_torn_last_line_is_redone(tmp_path: Path) -> None:
    net, x, y = net_and_data()
    out = tmp_path / "v.jsonl"
    verify_dataset(net, x[:3], y[:3], 1, out=out)
    text = out.read_text()
    out.write_text(text + '{"index": 3, "lab')  # a write cut by a crash
    verify_dataset(net, x[:5], y[:5], 1, out=out)
    assert [r["index"] for r in read(out)] == [0, 1, 2, 3, 4]


def test_bad_resume_file_and_arguments(tmp_path: Path) -> None:
    net, x, y = net_and_data()
    out = tmp_path / "v.jsonl"
    verify_dataset(net, x[:2], y[:2], 1, out=out)
    with pytest.raises(InputError, match="eps=1"):
        verify_dataset(net, x[:3], y[:3], 2, out=out)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(InputError, match="not a verify result"):
        verify_dataset(net, x, y, 1, out=bad)
    with pytest.raises(InputError):
        verify_dataset(net, x, y[:3], 1)
    with pytest.raises(InputError, match="eps"):
        verify_dataset(net, x, y, -1)
    with pytest.raises(InputError, match="eps"):
        verify_dataset(net, x, y, 0.5)
    with pytest.raises(InputError, match="start"):
        verify_dataset(net, x, y, 1, start=12)
    with pytest.raises(InputError, match="method"):
        verify_dataset(net, x, y, 1, method="smt")
    with pytest.raises(InputError, match="timeout"):
        verify_dataset(net, x, y, 1, timeout=0)
    with pytest.raises(InputError, match="split"):
        verify_sample(net, x[0], int(y[0]), 1, split="random")
    with pytest.raises(InputError, match="CPU"):
        verify_sample(net, x[0], int(y[0]), 1, device="meta")
    with pytest.raises(InputError):
        verify_sample(net, x[0].float() + 0.5, int(y[0]), 1)
    with pytest.raises(InputError):
        verify_sample(net, x[0], 7, 1)


def test_timeout_verdict() -> None:
    """A hard query with a tiny budget times out instead of guessing."""
    g = torch.Generator().manual_seed(1)
    w = FixedPointFormat(8, True, 6)
    net = QNetwork(
        [
            QLinear.from_int(torch.randint(-128, 128, (32, 16), generator=g), None, w, None),
            QRequant(FixedPointFormat(8, False, 4), "half_up"),
            QLinear.from_int(torch.randint(-128, 128, (2, 32), generator=g), None, w, None),
        ],
        (16,),
    )
    x = torch.randint(0, 256, (1, 16), generator=g)
    label = int(net.predict(x)[0])
    from qcert.verify import BabOptions

    r = verify_sample(
        net, x, label, 40, timeout=0.05, options=BabOptions(attack_steps=0, inner_every=0)
    )
    assert r.verdict in ("timeout", "vulnerable")
    if r.verdict == "timeout":
        assert r.counterexample is None and r.predicted is None


def test_summary_counts_only_the_requested_samples(tmp_path: Path) -> None:
    """Issue 12 item 10: resuming a 12-record file for the first 6 samples summarizes 6."""
    net, x, y = net_and_data()
    out = tmp_path / "v.jsonl"
    full = verify_dataset(net, x, y, 1, out=out)
    part = verify_dataset(net, x[:6], y[:6], 1, out=out)
    assert full["n"] == 12 and part["n"] == 6 and len(read(out)) == 12
    fresh = verify_dataset(net, x[:6], y[:6], 1)
    assert {k: v for k, v in part.items() if k != "median_seconds"} == {
        k: v for k, v in fresh.items() if k != "median_seconds"
    }


def test_resume_refuses_another_models_results(tmp_path: Path) -> None:
    """Issue 12 item 11: every record carries the model's content hash; another model's file is
    refused, and so is one written before the hash was recorded."""
    net, x, y = net_and_data()
    out = tmp_path / "v.jsonl"
    verify_dataset(net, x[:3], y[:3], 1, out=out)
    assert {r["model_sha256"] for r in read(out)} == {model_sha256(net)}
    other = QNetwork(net.layers[:-1] + [QLinear.from_int(
        net.layers[-1].int_tensors()["weight"].flip(0), None, FixedPointFormat(4, True, 2), None
    )], (3,), FixedPointFormat(4, False, 2))  # fmt: skip
    before = out.read_bytes()
    with pytest.raises(InputError, match="another model"):
        verify_dataset(other, x, y, 1, out=out)
    legacy = tmp_path / "old.jsonl"
    legacy.write_text("".join(
        json.dumps({k: v for k, v in r.items() if k != "model_sha256"}) + "\n" for r in read(out)
    ))  # fmt: skip
    with pytest.raises(InputError, match="older qcert"):
        verify_dataset(net, x, y, 1, out=legacy)
    assert out.read_bytes() == before


def test_a_model_or_text_file_as_out_is_left_alone(tmp_path: Path) -> None:
    """Issue 12 item 1: the file's kind is checked before its torn last line is cut."""
    net, x, y = net_and_data()
    model = tmp_path / "m.qnn"
    save_model(net, model)
    text = tmp_path / "notes.txt"
    text.write_text("first line\nsecond line")
    for path in (model, text):
        before = path.read_bytes()
        with pytest.raises(InputError, match="not a verify result"):
            verify_dataset(net, x, y, 1, out=path)
        assert path.read_bytes() == before
