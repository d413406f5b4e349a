"""verify_dataset over a local Ray cluster (2 CPUs) gives the single-process verdicts, resumably."""

from __future__ import annotations

import json

import pytest
from qnets import digits_mlp

from qcert.data import load
from qcert.parallel import shutdown
from qcert.verify import verify_dataset

pytest.importorskip("ray")


def test_ray_verdicts_equal_single_process(tmp_path) -> None:
    net = digits_mlp(seed=1, hidden=12, act_frac=3)
    ds = load("digits", "test", n=10)
    one = tmp_path / "one.jsonl"
    local = verify_dataset(net, ds.images, ds.labels, 2, out=one, timeout=20.0)
    part = tmp_path / "part.jsonl"
    verify_dataset(net, ds.images[:4], ds.labels[:4], 2, out=part, timeout=20.0)
    try:
        remote = verify_dataset(
            net, ds.images, ds.labels, 2, out=part, timeout=20.0, ray=True, workers=2
        )
    finally:
        shutdown()
    verdicts = lambda p: {  # noqa: E731
        r["index"]: r["verdict"] for r in map(json.loads, p.read_text().splitlines())
    }
    assert verdicts(one) == verdicts(part) and len(verdicts(part)) == 10
    assert "timeout" not in verdicts(one).values()
    for key in ("n", "robust", "vulnerable", "misclassified"):
        assert remote[key] == local[key]
