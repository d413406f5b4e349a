"""Kill and resume (issue 12): a verify result file or a smoothing TSV torn anywhere in its last line,
or left by a run killed with SIGKILL at any moment, resumes to the rows of an uninterrupted run: the
same rows, none twice, none missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli_outputs import linear_digits_model

from qcert.cli.main import main
from qcert.runs import SMOOTHING, VERIFY, read_records

N = 4


def verify_argv(model: Path, out: Path, n: int = N) -> list[str]:
    return ["verify", str(model), "--dataset", "digits", "--eps", "1", "--n", str(n),
            "--out", str(out), "--json"]  # fmt: skip


def smooth_argv(model: Path, out: Path, n: int = N) -> list[str]:
    return ["smooth", "certify", str(model), "--dataset", "digits", "--sigma", "0.25", "--n",
            "40", "--n0", "8", "--batch", "40", "--n-samples", str(n), "--out", str(out),
            "--json"]  # fmt: skip


CASES = {"verify": (verify_argv, VERIFY, "seconds"), "smooth": (smooth_argv, SMOOTHING, "time")}


def rows(path: Path, kind: str) -> list[dict]:
    """The file's records without their timings (the one field that differs between runs)."""
    _, k, clock = CASES[kind]
    return [{key: v for key, v in r.items() if key != clock} for r in read_records(path, k)]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return linear_digits_model(tmp_path_factory.mktemp("m") / "m.qnn")


def reference(model: Path, folder: Path, kind: str) -> tuple[bytes, list[dict]]:
    argv, _, _ = CASES[kind]
    out = folder / f"ref-{kind}"
    assert main(argv(model, out)) == 0
    return out.read_bytes(), rows(out, kind)


def _offsets(start: int, end: int, every: bool) -> list[int]:
    if every:
        return list(range(start, end))
    return sorted({start, start + 1, start + 2, start + 11, (start + end) // 2, end - 2, end - 1})


@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize(
    "every", [False, pytest.param(True, marks=pytest.mark.slow, id="every-byte")]
)
def test_torn_last_line_resumes_to_the_same_rows(model, tmp_path, capsys, kind, every) -> None:
    full, want = reference(model, tmp_path, kind)
    capsys.readouterr()
    argv, _, _ = CASES[kind]
    start = full.rstrip(b"\n").rfind(b"\n") + 1
    out = tmp_path / f"o-{kind}"
    side = Path(str(tmp_path / f"ref-{kind}") + ".json")
    for cut in _offsets(start, len(full), every):
        out.write_bytes(full[:cut])
        if side.exists():  # the TSV's identity, as the interrupted run wrote it
            Path(str(out) + ".json").write_bytes(side.read_bytes())
        assert main(argv(model, out)) == 0, cut
        assert json.loads(capsys.readouterr().out)["n"] == N
        assert rows(out, kind) == want, cut


def _kill_at(model: Path, out: Path, kind: str, delay: float) -> None:
    argv, _, _ = CASES[kind]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "qcert", *argv(model, out, n=40)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CASES))
def test_kill_9_at_random_points_then_resume(model, tmp_path, capsys, kind) -> None:
    """SIGKILL a 40-sample run at several moments (before, during and after it writes), resume
    each time, and compare with an uninterrupted run."""
    argv, _, _ = CASES[kind]
    ref = tmp_path / f"ref-{kind}"
    assert main(argv(model, ref, n=40)) == 0
    want = rows(ref, kind)
    out = tmp_path / f"o-{kind}"
    for delay in (0.5, 1.5, 2.0, 2.5, 3.0, 4.0):
        _kill_at(model, out, kind, delay)
    assert main(argv(model, out, n=40)) == 0
    capsys.readouterr()
    assert rows(out, kind) == want
