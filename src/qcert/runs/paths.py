"""Output paths checked before any work starts, and writes that never leave half a file.

Every command that writes results checks each output path first (:func:`check_output_file`,
:func:`check_output_folder`): its folder exists, it can be written, it is not a folder (or, for a
folder, not a file) and it is not one of the command's inputs. A problem is one ``InputError`` line
(exit code 2) before a model is loaded or a sample computed, so a long run never ends in a path
error that loses its results.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from qcert.errors import InputError
from qcert.quant.files import write_atomic  # the one atomic write, re-exported for the runs

__all__ = ["check_output_file", "check_output_folder", "write_atomic"]

PathLike = str | os.PathLike[str]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_inputs(p: Path, what: str, inputs: Iterable[PathLike | None]) -> None:
    for src in inputs:
        if src is not None and (_same_file(p, Path(src)) or p.resolve() == Path(src).resolve()):
            raise InputError(f"{what} {p} is also an input of this command ({src}); name another")


def check_output_file(
    path: PathLike, *, inputs: Iterable[PathLike | None] = (), what: str = "--out"
) -> Path:
    """``path`` as a Path if a file can be written there: its folder exists and is writable, it is
    not a folder or other non-regular file, it is writable if it exists, and it is none of
    ``inputs`` (``what`` names the option in messages). Nothing is created or changed."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{what} {p} is a folder; give a file name")
    if p.exists() and not p.is_file():
        raise InputError(f"{what} {p} is not a regular file")
    folder = p.absolute().parent
    if not folder.is_dir():
        raise InputError(f"{what} {p}: the folder {folder} does not exist")
    _check_inputs(p, what, inputs)
    if p.exists() and not os.access(p, os.W_OK):
        raise InputError(f"{what} {p} cannot be written (permission denied)")
    if not p.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{what} {p}: cannot create files in {folder} (permission denied)")
    return p


def check_output_folder(
    path: PathLike, *, inputs: Iterable[PathLike | None] = (), what: str = "--out"
) -> Path:
    """``path`` as a Path if it is a writable folder, or can be created as one (with its missing
    parents) in a writable folder; it must not be one of ``inputs``."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{what} {p} is not a folder")
    _check_inputs(p, what, inputs)
    existing = p.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{what} {p}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{what} {p}: cannot write in {existing} (permission denied)")
    return p
