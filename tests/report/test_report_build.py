"""`qcert report` renders real result files into PNG plots and an HTML page."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import pytest

from qcert.cli.main import main
from qcert.errors import InputError
from qcert.report import build_report, read_result


def write_results(tmp_path):
    v1 = tmp_path / "qaibp" / "verify-eps1.jsonl"
    v1.parent.mkdir()
    verdicts = ["robust"] * 7 + ["vulnerable", "timeout", "misclassified"]
    v1.write_text(
        "".join(
            json.dumps(
                {
                    "index": i,
                    "label": 1,
                    "verdict": v,
                    "seconds": 0.01 * (i + 1),
                    "counterexample": None,
                }
            )
            + "\n"
            for i, v in enumerate(verdicts)
        )
    )
    v4 = tmp_path / "qaibp" / "verify-eps4.jsonl"
    v4.write_text(
        "".join(
            json.dumps(
                {
                    "index": i,
                    "label": 0,
                    "verdict": v,
                    "seconds": 0.5,
                    "counterexample": None,
                    "eps": 4,
                }
            )
            + "\n"
            for i, v in enumerate(["robust"] * 5 + ["vulnerable"] * 5)
        )
    )
    tsv = tmp_path / "smooth-sigma0.25-int.tsv"
    tsv.write_text(
        "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
        "0\t7\t7\t0.61\t1\t1.2\n1\t2\t2\t0.2\t1\t1.1\n2\t1\t-1\t0.0\t0\t1.0\n3\t0\t6\t0.3\t0\t1.3\n"
    )
    metrics = tmp_path / "qaibp" / "metrics.json"
    metrics.write_text(
        json.dumps(
            {
                "method": "qa-ibp",
                "arch": "cnn-small",
                "dataset": "mnist",
                "clean_acc": 0.98,
                "ibp_certified_acc": {"1": 0.9, "4": 0.6},
                "pgd_acc": 0.95,
                "seconds": 100,
            }
        )
    )
    return [v1, v4, tsv, metrics]


def test_readers(tmp_path) -> None:
    v1, v4, tsv, metrics = write_results(tmp_path)
    r1 = read_result(v1)
    assert r1.eps == 1 and r1.n == 10 and r1.certified_acc == pytest.approx(0.7)
    assert read_result(v4).eps == 4
    s = read_result(tsv)
    assert s.sigma == 0.25 and s.arith == "int" and s.abstain_rate == 0.25
    assert s.certified_acc(0.0) == 0.5 and s.certified_acc(0.5) == 0.25
    assert read_result(metrics).certified == {1.0: 0.9, 4.0: 0.6}


def test_report_renders_pngs_and_html(tmp_path, capsys) -> None:
    files = write_results(tmp_path)
    out = tmp_path / "report"
    assert main(["report", *map(str, files), "--out", str(out)]) == 0
    assert "index.html" in capsys.readouterr().out
    page = (out / "index.html").read_text()
    for png in ("certified_vs_eps.png", "certified_vs_radius.png", "time_cdf.png"):
        assert png in page
        img = mpimg.imread(out / png)
        assert img.shape[0] > 200 and img.shape[1] > 300 and img.std() > 0.01  # not blank
    assert "qa-ibp cnn-small mnist" in page and "0.7000" in page


def test_bad_result_files(tmp_path) -> None:
    bad = tmp_path / "x.txt"
    bad.write_text("hello")
    with pytest.raises(InputError, match="not a verify JSONL"):
        build_report([bad], tmp_path / "r")
    with pytest.raises(InputError, match="no such result file"):
        read_result(tmp_path / "missing.jsonl")
    broken = tmp_path / "v.jsonl"
    broken.write_text('{"verdict": "robust"}\n')
    with pytest.raises(InputError, match="not a verify result line"):
        read_result(broken)
