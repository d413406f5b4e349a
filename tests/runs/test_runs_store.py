"""The resumable result file: kind check before any write, torn last lines redone, identity checks
(issue 12, items 1, 2 and 11), and the output-path checks."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qcert.errors import InputError
from qcert.runs import (
    COUNTEREXAMPLES,
    SMOOTHING,
    TSV_COLUMNS,
    VERIFY,
    ResultStore,
    check_output_file,
    check_output_folder,
    read_records,
    run_dataset,
    write_atomic,
)
from qcert.runs.records import Kind, format_tsv_row

Make = Callable[[int], dict]

ID = {"eps": 1, "model_sha256": "a" * 64}
SMOOTH_ID = {"model_sha256": "b" * 64, "sigma": 0.25, "arith": "int", "alpha": 0.001}


def verdict(i: int) -> dict:
    return {"index": i, "label": 3, "verdict": "robust", "seconds": 0.5, **ID}


def row(i: int) -> dict:
    return {"idx": i, "label": i % 3, "predict": i % 3, "radius": 0.125 * i, "correct": 1,
            "time": 1.5}  # fmt: skip


def run(
    path: Path, kind: Kind, identity: dict, n: int, make: Make, seen: list | None = None
) -> list:
    """A run over samples 0..n-1 whose results are ``make(i)`` (the indices computed are added to
    ``seen``); returns the records."""

    def results(todo: list[int]) -> Iterator[tuple[int, dict]]:
        if seen is not None:
            seen.extend(todo)
        return ((i, make(i)) for i in todo)

    return run_dataset(range(n), results, lambda i, r: r, store=ResultStore(path, kind, identity))


def uninterrupted(tmp_path: Path, kind: Kind, identity: dict, n: int, make: Make) -> bytes:
    ref = tmp_path / ("ref" + ("" if kind.header is None else ".tsv"))
    run(ref, kind, identity, n, make)
    return ref.read_bytes()


@pytest.mark.parametrize("kind", ["verify", "smoothing"])
def test_torn_last_line_at_every_byte_is_redone(tmp_path: Path, kind: str) -> None:
    """Issue 12 item 2: a crash may cut the last line anywhere (a TSV row with all six fields but
    no newline, or cut right after its 5th tab): it is never counted, it is redone, and the file
    ends up as an uninterrupted run's."""
    k, ident, make = (VERIFY, ID, verdict) if kind == "verify" else (SMOOTHING, SMOOTH_ID, row)
    full = uninterrupted(tmp_path, k, ident, 4, make)
    if kind == "smoothing":
        (tmp_path / "ref.tsv.json").unlink()
    start = full.rstrip(b"\n").rfind(b"\n") + 1  # the last line's first byte
    for cut in range(start, len(full)):
        out = tmp_path / ("o.tsv" if kind == "smoothing" else "o.jsonl")
        out.write_bytes(full[:cut])
        if kind == "smoothing":
            write_atomic(str(out) + ".json", json.dumps(SMOOTH_ID))
        seen: list[int] = []
        recs = run(out, k, ident, 4, make, seen)
        assert seen == [3], cut  # only the torn record is redone
        assert out.read_bytes() == full and len(recs) == 4
    # with NUL bytes a file system may leave after a crash
    out.write_bytes(full[: start + 3] + b"\0" * 40)
    run(out, k, ident, 4, make)
    assert out.read_bytes() == full


def test_a_torn_tsv_row_is_not_read(tmp_path: Path) -> None:
    """The reader never counts a row without its newline, even one with all six fields."""
    text = "\t".join(TSV_COLUMNS) + "\n" + format_tsv_row(row(0)) + "\n" + format_tsv_row(row(1))
    path = tmp_path / "s.tsv"
    path.write_text(text)
    assert [r["idx"] for r in read_records(path, SMOOTHING)] == [0]
    path.write_text(text[: text.rfind("\t") + 1])  # cut right after the 5th tab
    assert [r["idx"] for r in read_records(path, SMOOTHING)] == [0]


@pytest.mark.parametrize("kind", [VERIFY, SMOOTHING, COUNTEREXAMPLES])
def test_a_file_of_another_kind_is_refused_untouched(tmp_path: Path, kind: Kind) -> None:
    """Issue 12 item 1: a model, a text file (with or without a last newline) or another kind of
    result file given as the output is refused before a byte of it changes."""
    model = bytes([123, 1, 0, 0, 0, 0, 0, 0]) + b'{"__metadata__": {}}' + bytes(range(256))
    files = [model, b"hello\nworld", b"hello\nworld\n", b"idx\tlabel\n", b'{"a": 1}\n']
    files += [(json.dumps(verdict(0)) + "\n").encode(), b"{\n}\n"]
    for raw in files:
        path = tmp_path / "f"
        path.write_bytes(raw)
        if kind is VERIFY and raw.startswith(b'{"index'):
            continue  # a verify record is a verify result file
        with pytest.raises(InputError, match=f"not a {kind.name}"):
            ResultStore(path, kind, ID if kind is VERIFY else SMOOTH_ID).open()
        assert path.read_bytes() == raw


def test_resume_needs_the_same_model(tmp_path: Path) -> None:
    """Issue 12 item 11: records carry the model's content hash; another model's file, or one
    that does not say which model (an older qcert's), is refused."""
    out = tmp_path / "v.jsonl"
    run(out, VERIFY, ID, 2, verdict)
    other = {**ID, "model_sha256": "c" * 64}
    with pytest.raises(InputError, match="another model"):
        ResultStore(out, VERIFY, other).open()
    with pytest.raises(InputError, match="eps=1"):
        ResultStore(out, VERIFY, {**ID, "eps": 2}).open()
    legacy = tmp_path / "old.jsonl"
    legacy.write_text(json.dumps({"index": 0, "verdict": "robust", "seconds": 1, "eps": 1}) + "\n")
    with pytest.raises(InputError, match="does not record the model_sha256"):
        ResultStore(legacy, VERIFY, ID).open()
    assert len(read_records(legacy, VERIFY)) == 1  # still readable (by the report)


