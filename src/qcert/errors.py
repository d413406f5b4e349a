"""Every exception and warning class qcert raises, in one place. Every user-facing error is a
:class:`QcertError`; the modules that raise them re-export them where users first found them."""

from __future__ import annotations


class QcertError(Exception):
    """Base class of all errors qcert raises on bad input or bad files."""


class FormatError(QcertError, ValueError):
    """A fixed-point format, rounding rule or layer description is invalid."""


class ModelFileError(QcertError):
    """A ``.qnn`` model file is malformed (bad JSON, missing tensor, wrong dtype/shape, ...)."""


class DataError(QcertError):
    """A dataset is missing, corrupt, or not in the expected layout."""


class InputError(QcertError, ValueError):
    """An input tensor has the wrong shape, dtype, range, or contains NaN."""


class ConfigError(InputError):
    """A configuration is invalid (unknown architecture, method or loss, bad numbers): a kind of
    bad input, so ``except InputError`` catches it too."""


class SmoothingError(QcertError, ValueError):
    """Invalid argument to the randomized-smoothing code (noise level, probability, count...)."""


class VnnlibError(InputError):
    """A VNN-LIB file is malformed or outside the supported subset."""


class GraphMismatch(ModelFileError):
    """An ONNX graph differs from the one qcert expects (the message says where)."""


class InexactExportWarning(UserWarning):
    """A QDQ graph (exported or imported) that may not equal the integer semantics bit for bit."""
