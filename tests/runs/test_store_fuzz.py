"""Fuzzing the result-file readers (issue 12): random changes to a verify JSONL, a smoothing TSV or a
counterexample file give the file's records or an InputError, never another exception; a refused
file keeps every byte; an accepted one resumes to exactly an uninterrupted run's records."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcert.errors import InputError
from qcert.runs import COUNTEREXAMPLES, SMOOTHING, VERIFY, ResultStore, read_records, run_dataset
from qcert.runs.records import TSV_COLUMNS, format_tsv_row

ID = {"eps": 1, "model_sha256": "a" * 64}
SMOOTH_ID = {"model_sha256": "b" * 64, "sigma": 0.25, "arith": "int", "alpha": 0.001}
N = 4


def verdict(i: int) -> dict:
    return {"index": i, "label": 3, "verdict": "robust", "seconds": 0.5, **ID}


def row(i: int) -> dict:
    return {"idx": i, "label": i % 3, "predict": i % 3, "radius": 0.125 * i, "correct": 1,
            "time": 1.5}  # fmt: skip


def cex(i: int) -> dict:
    return {"index": i, "label": 1, "predicted": 2, "input": [1, 2, 3]}


FILES = {
    "verify": (VERIFY, "".join(json.dumps(verdict(i)) + "\n" for i in range(N))),
    "smoothing": (
        SMOOTHING,
        "\t".join(TSV_COLUMNS) + "\n" + "".join(format_tsv_row(row(i)) + "\n" for i in range(N)),
    ),
    "counterexample": (COUNTEREXAMPLES, "".join(json.dumps(cex(i)) + "\n" for i in range(N))),
}
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
pieces = st.sampled_from(
    ["\n", "\t", "{", "}", '"', ":", ",", "\x00", "é", "\ufeff", "-1", "1e999", "NaN", "[" * 5000,
     '"index": ', '{"index": 1.5, ', "robust", "0.5", "9" * 5000, "\r\n", "\\", " "]
)  # fmt: skip
edits = st.lists(
    st.tuples(st.integers(0, 2000), st.integers(0, 30), pieces | st.binary(max_size=4)),
    min_size=1,
    max_size=4,
)


def mutate(text: str, changes) -> bytes:
    b = text.encode()
    for pos, cut, piece in changes:
        k = pos % (len(b) + 1)
        add = piece if isinstance(piece, bytes) else piece.encode()
        b = b[:k] + add + b[k + cut :]
    return b


@FUZZ
@given(kind=st.sampled_from(sorted(FILES)), changes=edits)
def test_readers(tmp_path_factory, kind, changes) -> None:
    k, text = FILES[kind]
    path = tmp_path_factory.mktemp("r") / "f"
    path.write_bytes(mutate(text, changes))
    try:
        records = read_records(path, k)
    except InputError as e:
        assert "\n" not in str(e)
        return
    assert all(isinstance(r[k.key], int) for r in records)


@FUZZ
@given(kind=st.sampled_from(["verify", "smoothing"]), changes=edits)
def test_resume_after_mutation(tmp_path_factory, kind, changes) -> None:
    """A mutated file is refused untouched, or a resumed run over it keeps its parsed records
    and computes each other index exactly once."""
    k, text = FILES[kind]
    ident, make = (ID, verdict) if kind == "verify" else (SMOOTH_ID, row)
    folder = tmp_path_factory.mktemp("s")
    path = folder / "f"
    raw = mutate(text, changes)
    path.write_bytes(raw)
    if kind == "smoothing":
        (folder / "f.json").write_text(json.dumps(SMOOTH_ID))
    seen: list[int] = []

    def results(todo: list[int]):
        seen.extend(todo)
        return ((i, make(i)) for i in todo)

    try:
        records = run_dataset(range(N), results, lambda i, r: r, store=ResultStore(path, k, ident))
    except InputError as e:
        assert "\n" not in str(e) and path.read_bytes() == raw
        return
    assert len(seen) == len(set(seen))  # nothing computed twice
    assert [r[k.key] for r in records] == list(range(N))  # no gaps
    assert {r[k.key] for r in read_records(path, k)} >= set(range(N))


def test_deep_or_huge_json_lines_are_refused(tmp_path) -> None:
    """A line nested thousands deep or holding an integer of thousands of digits is a
    one-line InputError (not a RecursionError or ValueError), anywhere in the file."""
    for bad in ("[" * 5000 + "]" * 5000, '{"index": ' + "9" * 5000 + "}"):
        for text in (bad + "\n", json.dumps(verdict(0)) + "\n" + bad + "\n"):
            path = tmp_path / "v.jsonl"
            path.write_text(text)
            try:
                read_records(path, VERIFY)
            except InputError as e:
                assert "\n" not in str(e) and len(str(e)) < 400
            else:
                raise AssertionError("read")
