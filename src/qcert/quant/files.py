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
import re
import secrets
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load

from qcert.errors import ModelFileError

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_JSON_DEPTH",
    "json_depth",
    "load_json",
    "read_bytes",
    "read_safetensors",
    "write_atomic",
]

#: the largest safetensors header read (the ``safetensors`` library's own limit, 100 MB); a
#: larger declared length is refused before a byte of it is decoded
MAX_HEADER_BYTES = 100_000_000
#: the deepest nesting of JSON arrays and objects read from a file (a qcert header needs 4):
#: deeper text is refused before it is parsed, so no input reaches Python's recursion limit
MAX_JSON_DEPTH = 64

_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]")
_CHUNK = 1 << 20


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON ``text``, brackets inside strings not
    counted; computed without recursion, in time and memory linear in the text (malformed text
    gets some number, and then fails to parse)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", _ESCAPE.sub("", text))).encode("ascii")
    top = depth = 0
    for k in range(0, len(brackets), _CHUNK):
        a = np.frombuffer(brackets[k : k + _CHUNK], dtype=np.uint8)
        steps = np.where((a == ord("[")) | (a == ord("{")), 1, -1)
        levels = np.cumsum(steps, dtype=np.int64) + depth
        top, depth = max(top, int(levels.max())), int(levels[-1])
    return top


def load_json(text: str | bytes, where: str) -> Any:
    """Parse JSON ``text`` with the limits of this module: at most :data:`MAX_JSON_DEPTH` levels
    deep; every failure (bad UTF-8, bad JSON, too deep, an integer of too many digits) raises
    :class:`ModelFileError` starting with ``where``."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        depth = json_depth(text)
        if depth > MAX_JSON_DEPTH:
            raise ModelFileError(
                f"{where} nests {depth} levels deep; the limit is {MAX_JSON_DEPTH}"
            )
        return json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise ModelFileError(f"{where} is not valid JSON ({e})") from None


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
    if n > MAX_HEADER_BYTES:
        raise ModelFileError(
            f"{name}: the safetensors header claims {n} bytes; the limit is {MAX_HEADER_BYTES}"
        )
    if n > len(raw) - 8:
        raise ModelFileError(
            f"{name}: truncated file: header says {n} bytes of JSON, only {len(raw) - 8} follow"
        )
    st_header = load_json(raw[8 : 8 + n], f"{name}: the safetensors header")
    if not isinstance(st_header, dict):
        raise ModelFileError(f"{name}: the safetensors header is not a JSON object")
    meta = st_header.get("__metadata__") or {}
    if not isinstance(meta, dict) or key not in meta:
        raise ModelFileError(
            f"{name}: not a {what}: no qcert header (the safetensors metadata has no '{key}' entry)"
        )
    if not isinstance(meta[key], str):
        raise ModelFileError(f"{name}: the {key} header is not a JSON string")
    header = load_json(meta[key], f"{name}: the {key} header")
    if not isinstance(header, dict):
        raise ModelFileError(f"{name}: the {key} header is not a JSON object")
    data = len(raw) - 8 - n
    for k, v in st_header.items():
        if k != "__metadata__":
            _check_entry(name, k, v, data)
    try:
        tensors = dict(st_load(raw))
    except (SafetensorError, ValueError, TypeError) as e:
        raise ModelFileError(f"{name}: malformed (corrupt) safetensors data ({e})") from None
    return header, tensors


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_entry(name: str, key: str, entry: Any, data: int) -> None:
    """One tensor entry of a safetensors header: ``dtype`` a string, ``shape`` a list of counts,
    ``data_offsets`` two counts ``[begin, end]`` with ``begin <= end <= data`` (the bytes of
    tensor data in the file)."""
    where = f"{name}: tensor {key!r}"
    if not isinstance(entry, dict):
        raise ModelFileError(f"{where}: its safetensors entry is not a JSON object")
    if not isinstance(entry.get("dtype"), str):
        raise ModelFileError(f"{where}: 'dtype' is missing or not a string")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise ModelFileError(f"{where}: 'shape' must be a list of non-negative integers")
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise ModelFileError(
            f"{where}: 'data_offsets' must be a list of two non-negative integers, got {offsets!r}"
        )
    begin, end = offsets
    if begin > end:
        raise ModelFileError(f"{where}: 'data_offsets' {offsets} end before they begin")
    if end > data:
        raise ModelFileError(
            f"{name}: truncated file: tensor data needs {end} bytes, only {data} present"
        )
