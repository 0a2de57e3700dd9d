"""Errors polytask raises at its boundaries; each names the field, the value and what is allowed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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


def parse_options(model: Any, options: Mapping[str, Any], *, field: str, owner: str) -> Any:
    """``options`` validated by the pydantic ``model`` of a registry entry (a balancer's, an
    architecture's), or a ConfigError naming ``field.OPTION``, the problem and the allowed
    options of ``owner``."""
    from pydantic import ValidationError

    try:
        return model(**options)
    except ValidationError as exc:
        allowed = one_of(model.model_fields) or "none"
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"])
        msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(f"{field}.{name}: {msg} (options of {owner!r}: {allowed})") from None


def one_of(values) -> str:
    """Format a collection of allowed values for an error message."""
    return ", ".join(str(v) for v in values)
