"""Files, written once: the atomic write every qcert output goes through, the reading of a whole
file with one :class:`~qcert.errors.ModelFileError` per failure, and the parser of a safetensors
file that carries a qcert JSON document in its metadata (the ``.qnn`` model file and the float
model file share it).

It lives in ``quant`` because ``quant`` imports nothing of qcert but ``errors`` and its model file
needs it; every package above uses it from here.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load

from qcert.errors import ModelFileError

__all__ = ["write_atomic", "read_bytes", "read_safetensors"]


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` (``str`` as UTF-8) to ``path`` so that ``path`` is either the old file or
    the whole new one, never a part: a temporary file in the same folder is written, flushed to
    disk (``fsync``) and renamed over ``path`` (``os.replace``); on any error the temporary file
    is removed and the error propagates."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    # a fresh name (``x``: never an existing file), created with the usual permissions
    tmp = os.path.join(folder, f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    f = open(tmp, "xb")  # noqa: SIM115 (closed below, before the rename)
    try:
        with f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable where folders can be synced
        dfd = os.open(folder or ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def read_bytes(path: str | os.PathLike[str], what: str) -> bytes:
    """The bytes of the file at ``path``; a missing or unreadable file raises
    :class:`ModelFileError` saying so (``what`` names the kind of file, e.g. ``"model file"``)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: is a directory, not a {what}") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read {what} ({e.strerror})") from None


def read_safetensors(
    raw: bytes, name: str, key: str, what: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Parse a safetensors file whose metadata holds a JSON object under ``key``: return that
    object and the tensors. Never unpickles. Every malformation (truncated, bad JSON, no ``key``
    entry, corrupt tensor data) raises :class:`ModelFileError` naming ``name`` and the problem;
    ``what`` names the kind of file in the message of a missing entry."""
    if len(raw) < 8:
        raise ModelFileError(f"{name}: truncated file ({len(raw)} bytes): not a safetensors file")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise ModelFileError(
            f"{name}: truncated file: header says {n} bytes of JSON, only {len(raw) - 8} follow"
        )
    try:
        st_header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{name}: the safetensors header is not valid JSON ({e})") from None
    if not isinstance(st_header, dict):
        raise ModelFileError(f"{name}: the safetensors header is not a JSON object")
    meta = st_header.get("__metadata__") or {}
    if not isinstance(meta, dict) or key not in meta:
        raise ModelFileError(
            f"{name}: not a {what}: no qcert header (the safetensors metadata has no '{key}' entry)"
        )
    try:
        header = json.loads(meta[key])
    except (TypeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{name}: the {key} header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{name}: the {key} header is not a JSON object")
    ends = [
        v.get("data_offsets", [0, 0])[1]
        for k, v in st_header.items()
        if k != "__metadata__" and isinstance(v, dict)
    ]
    if ends and max(ends) > len(raw) - 8 - n:
        raise ModelFileError(
            f"{name}: truncated file: tensor data needs {max(ends)} bytes, "
            f"only {len(raw) - 8 - n} present"
        )
    try:
        tensors = dict(st_load(raw))
    except (SafetensorError, ValueError, TypeError) as e:
        raise ModelFileError(f"{name}: malformed (corrupt) safetensors data ({e})") from None
    return header, tensors
