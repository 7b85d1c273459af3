"""Type and range checks of option values, wherever they come from: the command line, a config file
or a checkpoint (which can hold anything: ``lr = "fast"``, ``lrn = "maybe"``, NaN)."""

from __future__ import annotations

import math
import numbers
from typing import Any

from .errors import ConfigError


def is_whole(value: Any, minimum: int | None = None) -> bool:
    """A whole number >= ``minimum``; not a bool (True is an int to Python)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def is_finite(value: Any) -> bool:
    """A real number, neither NaN nor infinite; not a bool, not a string."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def require(ok: bool, option: str, wanted: str, value: Any) -> None:
    """Raise ConfigError "OPTION must be WANTED, got VALUE" unless ``ok``."""
    if not ok:
        raise ConfigError(f"{option} must be {wanted}, got {value!r}")


def require_loader_sizes(where: str, batch_size: Any, workers: Any) -> None:
    """ConfigError naming ``where``'s argument for a batch size or worker count a DataLoader cannot take,
    at the call: else the Python API failed at iteration, in torch's words or none (batch_size 0: a
    ZeroDivisionError, -1: '__len__() should return >= 0', workers '2': a comparison TypeError)."""
    for name, value, least in (("batch_size", batch_size, 1), ("workers", workers, 0)):
        require(is_whole(value, least), f"{where}: {name}", f"a whole number >= {least}", value)
