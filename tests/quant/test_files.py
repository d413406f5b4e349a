"""The one atomic write and the file reader every qcert file goes through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qcert.errors import ModelFileError
from qcert.quant import files
from qcert.quant.files import read_bytes, write_atomic


def test_atomic_write_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "m.qnn"
    write_atomic(path, b"first")
    write_atomic(path, "second, as text ε")
    assert path.read_text(encoding="utf-8") == "second, as text ε"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.qnn"]
    # the usual permissions of a new file (not a private temporary file's)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "metrics.json"
    write_atomic(path, "{}")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        write_atomic(path, "{half")
    assert path.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_read_bytes_names_the_problem(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"xyz")
    assert read_bytes(tmp_path / "a", "model file") == b"xyz"
    with pytest.raises(ModelFileError, match="no such model file"):
        read_bytes(tmp_path / "missing", "model file")
    with pytest.raises(ModelFileError, match="is a directory, not a float model file"):
        read_bytes(tmp_path, "float model file")
