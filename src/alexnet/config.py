"""Training configuration: one dataclass, named presets, config files, and how they are resolved.

Resolution order (later wins): the dataclass defaults, the preset, the ``--config`` file,
command-line options. The result is written to ``config.json`` beside every run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    # divided by 10 on a validation plateau (three times), a 90-epoch budget.
    "paper": {
        "model": "alexnet_paper",
        "optimizer": "paper",
        "epochs": 90,
        "batch_size": 128,
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "plateau",
        "data_preset": "paper",
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
        preset = "fashion_mnist" if data is None or is_fashion_mnist(data) else "paper"
    if preset not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {preset!r}; choose from: {', '.join(sorted(PRESETS))}")
    model_options = {**file_values.pop("model_options", {}), **overrides.pop("model_options", {})}
    values = {**PRESETS[preset], **file_values, **overrides, "preset": preset, "model_options": model_options}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the first option that cannot work."""
    for name in ("epochs", "batch_size", "eval_batch_size"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {getattr(cfg, name)!r}")
    if cfg.lr <= 0:
        raise ConfigError(f"--lr must be positive, got {cfg.lr}")
    if not cfg.dist_timeout > 0:
        raise ConfigError(f"--dist-timeout must be a positive number of seconds, got {cfg.dist_timeout!r}")
    if cfg.workers < 0 or cfg.save_every < 0:
        raise ConfigError("--workers and --save-every must be >= 0")
    for name, choices in _CHOICES.items():
        if getattr(cfg, name) not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {getattr(cfg, name)!r}")
