"""Training configuration: one dataclass, named presets, config files, and how they are resolved.

Resolution order (later wins): the dataclass defaults, the preset, the ``--config`` file,
command-line options. The result is written to ``config.json`` beside every run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checks import is_finite, is_whole, require
from .errors import ConfigError


@dataclass
class TrainConfig:
    """Everything a training run depends on."""

    data: str | None = None  # None: Fashion-MNIST from Debian's folder
    model: str = "alexnet_paper"
    model_options: dict[str, Any] = field(default_factory=dict)  # AlexNetConfig overrides
    epochs: int = 90
    batch_size: int = 128  # the global batch: split across ranks when distributed
    eval_batch_size: int = 256
    optimizer: str = "sgd"  # "paper": the paper's update rule (optim.PaperSGD); "sgd": torch.optim.SGD
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    label_smoothing: float = 0.0
    # "plateau": lr / 10 when the validation error stalls (the paper); "step": lr * gamma every
    # step_size epochs; "onecycle": linear warm-up then linear decay to 0; "cosine"; "constant".
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    step_size: int = 30
    gamma: float = 0.1
    plateau_patience: int = 4
    plateau_max_reductions: int = 3
    data_preset: str | None = None  # preprocessing recipe (data.presets); None: the data's default
    strict: bool = False  # stop at the first unreadable image instead of skipping it
    seed: int = 0
    workers: int = 4
    device: str = "auto"
    amp: str = "auto"  # auto | bf16 | fp16 | none
    channels_last: bool = True
    compile: bool = False
    out: str | None = None
    preset: str = "paper"
    resume: str | None = None  # a run folder or checkpoint to continue
    save_every: int = 0  # also checkpoint every N optimisation steps (0: at epoch ends only)
    on_nonfinite: str = "stop"  # "stop": end the run; "skip": skip the batch and count it
    # A loss far above ln(classes) or a layer whose ReLUs all died (health.py): "stop" the run with
    # one line naming the remedy, "warn" once and go on, or "off".
    health: str = "stop"
    tensorboard: bool = False
    # Scaling out (see docs/distributed.md): seconds a collective may wait for another rank before
    # the run stops with an error; the paper's two-device split ("cpu,cpu", "cuda:0,cuda:1", "auto").
    dist_timeout: float = 1800.0
    tower_devices: list[str] = field(default_factory=list)
    # Fine-tuning.
    num_classes: int | None = None  # if set, the data must have this many classes
    init_from: str | None = None  # our checkpoint or a torchvision alexnet state dict
    freeze: list[str] = field(default_factory=list)  # layer names, or "features" for conv1..conv5
    lr_mult: dict[str, float] = field(default_factory=dict)  # layer -> learning-rate multiplier

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # SPEC section 2: the paper's update rule, batch 128, momentum 0.9, weight decay 5e-4, lr 0.01
    # divided by 10 on a validation plateau (three times), a 90-epoch budget. One departure: biases
    # 0.1 instead of 1 (Caffe's bvlc_alexnet), without which a data set of few classes diverges in
    # its first steps and dies (docs/training.md); --model-option init_bias=1 restores the paper's.
    "paper": {
        "model": "alexnet_paper",
        "model_options": {"init_bias": 0.1},
        "optimizer": "paper",
        "epochs": 90,
        "batch_size": 128,
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "plateau",
        "data_preset": "paper",
    },
    # The default for photos (`alexnet train --data DIR`): the 2012 architecture trained so that it
    # learns on data sets of any size (docs/training.md). Departures from "paper": He init with zero
    # biases (the paper's N(0, 0.01^2) + biases 1 diverges on 10 classes), Nesterov SGD with a 2-epoch
    # warm-up and a linear decay to 0 over 30 epochs, label smoothing 0.1, scale augmentation.
    "photos": {
        "model": "alexnet_paper",
        "model_options": {"init": "kaiming"},
        "optimizer": "sgd",
        "epochs": 30,
        "batch_size": 128,
        "lr": 0.01,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "label_smoothing": 0.1,
        "schedule": "onecycle",
        "warmup_epochs": 2.0,
        "data_preset": "photos",
    },
    # torchvision's references/classification recipe for alexnet: lr 0.01, batch 256 (8 x 32),
    # weight decay 1e-4, lr x 0.1 every 30 epochs, 90 epochs.
    "owt": {
        "model": "alexnet_owt",
        "optimizer": "sgd",
        "epochs": 90,
        "batch_size": 256,
        "lr": 0.01,
        "weight_decay": 1e-4,
        "schedule": "step",
        "step_size": 30,
        "gamma": 0.1,
        "data_preset": "torchvision",
    },
    # The default job: AlexNet on Fashion-MNIST on a 2-core CPU within 10 minutes.
    "fashion_mnist": {
        "model": "alexnet_small",
        "optimizer": "sgd",
        "epochs": 5,
        "batch_size": 128,
        "lr": 0.08,
        "nesterov": True,
        "label_smoothing": 0.1,
        "schedule": "onecycle",
        "warmup_epochs": 0.5,
        "workers": 0,
        "data_preset": "fashion_mnist",
    },
}

_CHOICES = {
    "optimizer": ("paper", "sgd"),
    "schedule": ("plateau", "step", "onecycle", "cosine", "constant"),
    "on_nonfinite": ("stop", "skip"),
    "health": ("stop", "warn", "off"),
}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a TOML or YAML file (top-level keys are TrainConfig fields)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigError(f"--config {path}: reading YAML needs PyYAML (pip install pyyaml), or use TOML") from None
            values = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            values = json.loads(text)
        else:
            import tomllib

            values = tomllib.loads(text)
    except ConfigError:
        raise
    except Exception as e:  # each parser has its own error type
        raise ConfigError(f"--config {path}: cannot parse: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a table of options at the top level")
    if not isinstance(values.get("model_options", {}), dict):
        raise ConfigError(f"--config {path}: model_options must be a table of model options")
    return values


def resolve_config(preset: str | None, overrides: dict[str, Any], config_file: str | Path | None = None) -> TrainConfig:
    """Defaults <- preset <- config file <- ``overrides`` (entries that are None are ignored)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    file_values = read_config_file(config_file) if config_file else {}
    preset = preset or file_values.pop("preset", None)
    file_values.pop("preset", None)
    if preset is None:
        from .data.fashion_mnist import is_fashion_mnist

        data = overrides.get("data", file_values.get("data"))
        preset = "fashion_mnist" if data is None or is_fashion_mnist(data) else "photos"
    if preset not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {preset!r}; choose from: {', '.join(sorted(PRESETS))}")
    model_options = {
        **PRESETS[preset].get("model_options", {}),
        **file_values.pop("model_options", {}),
        **overrides.pop("model_options", {}),
    }
    values = {**PRESETS[preset], **file_values, **overrides, "preset": preset, "model_options": model_options}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


