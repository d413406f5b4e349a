"""The `qcert` command: info, eval, help, and one-line errors with exit code 2."""

from __future__ import annotations

import argparse
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


def _commands() -> list[list[str]]:
    from qcert.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for name, parser in sub.choices.items():
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        out += [[name, n] for n in nested[0].choices] if nested else [[name]]
    return out


def test_usage_errors_are_one_line(capsys) -> None:
    """Issue 12 item 9: an unknown option, a bad value, a missing argument or no command at all is
    one line on stderr and exit code 2 for every command; ``--help`` is still the full usage."""
    for cmd in [[], *_commands()]:
        for extra in (["--no-such-option"], []):
            if not cmd and not extra:
                assert main([]) == 2
                err = capsys.readouterr().err
            else:
                with pytest.raises(SystemExit) as e:
                    main([*cmd, *extra])
                assert e.value.code == 2, cmd
                err = capsys.readouterr().err
            assert len(err.strip().splitlines()) == 1, (cmd, err)
            assert "error:" in err and "usage:" not in err, err
    with pytest.raises(SystemExit) as e:
        main(["eval", "--n", "-3"])
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "positive integer" in err
    with pytest.raises(SystemExit) as e:
        main(["verify", "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.count("\n") > 10


def test_every_failure_is_one_line(digits_model, monkeypatch, capsys) -> None:
    """``main``: a QcertError is one line and exit code 2 (even a message with newlines); anything
    else is one line ``internal error: ... (run with --debug ...)`` and exit code 1."""
    import qcert.cli.info
    from qcert.errors import ModelFileError

    _, path = digits_model

    def fail(exc: Exception):
        def load(*a: object) -> None:
            raise exc

        monkeypatch.setattr(qcert.cli.info, "load_model", load)

    fail(ModelFileError("bad\nmodel"))
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == "qcert info: error: bad model\n"
    fail(RuntimeError("boom\nagain"))
    assert main(["info", str(path)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "internal error: RuntimeError: boom again" in err and "--debug" in err
    assert main(["--debug", "info", str(path)]) == 1
    assert "Traceback" in capsys.readouterr().err
