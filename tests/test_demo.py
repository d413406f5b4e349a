"""The demo's closing table reads in 80 columns and in a log; one name per model (issue 12 item 14)."""

from __future__ import annotations

import json
from pathlib import Path

from qcert.demo import closing_table
from qcert.report import build_report


def _row(n: int, timeouts: int) -> dict:
    verified = {"certified_acc": 0.995, "timeout": timeouts}
    return {
        "clean": 0.989, "box": {"1": 0.984, "4": 0.956}, "n": n, "verified1": verified,
        "verified4": {**verified, "certified_acc": 0.965}, "smooth": {"certified_acc": {"0.25": 0.955}},
    }  # fmt: skip


def test_closing_table_is_plain_and_narrow() -> None:
    text = closing_table({"qa-ibp": _row(10000, 6), "qat": _row(20, 136)})
    lines = text.split("\n")
    assert all(len(line) <= 80 for line in lines), max(map(len, lines))
    assert "…" not in text and "\x1b" not in text  # no truncation, no terminal codes
    header = next(line for line in lines if line.startswith("model"))
    for word in ("clean", "verified", "timeouts", "smoothed"):
        assert word in header
    qaibp = next(line for line in lines if line.startswith("qa-ibp"))
    assert qaibp.split() == ["qa-ibp", "0.989", "0.984", "0.956", "10000", "0.995", "0.965",
                             "12", "0.955"]  # fmt: skip


def test_one_name_per_model_in_the_report(tmp_path: Path) -> None:
    """The demo's layout: DIR/model.qnn with its metrics, verify results (recording the model's
    path) and smoothing TSV beside it: every plot and table names the model ``DIR``."""
    folder = tmp_path / "qa-ibp"
    folder.mkdir()
    rec = {"index": 0, "label": 1, "verdict": "robust", "seconds": 0.1, "eps": 1,
           "model": str(folder / "model.qnn")}  # fmt: skip
    (folder / "verify-eps1.jsonl").write_text(json.dumps(rec) + "\n")
    tsv = folder / "smooth-sigma0.25-int.tsv"
    tsv.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t7\t7\t0.61\t1\t1.2\n")
    (folder / "metrics.json").write_text(json.dumps({
        "method": "qa-ibp", "arch": "cnn-small", "dataset": "mnist", "clean_acc": 0.98,
        "ibp_certified_acc": {"1": 0.9},
    }))  # fmt: skip
    from qcert.report import read_result

    names = {read_result(p).model for p in folder.iterdir()}
    assert names == {"qa-ibp"}
    page = build_report(list(folder.iterdir()), tmp_path / "report").read_text()
    assert "qaibp" not in page and "qa-ibp-cnn-small-mnist" not in page
    assert "qa-ibp cnn-small mnist" in page  # the training is still described, in its column
