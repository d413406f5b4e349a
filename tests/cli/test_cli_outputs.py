"""Output paths are checked before any work, for every command that writes results: one error line,
exit code 2, and no byte changed of a file the user did not name as output (issue 12)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from qnets import digits_mlp

import qcert.cli.attack
import qcert.cli.smooth
import qcert.cli.verify
from qcert import save_model
from qcert.cli.main import main

VNNLIB = "".join(f"(declare-const X_{i} Real)\n" for i in range(64))
VNNLIB += "".join(f"(declare-const Y_{j} Real)\n" for j in range(10))
VNNLIB += "(assert (>= X_0 10))\n(assert (<= X_0 12))\n(assert (>= Y_1 Y_0))\n"


def linear_digits_model(path: Path, seed: int = 0) -> Path:
    """A one-layer 8×8 → 10 integer network (fast to verify), saved to ``path``."""
    save_model(digits_mlp(seed, hidden=None), path)
    return path


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return linear_digits_model(tmp_path / "m.qnn")


def fails_early(argv: list[str], capsys: pytest.CaptureFixture[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and match in err, err


@pytest.fixture()
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the model counts as work: a check that comes after it fails the test (exit 1)."""

    def forbidden(*a: object) -> None:
        raise RuntimeError("work started before the output paths were checked")

    for module in (qcert.cli.verify, qcert.cli.attack):
        monkeypatch.setattr(module, "load_model", forbidden)
    monkeypatch.setattr(qcert.cli.smooth, "_load", forbidden)


def test_bad_output_paths_fail_before_any_work(model, tmp_path, capsys, no_work) -> None:
    missing = str(tmp_path / "missing" / "out.jsonl")
    folder = str(tmp_path)
    before = model.read_bytes()
    verify = ["verify", str(model), "--dataset", "digits", "--eps", "1"]
    smooth = ["smooth", "certify", str(model), "--dataset", "digits", "--sigma", "0.25"]
    attack = ["attack", str(model), "--dataset", "digits", "--eps", "1"]
    for cmd in (verify, smooth, attack):
        fails_early([*cmd, "--out", missing], capsys, "does not exist")
        fails_early([*cmd, "--out", folder], capsys, "is a folder")
        fails_early([*cmd, "--out", str(model)], capsys, "also an input")
    vnnlib = tmp_path / "p.vnnlib"
    vnnlib.write_text(VNNLIB)
    fails_early(["verify", str(model), "--vnnlib", str(vnnlib), "--cex", missing], capsys, "--cex")
    fails_early(
        ["verify", str(model), "--vnnlib", str(vnnlib), "--cex", str(vnnlib)], capsys, "input"
    )
    assert model.read_bytes() == before and not (tmp_path / "missing").exists()


def test_unwritable_and_report_outputs(model, tmp_path, capsys, monkeypatch) -> None:
    result = tmp_path / "v.jsonl"
    result.write_text(json.dumps({"index": 0, "verdict": "robust", "seconds": 0.1}) + "\n")
    fails_early(["report", str(result), "--out", str(result)], capsys, "not a folder")
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    fails_early(["report", str(result), "--out", str(tmp_path / "r")], capsys, "permission")
    verify = ["verify", str(model), "--dataset", "digits", "--eps", "1"]
    fails_early([*verify, "--out", str(tmp_path / "new.jsonl")], capsys, "permission")


def test_files_that_are_not_results_are_never_changed(model, tmp_path, capsys) -> None:
    """Issue 12 items 1 and 3: a model or text file given as --out (or --cex) is refused intact."""
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\nand me")
    other = linear_digits_model(tmp_path / "other.qnn", seed=1)
    vnnlib = tmp_path / "p.vnnlib"
    vnnlib.write_text(VNNLIB)
    runs = [
        ["verify", str(model), "--dataset", "digits", "--eps", "1", "--n", "2", "--out"],
        ["attack", str(model), "--dataset", "digits", "--eps", "1", "--n", "2", "--out"],
        ["smooth", "certify", str(model), "--dataset", "digits", "--sigma", "0.25", "--n", "50",
         "--n0", "10", "--n-samples", "1", "--out"],
        ["verify", str(model), "--vnnlib", str(vnnlib), "--cex"],
    ]  # fmt: skip
    for argv in runs:
        for victim in (notes, other):
            before = victim.read_bytes()
            assert main([*argv, str(victim)]) == 2
            assert "\n" not in capsys.readouterr().err.strip()
            assert victim.read_bytes() == before
    cex = tmp_path / "c.txt"
    cex.write_text("timeout\n")
    assert main([*runs[-1], str(cex)]) == 0
    assert cex.read_text().split("\n")[0] in ("sat", "unsat")


def test_verify_resume_range_and_model(model, tmp_path, capsys) -> None:
    """Issue 12 items 10 and 11 through the command: ``--n 3`` on a 6-record file summarizes 3;
    another model's file is refused."""
    out = tmp_path / "v.jsonl"
    base = ["verify", str(model), "--dataset", "digits", "--eps", "1", "--out", str(out), "--json"]
    assert main([*base, "--n", "6"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 6
    assert main([*base, "--n", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 3
    other = linear_digits_model(tmp_path / "other.qnn", seed=1)
    before = out.read_bytes()
    argv = [
        "verify",
        str(other),
        "--dataset",
        "digits",
        "--eps",
        "1",
        "--n",
        "6",
        "--out",
        str(out),
    ]
    assert main(argv) == 2
    assert "another model" in capsys.readouterr().err and out.read_bytes() == before


def test_no_command_writes_over_its_inputs(model, tmp_path, capsys) -> None:
    """Issue 12 item 3: export, import, quantize, train and report refuse an output that is one of
    their inputs (or a link to it), a folder or a file in a missing folder, with one line and
    before any work; every input keeps its bytes."""
    before = model.read_bytes()
    link = tmp_path / "link.qnn"
    link.symlink_to(model)
    missing = str(tmp_path / "missing" / "x")
    for out in (model, link):
        fails_early(["export", str(model), "--onnx", str(out)], capsys, "also an input")
    fails_early(["export", str(model), "--onnx", missing], capsys, "does not exist")
    fails_early(["export", str(model), "--onnx", str(tmp_path)], capsys, "is a folder")
    onnx = tmp_path / "m.onnx"
    assert main(["export", str(model), "--onnx", str(onnx), "--check", "0"]) == 0
    capsys.readouterr()
    onnx_bytes = onnx.read_bytes()
    fails_early(["import", str(onnx), "--out", str(onnx)], capsys, "also an input")
    fails_early(["import", str(onnx), "--out", missing], capsys, "does not exist")
    quantize = ["quantize", str(model), "--strategy", "uniform", "--avg-bits", "8"]
    fails_early([*quantize, "--calib-data", "digits", "--out", str(model)], capsys, "also an input")
    fails_early(["train", "--dataset", "digits", "--out", str(model)], capsys, "not a folder")
    data = tmp_path / "data"
    data.mkdir()
    argv = ["train", "--dataset", "mnist-idx", "--data-root", str(data), "--out", str(data)]
    fails_early(argv, capsys, "also an input")
    fails_early(["report", str(model), "--out", str(model)], capsys, "not a folder")
    assert model.read_bytes() == before and onnx.read_bytes() == onnx_bytes
    assert not (tmp_path / "missing").exists() and not any(data.iterdir())
