"""Fuzzing the dataset readers (issue 12): random changes to a valid IDX file (raw and gzip) and to
a CIFAR batch pickle give a correct load or a DataError, never another exception."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import byte_edits, mutate

from qcert.data.cifar import _read_batch
from qcert.data.idx import read_idx
from qcert.errors import DataError

IMAGES = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
IDX = b"\x00\x00\x08\x03" + b"".join(d.to_bytes(4, "big") for d in IMAGES.shape) + IMAGES.tobytes()
BATCH = pickle.dumps(
    {b"data": np.arange(2 * 3072, dtype=np.uint32).astype(np.uint8).reshape(2, 3072),
     b"labels": [3, 7]},
    protocol=4,
)  # fmt: skip
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

edits = byte_edits(10_000, 4)


@FUZZ
@given(changes=edits, gz=st.booleans(), after_gzip=st.booleans())
def test_idx_mutations(tmp_path_factory, changes, gz, after_gzip) -> None:
    path = tmp_path_factory.mktemp("idx") / ("f.gz" if gz else "f")
    raw = None
    if gz and after_gzip:  # a damaged gzip stream (the deflate data, its header or its CRC)
        path.write_bytes(mutate(gzip.compress(IDX), changes))
    else:
        raw = mutate(IDX, changes)
        path.write_bytes(gzip.compress(raw) if gz else raw)
    try:
        a = read_idx(path, 0x803)
    except DataError:
        return
    assert a.dtype == np.uint8 and a.ndim == 3
    if raw is not None:  # a correct load: the header's shape and the bytes after it
        assert raw[:4] == IDX[:4] and a.shape == tuple(
            int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(3)
        )
        assert a.tobytes() == raw[16:]


@FUZZ
@given(changes=edits)
def test_cifar_batch_mutations(tmp_path_factory, changes) -> None:
    path = tmp_path_factory.mktemp("cifar") / "data_batch_1"
    path.write_bytes(mutate(BATCH, changes))
    try:
        images, labels = _read_batch(Path(path))
    except DataError:
        return
    assert images.shape[1:] == (3, 32, 32) and labels.shape == (images.shape[0],)
    assert labels.min() >= 0 and labels.max() <= 9
