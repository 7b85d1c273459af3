"""AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012), faithfully and as fast software."""

from .checkpoint import load
from .errors import AlexNetError, CheckpointError, ConfigError, DataError, TrainingError, UnknownModelError
from .lrn import LocalResponseNorm
from .model import AlexNet, AlexNetConfig, create_model, list_models, model_config, register_model

__version__ = "0.1.0"

__all__ = [
    "AlexNet",
    "AlexNetConfig",
    "AlexNetError",
    "CheckpointError",
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
