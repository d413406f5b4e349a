"""Restricted unpickling for dataset files that are stored as pickles.

Only the globals a pickled numpy array needs are resolvable; any other global (``os.system``,
``builtins.eval``, ...) makes loading fail with :class:`~qcert.errors.DataError` *before* it
could be called. Dicts, lists, tuples, ints and strings need no globals and are allowed.
"""

from __future__ import annotations

import io
import pickle
from typing import IO, Any

import numpy as np

from qcert.errors import DataError

__all__ = ["ALLOWED_GLOBALS", "restricted_load", "restricted_loads"]

# ``ndarray.__reduce__`` names numpy's array reconstructor; take the function from there so that
# no private numpy module has to be imported (it lives in ``numpy.core`` in numpy 1.x and in
# ``numpy._core`` in numpy 2.x, and pickles written by either name it by its module path).
_RECONSTRUCT = np.zeros(1).__reduce__()[0]

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
"""The only ``(module, name)`` globals a dataset pickle may reference."""


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`."""

    def __init__(self, file: IO[bytes], *, source: str, encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._source}: refusing to unpickle the global {module}.{name} "
                "(only numpy arrays, dicts, lists, tuples, numbers and strings are allowed)"
            ) from None


def restricted_load(file: IO[bytes], *, source: str, encoding: str = "bytes") -> Any:
    """Unpickle one object from ``file``, allowing only numpy arrays and plain containers.

    Args:
        file: Binary file object positioned at the start of the pickle.
        source: What is being read (a path), used in error messages.
        encoding: How Python 2 ``str`` objects are decoded (``"bytes"`` or ``"latin1"``).

    Raises:
        DataError: If the pickle references a disallowed global or is corrupt.
    """
    try:
        return _RestrictedUnpickler(file, source=source, encoding=encoding).load()
    except DataError:
        raise
    except Exception as exc:  # corrupt data can raise almost anything from inside pickle
        raise DataError(f"{source}: corrupt or unreadable pickle ({exc})") from exc


def restricted_loads(data: bytes, *, source: str, encoding: str = "bytes") -> Any:
    """Like :func:`restricted_load`, for a pickle held in memory."""
    return restricted_load(io.BytesIO(data), source=source, encoding=encoding)
