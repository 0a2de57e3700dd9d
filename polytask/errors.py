"""Errors polytask raises at its boundaries; each names the field, the value and what is allowed."""

from __future__ import annotations


class PolytaskError(Exception):
    """Base class of every error polytask raises on purpose."""


class ConfigError(PolytaskError, ValueError):
    """A configuration value is missing, unknown or out of range."""


class DataError(PolytaskError, ValueError):
    """Input data does not fit the declared tasks (missing column, bad label, NaN feature...)."""


class RunError(PolytaskError):
    """A run directory or checkpoint is missing, incomplete or corrupt."""


class PolytaskWarning(UserWarning):
    """Something polytask did that the user may not expect (a likely label used as an input,
    a tiny test split): the run goes on, and the CLI prints it as one yellow line."""


def one_of(values) -> str:
    """Format a collection of allowed values for an error message."""
    return ", ".join(str(v) for v in values)