# Range checks of the numeric options: option -> (test on a finite number, the test in words).
_FLOATS: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": (lambda v: v > 0, "> 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "warmup_epochs": (lambda v: v >= 0, ">= 0"),
    "gamma": (lambda v: v > 0, "> 0"),
    "dist_timeout": (lambda v: v > 0, "> 0 (seconds)"),
}
_INTS = {"epochs": 1, "batch_size": 1, "eval_batch_size": 1, "step_size": 1, "plateau_patience": 1,
         "plateau_max_reductions": 0, "workers": 0, "save_every": 0, "seed": None}  # option -> minimum
_BOOLS = ("nesterov", "strict", "channels_last", "compile", "tensorboard")
_STRINGS = ("model", "device", "amp", "preset")
_PATHS = ("data", "data_preset", "out", "resume", "init_from")  # or None


def _option(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the first option that cannot work: of the wrong type (a config file
    can hold anything), out of range, NaN or infinite, or not one of its choices."""
    for name, (test, wanted) in _FLOATS.items():
        value = getattr(cfg, name)
        require(is_finite(value) and test(value), _option(name), f"a finite number {wanted}", value)
    for name, minimum in _INTS.items():
        wanted = "a whole number" + ("" if minimum is None else f" >= {minimum}")
        require(is_whole(getattr(cfg, name), minimum), _option(name), wanted, getattr(cfg, name))
    for name in _BOOLS:
        require(isinstance(getattr(cfg, name), bool), name, "true or false", getattr(cfg, name))
    for name in _STRINGS + _PATHS:
        value = getattr(cfg, name)
        ok = isinstance(value, (str, os.PathLike)) or (value is None and name in _PATHS)
        require(ok, _option(name), "a string", value)
    for name, choices in _CHOICES.items():
        require(getattr(cfg, name) in choices, name, f"one of {', '.join(choices)}", getattr(cfg, name))
    _validate_containers(cfg)


def _validate_containers(cfg: TrainConfig) -> None:
    """The list and table options: their types, and every layer multiplier finite and >= 0."""
    ok = cfg.num_classes is None or is_whole(cfg.num_classes, 1)
    require(ok, "--num-classes", "a whole number >= 1", cfg.num_classes)
    require(isinstance(cfg.model_options, dict), "model_options", "a table of model options", cfg.model_options)
    for name in ("freeze", "tower_devices"):
        value = getattr(cfg, name)
        require(isinstance(value, list) and all(isinstance(v, str) for v in value), name, "a list of strings", value)
    require(isinstance(cfg.lr_mult, dict), "--lr-mult", "a table of layer = multiplier", cfg.lr_mult)
    for layer, mult in cfg.lr_mult.items():
        require(is_finite(mult) and mult >= 0, f"--lr-mult {layer}", "a finite number >= 0", mult)
