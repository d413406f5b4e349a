"""Smoothing over a local Ray cluster (2 CPUs) gives the same rows as one process."""

from __future__ import annotations

import pytest
from qnets import digits_mlp

from qcert.data import load
from qcert.parallel import shutdown
from qcert.smoothing.run import certify_dataset, read_rows

pytest.importorskip("ray")


def test_ray_rows_equal_single_process(tmp_path) -> None:
    net = digits_mlp()
    ds = load("digits", "test", n=8)
    kw = dict(n=300, n0=20, alpha=0.01, batch=100, seed=5, n_samples=6)
    local = certify_dataset(net, ds.images, ds.labels, 0.25, out=tmp_path / "a.tsv", **kw)
    part = tmp_path / "b.tsv"
    certify_dataset(net, ds.images, ds.labels, 0.25, out=part, **{**kw, "n_samples": 2})
    try:
        remote = certify_dataset(
            net, ds.images, ds.labels, 0.25, out=part, ray=True, workers=2, **kw
        )
    finally:
        shutdown()
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    rows_b = sorted(read_rows(part), key=lambda r: r["idx"])
    assert strip(read_rows(tmp_path / "a.tsv")) == strip(rows_b)
    assert remote["certified_acc"] == local["certified_acc"]
