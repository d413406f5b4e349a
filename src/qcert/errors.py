"""Exceptions raised by qcert. Every user-facing error is a :class:`QcertError`."""

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
