"""PREDICT / CERTIFY pipeline: determinism, resumable TSV, radius bookkeeping, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from qnets import digits_mlp
from scipy.stats import norm

from qcert import save_model
from qcert.cli.main import main
from qcert.data import load
from qcert.errors import InputError, QcertError
from qcert.smoothing.noise import NoiseStream
from qcert.smoothing.radius import certified_radius
from qcert.smoothing.run import COLUMNS, certify_dataset, predict_dataset, read_rows
from qcert.smoothing.smooth import ABSTAIN, FloatSmoothing, IntegerSmoothing


@pytest.fixture(scope="module")
def digits():
    return load("digits", "test", n=12)


def test_constant_classifier_radius_bookkeeping(digits) -> None:
    net = digits_mlp(constant_class=3)  # class 3 always wins
    x = digits.images[0]
    n, alpha = 2000, 0.001
    s = IntegerSmoothing(net, 0.25, batch=512)
    res = s.certify(x, 50, n, alpha, seed=1, idx=0)
    assert res.predict == 3 and res.counts[3] == n
    p_lower = alpha ** (1 / n)  # Clopper–Pearson lower bound when every sample is class 3
    assert res.p_lower == pytest.approx(p_lower, rel=1e-9)
    want = certified_radius(p_lower, s.noise, 64) / 255
    assert res.radius == pytest.approx(want) and 0 < res.radius < 0.25 * norm.ppf(p_lower)
    f = FloatSmoothing(net, 0.25, batch=512).certify(x, 50, n, alpha)
    assert f.predict == 3 and f.radius == pytest.approx(0.25 * norm.ppf(p_lower))


def test_noise_is_integer_and_clamped(digits) -> None:
    net = digits_mlp()
    s = IntegerSmoothing(net, 0.5, executor="torch")
    seen = []
    s.logits_fn = lambda q: (seen.append(q), net.integer_forward(q))[1]
    s.sample_counts(digits.images[0], 300, NoiseStream(0))
    q = torch.cat(seen)
    assert not q.is_floating_point() and int(q.min()) >= 0 and int(q.max()) <= 255
    assert float((q - digits.images[0].to(torch.int64)).float().std()) > 30  # noise really added


def test_certify_is_deterministic_and_resumes(digits, tmp_path) -> None:
    net = digits_mlp()
    kw = dict(n=400, n0=20, alpha=0.01, batch=128, seed=3)
    once = tmp_path / "once.tsv"
    full = certify_dataset(net, digits.images, digits.labels, 0.12, out=once, n_samples=6, **kw)
    part = tmp_path / "part.tsv"
    certify_dataset(net, digits.images, digits.labels, 0.12, out=part, n_samples=3, **kw)
    with open(part, "a") as f:
        f.write("3\t1\t")  # a row cut short by an interruption
    resumed = certify_dataset(net, digits.images, digits.labels, 0.12, out=part, n_samples=6, **kw)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(read_rows(once)) == strip(read_rows(part))
    assert [r["idx"] for r in read_rows(part)] == list(range(6))
    assert resumed["certified_acc"] == full["certified_acc"]
    assert open(once).readline().strip().split("\t") == COLUMNS
    for row in read_rows(once):
        assert row["predict"] == ABSTAIN or row["correct"] == int(row["predict"] == row["label"])
        assert row["radius"] >= 0 and (row["predict"] != ABSTAIN or row["radius"] == 0)


def test_predict_and_errors(digits, tmp_path) -> None:
    net = digits_mlp()
    out = predict_dataset(net, digits.images, digits.labels, 0.12, n=300, n_samples=4)
    assert out["n"] == 4 and 0 <= out["accuracy"] <= 1
    with pytest.raises(QcertError):
        IntegerSmoothing(net, 0.0)
    with pytest.raises(QcertError):
        certify_dataset(net, digits.images, digits.labels, 0.25, alpha=1.5)
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n")
    with pytest.raises(InputError, match="not a smoothing TSV"):
        certify_dataset(net, digits.images, digits.labels, 0.25, out=bad, n=10, n_samples=1)


def test_cli_certify_json_and_tsv(tmp_path, capsys) -> None:
    path = tmp_path / "m.qnn"
    save_model(digits_mlp(), path)
    tsv = tmp_path / "r.tsv"
    argv = ["smooth", "certify", str(path), "--dataset", "digits", "--sigma", "0.25", "--n", "200"]
    argv += ["--n0", "20", "--n-samples", "3", "--out", str(tsv), "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["certified_acc"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
    assert summary["arith"] == "int" and summary["n"] == 3
    assert len(read_rows(tsv)) == 3 and json.loads((tmp_path / "r.tsv.json").read_text())["n"] == 3
    argv = ["smooth", "predict", str(path), "--dataset", "digits", "--sigma", "0.25", "--n", "100"]
    assert main([*argv, "--n-samples", "2", "--arith", "float", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["arith"] == "float"


def test_every_executor_and_batch_size_gives_the_same_counts(digits) -> None:
    """The noise stream is shared by all executors and independent of the batch size, and every
    executor computes the same integer logits: the certificates are identical."""
    net = digits_mlp()
    x = digits.images[1]
    runs = [
        IntegerSmoothing(net, 0.25, batch=b, executor=e).certify(x, 30, 500, 0.01, idx=1)
        for e, b in [("int8", 256), ("int8", 97), ("torch", 256), ("onnx", 500)]
    ]
    for r in runs[1:]:
        assert r.counts == runs[0].counts and r.radius == runs[0].radius
        assert r.predict == runs[0].predict
    # the fused 8-bit path is used: uint8 inputs where oneDNN runs the first layer, else int8
    assert IntegerSmoothing(net, 0.25).noisy_dtype in (np.uint8, np.int8)
    with pytest.raises(QcertError, match="unknown executor"):
        IntegerSmoothing(net, 0.25, executor="gpu")


@pytest.mark.parametrize("cut", ["six fields", "after the 5th tab"])
def test_a_torn_row_is_redone_not_counted(digits, tmp_path, cut: str) -> None:
    """Issue 12 item 2: a row cut by a crash — with all six fields but no newline, or right after
    its 5th tab — is redone on resume: n rows for n samples, none lost, none doubled."""
    net = digits_mlp()
    kw = dict(n=300, n0=20, alpha=0.01, batch=128, seed=2)
    once = tmp_path / "once.tsv"
    certify_dataset(net, digits.images, digits.labels, 0.12, out=once, n_samples=4, **kw)
    text = once.read_text()
    last = text[text.rstrip("\n").rfind("\n") + 1 :]
    torn = last.rstrip("\n") if cut == "six fields" else last[: last.rfind("\t") + 1]
    part = tmp_path / "part.tsv"
    part.write_text(text[: len(text) - len(last)] + torn)
    (tmp_path / "part.tsv.json").write_text((tmp_path / "once.tsv.json").read_text())
    resumed = certify_dataset(net, digits.images, digits.labels, 0.12, out=part, n_samples=4, **kw)
    assert resumed["n"] == 4 and [r["idx"] for r in read_rows(part)] == [0, 1, 2, 3]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(read_rows(part)) == strip(read_rows(once))


def test_resume_is_for_the_same_run_and_range(digits, tmp_path) -> None:
    """Only the requested samples are summarized (issue 12 item 10), and a TSV of another model or
    σ is refused (item 11; the run's identity is kept in OUT.json)."""
    net = digits_mlp()
    kw = dict(n=300, n0=20, alpha=0.01, batch=128, seed=2)
    out = tmp_path / "s.tsv"
    certify_dataset(net, digits.images, digits.labels, 0.12, out=out, n_samples=6, **kw)
    rows: list[dict] = []
    part = certify_dataset(
        net, digits.images, digits.labels, 0.12, out=out, n_samples=3, on_row=rows.append, **kw
    )
    assert part["n"] == 3 and [r["idx"] for r in rows] == [0, 1, 2] and len(read_rows(out)) == 6
    before = out.read_bytes()
    with pytest.raises(InputError, match="another model"):
        certify_dataset(
            digits_mlp(constant_class=3), digits.images, digits.labels, 0.12, out=out, **kw
        )
    with pytest.raises(InputError, match="sigma"):
        certify_dataset(net, digits.images, digits.labels, 0.25, out=out, **kw)
    assert out.read_bytes() == before
