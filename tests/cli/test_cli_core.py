"""The `qcert` command: info, eval, help, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from qnets import digits_mlp

from qcert import save_model
from qcert.cli.main import main


@pytest.fixture()
def digits_model(tmp_path):
    net = digits_mlp()
    path = tmp_path / "m.qnn"
    save_model(net, path)
    return net, path


def test_info_json(digits_model, capsys) -> None:
    net, path = digits_model
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 64 * 16 + 16 * 10
    assert [layer["type"] for layer in info["layers"]] == ["flatten", "linear", "requant", "linear"]
    assert info["input_shape"] == [1, 8, 8]


def test_info_table(digits_model, capsys) -> None:
    _, path = digits_model
    assert main(["info", str(path)]) == 0
    assert "requant" in capsys.readouterr().out


def test_eval_matches_library(digits_model, capsys) -> None:
    from qcert.data import load

    net, path = digits_model
    ds = load("digits", "test", n=100)
    want = float((net.predict(ds.images) == ds.labels).float().mean())
    assert main(["eval", str(path), "--dataset", "digits", "--n", "100", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 100 and out["accuracy"] == pytest.approx(want)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "MISSING.qnn", "--dataset", "digits"], "no such model file"),
        (["eval", "{model}", "--dataset", "mnist", "--n", "5"], "expects (1, 8, 8)"),
        (["eval", "{model}", "--dataset", "nope"], "unknown dataset"),
        (["eval", "{model}", "--dataset", "fashion-mnist"], "root"),
        (["info", "{bad}"], "truncated"),
    ],
)
def test_errors_are_one_line_exit_2(digits_model, tmp_path, capsys, argv, message) -> None:
    _, path = digits_model
    bad = tmp_path / "bad.qnn"
    bad.write_bytes(b"\x00\x01")
    argv = [a.format(model=path, bad=bad) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_usage_errors_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["eval", "--n", "-3"])
    assert e.value.code == 2
    assert main([]) == 2


def test_console_script_help() -> None:
    r = subprocess.run([sys.executable, "-m", "qcert", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "info" in r.stdout and "eval" in r.stdout
