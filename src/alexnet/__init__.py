"""AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012), faithfully and as fast software.

The paper's network (two towers, LRN, overlapping pooling, dropout, its initialisation), torchvision's
and Caffe's variants and the paper's ablations, with its training recipe, evaluation, prediction,
fc7 retrieval and export. Where to start:

* ``alexnet.create_model(name, num_classes=None, pretrained=False, **overrides)``: a network by its
  name in ``alexnet.list_models()``, any :class:`AlexNetConfig` field overridden (``lrn=False``);
* ``alexnet.load(path)``: a checkpoint ready to use, with ``model.classes`` and ``model.preprocess``;
* ``alexnet.LocalResponseNorm``: the paper's LRN as a layer;
* the ``alexnet`` command (``python -m alexnet --help``): train, evaluate, predict, features,
  retrieve, export, import, summary, ...; the same jobs in Python: :func:`alexnet.train.fit`,
  :func:`alexnet.evaluate.evaluate`, :func:`alexnet.predict.predict`, :mod:`alexnet.retrieval`.

Errors meant for users are :class:`AlexNetError`'s (ConfigError, DataError, CheckpointError, ...).

The names below, and the modules (``alexnet.train``), load with their first use (PEP 562): ``import
alexnet`` imports no torch, so that the command line starts, and answers Ctrl-C, before torch's few
seconds of loading.
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


def _submodules() -> set[str]:
    """The package's public modules (``train``, ``retrieval``, ``data``, ...), from its folder."""
    import pkgutil

    return {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}


def __getattr__(name: str) -> Any:
    """A lazily loaded name of ``__all__`` (``alexnet.load``, ``alexnet.AlexNet``, ...), or a module of the
    package (``alexnet.train.fit``, as the docstring above has it), imported at its first use."""
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name in _submodules():
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'alexnet' has no attribute {name!r}")
    globals()[name] = value  # once: later lookups find it without this function
    return value


def __dir__() -> list[str]:
    """The public names, the lazily loaded ones and the modules included; not this file's own imports
    (``Any``, ``importlib``), which tab completion would offer beside them."""
    return sorted({*__all__, *_submodules(), *(n for n in globals() if n.startswith("__"))})
