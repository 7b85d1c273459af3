"""AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012), faithfully and as fast software.

The names below load with their first use (PEP 562): ``import alexnet`` imports no torch, so that the
command line starts, and answers Ctrl-C, before torch's few seconds of loading.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import AlexNetError, CheckpointError, CheckpointNotFound, ConfigError, DataError, TrainingError, UnknownModelError

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from .checkpoint import load
    from .lrn import LocalResponseNorm
    from .model import AlexNet, AlexNetConfig, create_model, list_models, model_config, register_model

__version__ = "0.1.0"

_LAZY = {
    "load": "checkpoint",
    "LocalResponseNorm": "lrn",
    **dict.fromkeys(("AlexNet", "AlexNetConfig", "create_model", "list_models", "model_config", "register_model"), "model"),
}

__all__ = [
    "AlexNet",
    "AlexNetConfig",
    "AlexNetError",
    "CheckpointError",
    "CheckpointNotFound",
    "ConfigError",
    "DataError",
    "LocalResponseNorm",
    "TrainingError",
    "UnknownModelError",
    "create_model",
    "list_models",
    "load",
    "model_config",
    "register_model",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'alexnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # once: later lookups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
