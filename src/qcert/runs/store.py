"""The resumable result file of a dataset run: one record per sample, appended and synced as soon as
it is decided, so that an interrupted run resumes where it stopped and never loses a finished record.

The rules, in the order :meth:`ResultStore.open` applies them (nothing is written before all pass):

1. The path can be written (see :mod:`qcert.runs.paths`).
2. An existing file must *be* a result file of this kind: every complete line (one that ends with a
   newline) parses as a record of the kind, or is the TSV header. A model, a text file or another
   kind of result file is refused with one error line and left untouched.
3. The file's records must be for this run: their identity (``eps`` and ``model_sha256`` for
   verify, kept in each record; ``model_sha256``, ``sigma``, ``arith`` and ``alpha`` for smoothing,
   kept in the ``OUT.json`` sidecar beside the TSV, as Cohen's columns have no room for them) must
   equal the run's. A file whose records do not say which model they are for (written before qcert
   recorded it) is refused too: its verdicts cannot be checked against this model.
4. A torn last line (what a crash left: no newline, a prefix of a record, possibly followed by NUL
   bytes) is cut off and redone, never counted; so is a last line that ends with a newline but is
   not a whole record (JSON cut short, a row with missing or unreadable fields).

A line that fails to parse anywhere else is an error: a crash tears only the last line.

One writer at a time: :meth:`ResultStore.open` takes an exclusive lock on the file (``flock``, not
waiting) before it reads it, and holds it until :meth:`ResultStore.close`. A second qcert process
given the same file while the first runs is refused with one error line, so two runs never append
the same samples twice. The lock goes with the process: a crashed or killed run leaves none behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import IO, Any

from qcert.errors import InputError
from qcert.runs.paths import PathLike, check_output_file, write_atomic
from qcert.runs.records import IncompleteRecord, Kind, RecordError


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def scan(path: PathLike, kind: Kind) -> tuple[list[dict[str, Any]], int]:
    """The complete records of a result file of ``kind`` and the byte length of the part that holds
    them (the rest is a torn last line). Reads only; raises ``InputError`` for a file that is not
    of this kind."""
    p = Path(path)
    return _scan(p.read_bytes(), p, kind)


def _scan(raw: bytes, p: Path, kind: Kind) -> tuple[list[dict[str, Any]], int]:
    end = raw.rfind(b"\n") + 1
    try:
        lines = raw[:end].decode("utf-8").split("\n")[:-1]
        tail = raw[end:].rstrip(b"\0").decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{p}: not a {kind.name} file (not UTF-8 text)") from None
    first = 0
    if kind.header is not None:
        if not lines:
            if not (kind.header + "\n").startswith(tail):
                raise InputError(f"{p}: not a {kind.name} (expected the header {kind.header!r})")
            return [], 0
        if lines[0].strip() != kind.header:
            raise InputError(f"{p}: not a {kind.name} (expected columns {kind.header!r})")
        first = 1
    records: list[dict[str, Any]] = []
    for no in range(first, len(lines)):
        if not lines[no].strip():
            continue
        try:
            records.append(kind.parse(lines[no]))
        except RecordError as e:
            last = no == len(lines) - 1 and not tail
            if last and isinstance(e, IncompleteRecord) and kind.torn.fullmatch(lines[no]):
                end -= len(lines[no].encode()) + 1  # a torn last line that got its newline
                break
            raise InputError(f"{p}:{no + 1}: not a {kind.name} line ({e})") from None
    if tail and not kind.torn.fullmatch(tail):
        raise InputError(f"{p}: not a {kind.name} file (its unfinished last line is not a record)")
    return records, end


def read_records(path: PathLike, kind: Kind) -> list[dict[str, Any]]:
    """The complete records of an existing result file of ``kind`` (a torn last line left out)."""
    return scan(path, kind)[0]


def _read_all(fd: int) -> bytes:
    parts = []
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        parts.append(chunk)
    return b"".join(parts)


class ResultStore:
    """A resumable result file of ``kind`` at ``path`` for a run identified by ``identity``.

    >>> with ResultStore("v.jsonl", VERIFY, {"eps": 1, "model_sha256": h}) as store:
    ...     done = store.done                    # records already there, by index
    ...     store.append(record)                 # one line, flushed and synced
    """

    def __init__(self, path: PathLike, kind: Kind, identity: dict[str, Any]) -> None:
        self.path = Path(path)
        self.kind = kind
        self.identity = dict(identity)
        self.done: dict[int, dict[str, Any]] = {}
        self._file: IO[str] | None = None

    def open(self) -> dict[int, dict[str, Any]]:
        """Apply the rules of the module docstring; return the finished records by index and get
        ready to append."""
        p = check_output_file(self.path)
        created = not p.exists()
        # opening changes nothing in an existing file; the lock comes before any read or write
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
        locked = False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                raise InputError(
                    f"{p} is being written by another qcert run (it holds the file's lock); "
                    "wait for it to finish or use another --out file"
                ) from None
            records, end = _scan(_read_all(fd), p, self.kind)
            if self.kind.header is None:
                for rec in records:
                    self._check_identity(rec, f"{p}")
            else:
                self._check_sidecar(bool(records))
            if os.fstat(fd).st_size > end:
                os.ftruncate(fd, end)  # cut the torn last line
            self._file = os.fdopen(fd, "a", newline="")
        except BaseException:
            if created and locked:  # leave no empty file behind a refusal
                with contextlib.suppress(OSError):
                    p.unlink()
            os.close(fd)  # releases the lock
            raise
        if self.kind.header is not None and end == 0:
            self._write(self.kind.header)
        self.done = {int(rec[self.kind.key]): rec for rec in records}
        return self.done

    def _check_identity(self, found: dict[str, Any], where: str) -> None:
        for key, want in self.identity.items():
            if key not in found:
                raise InputError(
                    f"{where} does not record the {key} of its results (written by an older "
                    "qcert?), so they cannot be checked against this run; use another --out file"
                )
            if found[key] != want:
                what = "another model" if key == "model_sha256" else f"{key}={found[key]!r}"
                raise InputError(
                    f"{self.path} holds results for {what}, not {want!r}; use another --out file"
                )

    def _check_sidecar(self, has_records: bool) -> None:
        side = _sidecar(self.path)
        meta: Any = None
        if side.exists():
            try:
                meta = json.loads(side.read_text())
            except (UnicodeDecodeError, ValueError, RecursionError):
                meta = None
            if not isinstance(meta, dict):
                raise InputError(f"{side} is not the JSON summary of {self.path}; move it away")
        if has_records:
            self._check_identity(meta if meta is not None else {}, f"{self.path} (in {side.name})")
        elif meta is None or any(meta.get(k) != v for k, v in self.identity.items()):
            check_output_file(side)
            write_atomic(side, json.dumps(self.identity, indent=2) + "\n")

    def _write(self, line: str) -> None:
        assert self._file is not None
        self._file.write(line + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def append(self, record: dict[str, Any]) -> None:
        """Append one record (a line ending in a newline), flushed and synced to disk."""
        self._write(self.kind.format(record))
        self.done[int(record[self.kind.key])] = record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ResultStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