def test_tsv_identity_lives_in_the_summary_file(tmp_path: Path) -> None:
    out = tmp_path / "s.tsv"
    run(out, SMOOTHING, SMOOTH_ID, 2, row)
    side = tmp_path / "s.tsv.json"
    assert json.loads(side.read_text()) == SMOOTH_ID
    for key, value in [("model_sha256", "d" * 64), ("sigma", 0.5), ("arith", "float")]:
        with pytest.raises(InputError, match="another model|sigma|arith"):
            ResultStore(out, SMOOTHING, {**SMOOTH_ID, key: value}).open()
    side.write_text(json.dumps({"n": 2, "sigma": 0.25}))  # an older qcert's summary
    with pytest.raises(InputError, match="does not record the model_sha256"):
        ResultStore(out, SMOOTHING, SMOOTH_ID).open()
    side.unlink()
    with pytest.raises(InputError, match="does not record"):
        ResultStore(out, SMOOTHING, SMOOTH_ID).open()
    side.write_text("not json")
    with pytest.raises(InputError, match="not the JSON summary"):
        ResultStore(out, SMOOTHING, SMOOTH_ID).open()
    assert side.read_text() == "not json"
    # a file with a header only holds nothing to check: the run starts, with a fresh summary
    empty = tmp_path / "e.tsv"
    empty.write_text("\t".join(TSV_COLUMNS) + "\n")
    assert len(run(empty, SMOOTHING, SMOOTH_ID, 3, row)) == 3


def test_only_requested_records_are_returned(tmp_path: Path) -> None:
    """Issue 12 item 10: a file with more records than the run asks for summarizes the run's."""
    out = tmp_path / "v.jsonl"
    run(out, VERIFY, ID, 6, verdict)
    seen: list[int] = []
    store = ResultStore(out, VERIFY, ID)
    recs = run_dataset(range(3), lambda todo: iter(()), lambda i, r: r, store=store,
                       on_record=lambda r: seen.append(r["index"]))  # fmt: skip
    assert [r["index"] for r in recs] == seen == [0, 1, 2]
    assert len(read_records(out, VERIFY)) == 6


def test_output_file_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "m.qnn"
    model.write_bytes(b"model")
    with pytest.raises(InputError, match="folder .* does not exist"):
        check_output_file(tmp_path / "missing" / "a.jsonl")
    with pytest.raises(InputError, match="is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(InputError, match="also an input"):
        check_output_file(model, inputs=[model])
    os.symlink(model, tmp_path / "link.qnn")
    with pytest.raises(InputError, match="also an input"):
        check_output_file(tmp_path / "link.qnn", inputs=[str(model)])
    assert check_output_file(tmp_path / "new.jsonl", inputs=[model, None]) == tmp_path / "new.jsonl"
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # as for an unwritable place
    with pytest.raises(InputError, match="permission denied"):
        check_output_file(tmp_path / "new.jsonl")
    with pytest.raises(InputError, match="permission denied"):
        check_output_file(model)
    with pytest.raises(InputError, match="permission denied"):
        check_output_folder(tmp_path / "report")
    assert not (tmp_path / "new.jsonl").exists()


def test_output_folder_checks(tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        check_output_folder(f)
    with pytest.raises(InputError, match="is a file"):
        check_output_folder(f / "sub")
    assert check_output_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()


def test_write_atomic_replaces_whole_files(tmp_path: Path) -> None:
    p = tmp_path / "x.txt"
    write_atomic(p, "one\n")
    write_atomic(p, b"two\n")
    assert p.read_text() == "two\n" and os.listdir(tmp_path) == ["x.txt"]


@pytest.mark.parametrize("kind", ["verify", "smoothing"])
def test_one_writer_at_a_time(tmp_path: Path, kind: str) -> None:
    """Issue 12 item 12: while a run holds a result file, a second one is refused with one line
    and changes nothing; once the first closes, the file can be resumed."""
    k, ident, make = (VERIFY, ID, verdict) if kind == "verify" else (SMOOTHING, SMOOTH_ID, row)
    out = tmp_path / "o"
    first = ResultStore(out, k, ident)
    first.open()
    first.append(make(0))
    before = out.read_bytes()
    with pytest.raises(InputError, match="another qcert run") as e:
        ResultStore(out, k, ident).open()
    assert "\n" not in str(e.value) and out.read_bytes() == before
    first.append(make(1))
    first.close()
    assert len(run(out, k, ident, 3, make)) == 3
    assert len(read_records(out, k)) == 3


def test_the_lock_is_held_across_processes(tmp_path: Path) -> None:
    """Another process (a second ``qcert verify --out`` on the same file) is refused, and a killed
    holder leaves no lock behind."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "v.jsonl"
    holder = (
        "import sys, time\n"
        "from qcert.runs import VERIFY, ResultStore\n"
        f"s = ResultStore({str(out)!r}, VERIFY, {ID!r}); s.open()\n"
        "print('locked', flush=True); time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"locked"
        with pytest.raises(InputError, match="another qcert run"):
            ResultStore(out, VERIFY, ID).open()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(0.05)
    assert run(out, VERIFY, ID, 2, verdict)[1]["index"] == 1
