"""``qcert verify``: dataset mode (JSON lines, resume, summary) and VNN-LIB mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qcert import load_model
from qcert.cli.main import main
from qcert.data import load


def test_dataset_mode_resume_and_summary(
    digits_qnn: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "v.jsonl"
    base = ["verify", str(digits_qnn), "--dataset", "digits", "--eps", "2", "--timeout", "5"]
    assert main([*base, "--n", "4", "--out", str(out), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["n"] == 4
    assert main([*base, "--n", "7", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    keys = {"n", "robust", "vulnerable", "timeout", "misclassified", "certified_acc"}
    assert keys | {"median_seconds"} <= set(summary)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in recs] == list(range(7))
    assert summary["n"] == 7 and sum(summary[k] for k in keys - {"n", "certified_acc"}) == 7
    net = load_model(digits_qnn)
    ds = load("digits", "test", n=7)
    for r in recs:
        assert r["eps"] == 2 and r["label"] == int(ds.labels[r["index"]])
        if r["counterexample"] is not None:
            cex = torch.tensor(r["counterexample"]).reshape(1, 64)
            x = ds.images[r["index"]].reshape(1, 64).to(torch.int64)
            assert int((cex - x).abs().max()) <= 2
            assert int(net.predict(cex)[0]) != r["label"]
    # --start: a window of the dataset
    assert main([*base, "--start", "5", "--n", "2", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 2


def test_dataset_mode_prints_json_lines(
    digits_qnn: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["verify", str(digits_qnn), "--dataset", "digits", "--eps", "1", "--n", "3"]
    assert main([*argv, "--method", "milp", "--timeout", "10"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    recs = [json.loads(line) for line in lines[:3]]
    assert [r["index"] for r in recs] == [0, 1, 2] and all(r["method"] == "milp" for r in recs)
    assert lines[3].startswith("certified")


def vnnlib_text(x: torch.Tensor, eps: int, label: int) -> str:
    lines = [f"(declare-const X_{i} Real)" for i in range(64)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(10)]
    for i, v in enumerate(x.tolist()):
        lines.append(f"(assert (>= X_{i} {max(0, v - eps)}))")
        lines.append(f"(assert (<= X_{i} {min(255, v + eps)}))")
    ors = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(10) if j != label)
    lines.append(f"(assert (or {ors}))")
    return "\n".join(lines) + "\n"


def test_vnnlib_mode(digits_qnn: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = load_model(digits_qnn)
    ds = load("digits", "test", n=20)
    x = ds.images.reshape(-1, 64).to(torch.int64)
    c = int(net.predict(x[:1])[0])
    # a tiny box: robust (unsat); a huge box: a counterexample (sat)
    for eps, want in ((0, "unsat"), (255, "sat")):
        prop = tmp_path / f"p{eps}.vnnlib"
        prop.write_text(vnnlib_text(x[0], eps, c))
        cex = tmp_path / f"cex{eps}.txt"
        argv = [
            "verify",
            str(digits_qnn),
            "--vnnlib",
            str(prop),
            "--timeout",
            "20",
            "--cex",
            str(cex),
        ]
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert out.splitlines()[0] == want
        assert cex.read_text() == out
        if want == "sat":
            body = out.split("\n", 1)[1]
            vals = {
                t.strip("() \n").split()[0]: int(t.strip("() \n").split()[1])
                for t in body.split(")")
                if t.strip("() \n")
            }
            xs = torch.tensor([[vals[f"X_{i}"] for i in range(64)]])
            z = net.integer_forward(xs)[0]
            assert [vals[f"Y_{j}"] for j in range(10)] == z.tolist()
            assert any(int(z[j]) >= int(z[c]) for j in range(10) if j != c)


def test_cli_errors(digits_qnn: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.vnnlib"
    bad.write_text("(declare-const X_0 Real")
    assert main(["verify", str(digits_qnn), "--vnnlib", str(bad)]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["verify", str(digits_qnn), "--dataset", "digits"]) == 2
    assert "--eps" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["verify", str(digits_qnn), "--dataset", "digits", "--eps", "-1"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["verify", str(digits_qnn), "--dataset", "digits", "--eps", "1", "--split-rule", "x"])
    assert e.value.code == 2
    code = main(["verify", str(digits_qnn), "--dataset", "digits", "--eps", "1", "--start", "9999"])
    assert code == 2
