"""Training configuration: one dataclass, named presets, config files, and how they are resolved.

Resolution order (later wins): the dataclass defaults, the preset, the ``--config`` file,
command-line options. The result is written to ``config.json`` beside every run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checks import is_finite, is_whole, require
from .errors import ConfigError


def opt(
    default: Any = dataclasses.MISSING,
    help: str | None = None,
    *,
    check: tuple[Callable[[Any], bool], str] | None = None,
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    cli: bool = True,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A TrainConfig field declared once: its default, its range or choices (checked by
    :func:`validate` on every source) and its command-line flag and help (``alexnet train``'s
    options are generated from these; ``cli=False``: no flag)."""
    meta = {"help": help, "check": check, "choices": choices, "flag": flag, "metavar": metavar, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


POSITIVE = (lambda v: v > 0, "> 0")
NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
FRACTION = (lambda v: 0 <= v < 1, "in [0, 1)")
AT_LEAST_1 = (lambda v: v >= 1, ">= 1")
PATH_OPTIONS = ("data", "out", "resume", "init_from")  # files or folders: ~ is the home folder, "" refused
# The data order's generator takes seed * 100003 + epoch, which must fit torch's 64 bits.
SEED_RANGE = (lambda v: abs(v) < 2**40, "with |seed| < 2**40")


@dataclass
class TrainConfig:
    """Everything a training run depends on; each field is also an ``alexnet train`` option."""

    data: str | None = opt(None, "Fashion-MNIST IDX folder, CIFAR batches, a packed folder, or an image folder "
                           "(CLASS/IMAGE, train/ and val/ of those, or the ILSVRC-2012 layout)")  # None: Debian's FMNIST
    model: str = opt("alexnet_paper", "model name (see 'alexnet models')")
    model_options: dict[str, Any] = opt(factory=dict, help="model config override, e.g. lrn=false, towers=1",
                                        flag="--model-option", metavar="KEY=VALUE")  # AlexNetConfig overrides
    epochs: int = opt(90, "training epochs", check=AT_LEAST_1)
    batch_size: int = opt(128, "images per optimisation step: the global batch, split evenly over the processes "
                          "of a distributed run", check=AT_LEAST_1)
    eval_batch_size: int = opt(256, "images per evaluation batch", check=AT_LEAST_1)
    optimizer: str = opt("sgd", "paper: the paper's update rule (optim.PaperSGD); sgd: torch.optim.SGD",
                         choices=("paper", "sgd"))
    lr: float = opt(0.01, "(peak) learning rate", check=POSITIVE)
    momentum: float = opt(0.9, "SGD momentum", check=FRACTION)
    weight_decay: float = opt(5e-4, "L2 weight decay", check=NON_NEGATIVE)
    bias_decay: bool = opt(True, "weight decay on biases too (the paper's cuda-convnet, like Caffe, decayed weights only: "
                           "preset paper turns it off)")
    nesterov: bool = opt(False, "Nesterov momentum (sgd)")
    label_smoothing: float = opt(0.0, "cross-entropy label smoothing (0: off)", check=FRACTION)
    schedule: str = opt("cosine", "plateau: lr / 10 when the validation error stalls (the paper); step: lr x gamma "
                        "every step-size epochs; onecycle: linear warm-up then linear decay to 0; cosine; constant",
                        choices=("plateau", "step", "onecycle", "cosine", "constant"))
    warmup_epochs: float = opt(0.0, "linear learning-rate warm-up (epochs)", check=NON_NEGATIVE)
    step_size: int = opt(30, "step schedule: epochs between reductions", check=AT_LEAST_1)
    gamma: float = opt(0.1, "step schedule: the factor of each reduction", check=POSITIVE)
    plateau_patience: int = opt(4, "plateau schedule: epochs without improvement before lr / 10",
                                check=AT_LEAST_1, flag="--patience")
    plateau_max_reductions: int = opt(3, "plateau schedule: stop after this many reductions stall",
                                      check=NON_NEGATIVE, flag="--max-reductions")
    data_preset: str | None = opt(None, "preprocessing recipe (default: the data's own)",
                                  choices=("photos", "paper", "torchvision", "fashion_mnist", "cifar"))
    strict: bool = opt(False, "stop at the first unreadable image instead of skipping it")
    seed: int = opt(0, "seed of the initialisation, the data order, augmentation and dropout", check=SEED_RANGE)
    workers: int = opt(4, "data-loading worker processes", check=NON_NEGATIVE)
    device: str = opt("auto", "auto (CUDA if present), cpu, cuda, cuda:N or mps")
    decode: str = opt("auto", "where an image folder's JPEGs are decoded and resized: cpu (the loader's workers), device "
                      "(the training device: nvJPEG on a GPU, the workers only read files), auto (device on CUDA, else cpu)",
                      choices=("auto", "cpu", "device"))
    amp: str = opt("auto", "mixed precision: auto (bf16 where the hardware has it, fp16 on CUDA GPUs without bf16), "
                   "bf16, fp16, none (float32, as the paper trained)")
    channels_last: bool = opt(True, "NHWC memory format")
    compile: bool = opt(False, "torch.compile the model")
    out: str | None = opt(None, "run folder (default runs/DATE-TIME-MODEL); one that holds a run is refused")
    preset: str = opt("paper", "fashion_mnist (default without --data), cifar (default for CIFAR batches), photos (default "
                      "for other --data), paper or owt")
    resume: str | None = opt(None, "continue the run in this folder (or from this checkpoint) exactly", metavar="RUN")
    save_every: int = opt(0, "also checkpoint every N steps (0: at epoch ends only)", check=NON_NEGATIVE)
    on_nonfinite: str = opt("stop", "a NaN/inf loss stops the run (default) or skips the batch", choices=("stop", "skip"))
    # A loss far above ln(classes) or a layer whose ReLUs all died (health.py).
    health: str = opt("stop", "a diverged loss (far above ln(classes)) or a layer of dead ReLUs stops the run "
                      "(default), warns, or is ignored", choices=("stop", "warn", "off"))
    tensorboard: bool = opt(False, "also log to RUN/tensorboard")
    # Scaling out (see docs/distributed.md).
    dist_timeout: float = opt(1800.0, "a distributed run stops with an error when a rank is silent this long "
                              "(seconds)", check=POSITIVE, metavar="SECONDS")
    tower_devices: list[str] = opt(factory=list, help="the paper's model parallelism: each tower on its own device, "
                                   "e.g. cuda:0,cuda:1 (auto: process r of a machine takes cuda:2r,cuda:2r+1; none: off)",
                                   flag="--towers", metavar="DEV0,DEV1")
    # Fine-tuning.
    num_classes: int | None = opt(None, "check the data has this many classes (fc8 is rebuilt)", check=AT_LEAST_1)
    init_from: str | None = opt(None, "start from these weights (our checkpoint, torchvision's alexnet)", metavar="WEIGHTS")
    freeze: list[str] = opt(factory=list, help="comma-separated layers to keep fixed, e.g. features or conv1,conv2",
                            metavar="LAYERS")
    lr_mult: dict[str, float] = opt(factory=dict, help="per-layer learning-rate multipliers, e.g. fc8=10 or features=0.1,conv1=0 "
                                    "(--freeze's layer names; a layer outranks its group)",
                                    metavar="LAYER=X")

    def to_dict(self) -> dict[str, Any]:
        """Every option as plain values (lists and dicts copied): config.json's ``train`` and a checkpoint's
        ``train_config``."""
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # SPEC section 2: the paper's update rule, batch 128, momentum 0.9, weight decay 5e-4, lr 0.01
    # divided by 10 on a validation plateau (three times), a 90-epoch budget. The rule's decay is of
    # the weights w: cuda-convnet, which the paper trained with, gives biases a weight cost of 0
    # (its layer.cu builds their Weights with wc 0), as Caffe's decay_mult 0 does. One departure: biases
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
        "bias_decay": False,
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
    # weight decay 1e-4, lr x 0.1 every 30 epochs, 90 epochs; its RandomResizedCrop and normalisation
    # (data preset "torchvision").
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
    # The default job: AlexNet on Fashion-MNIST, 5 epochs, about 4-13 minutes on a 2-core CPU: 4 in bf16, 12 in float32 (README, Results).
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

# The default for CIFAR batches: the Fashion-MNIST recipe on 32 px colour images (alexnet_small
# takes them as they are; 57 M parameters at 224 px would upscale each image 7x), 15 epochs.
PRESETS["cifar"] = {**PRESETS["fashion_mnist"], "model_options": {"input_size": 32}, "epochs": 15, "data_preset": "cifar"}

def read_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a TOML, YAML or JSON file (top-level keys are TrainConfig fields), or a run's
    config.json (its options, to run it again)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: {'a folder, not a file' if path.is_dir() else 'file not found'}: {path}")
    try:
        text = path.read_text(encoding="utf-8")
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
    if is_run_record(values):  # a run's config.json: the run's options, to run it again
        values = run_options(values)
        if values.get("optimizer") == "paper":  # older runs recorded the preset's Nesterov, which PaperSGD never used
            values.pop("nesterov", None)
        values.setdefault("bias_decay", True)  # runs from before --bias-decay (3f28a16) decayed biases under any preset
    if not isinstance(values.get("model_options", {}), dict):
        raise ConfigError(f"--config {path}: model_options must be a table of model options")
    if "resume" in values:  # a resume takes its run's own configuration, not a file's
        raise ConfigError(f"--config {path}: 'resume' cannot be set in a file; continue a run with --resume DIR")
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"--config {path}: unknown training option(s): " + ", ".join(_key_hint(k) for k in unknown))
    for name in PATH_OPTIONS:  # a typed ~ is the home folder (cli.options._path); a file's too
        if isinstance(values.get(name), str) and values[name].startswith("~"):
            values[name] = os.path.expanduser(values[name])
    return values


def is_run_record(values: dict[str, Any]) -> bool:
    """Whether a config file's table is a run's config.json, which holds the run's options under
    "train" beside the model, the data and the environment it ran in."""
    return isinstance(values.get("train"), dict) and "environment" in values


def run_options(record: dict[str, Any]) -> dict[str, Any]:
    """The options of the run whose config.json is ``record``, without where it was written (``out``)
    or resumed from (``resume``): the new run has its own folder."""
    return {k: v for k, v in record["train"].items() if k not in ("out", "resume")}


def _key_hint(key: str) -> str:
    """An unknown key of a config file, with the key that means what its command-line twin means."""
    spelled = "--" + key.replace("_", "-")
    known = next((name for name in _FIELDS if flag(name) == spelled), None)
    if known is not None:
        return f"{key} (write {known})"
    if key == "dropout":
        return "dropout (write it under [model_options])"
    return key


def given(overrides: dict[str, Any]) -> dict[str, Any]:
    """The options of ``overrides`` that were given (None: not), paths as strings (``Path("runs/x")``)
    and tuples as lists (``freeze=("features",)``), as a config file or the command line gives them."""
    return {k: os.fspath(v) if isinstance(v, os.PathLike) else list(v) if isinstance(v, tuple) else v
            for k, v in overrides.items() if v is not None}


def refuse_unknown(names: Iterable[str]) -> None:
    """ConfigError naming the options that are no TrainConfig field."""
    unknown = set(names) - set(_FIELDS)
    if unknown:
        raise ConfigError(f"unknown training option(s): {', '.join(sorted(unknown))}")


def resolve_config(
    preset: str | None = None, overrides: dict[str, Any] | None = None, config_file: str | Path | None = None
) -> TrainConfig:
    """Defaults <- preset <- config file <- ``overrides`` (entries that are None are ignored)."""
    require(overrides is None or isinstance(overrides, Mapping), "overrides", "a dict of options by field name "
            "({'epochs': 5})", overrides)
    overrides = given(overrides or {})
    file_values = read_config_file(config_file) if config_file else {}
    with _naming_the_file(config_file, file_values, overrides):
        for name in ("data", "init_from"):  # used as paths before validate() (a file can hold data = 5)
            for values in (file_values, overrides):
                _check_scalar(name, values.get(name), field_types()[name])
        _check_file_paths(config_file, file_values, overrides)
        # merged below before validate() looks at it: "KEY=VALUE" (--model-option's form) was a TypeError
        options = overrides.get("model_options", {})
        require(isinstance(options, dict), flag("model_options"), "a table of model options (a dict: {'input_size': 112})", options)
    preset = preset or file_values.pop("preset", None)
    file_values.pop("preset", None)
    if preset is None:
        from .data.sources import detect

        data = overrides.get("data", file_values.get("data"))
        kind = "fashion_mnist" if data is None else detect(data)
        preset = {"fashion_mnist": "fashion_mnist", "cifar": "cifar"}.get(kind, "photos")
    if preset not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {preset!r}; choose from: {', '.join(sorted(PRESETS))}")
    file_options, typed_options = file_values.pop("model_options", {}), overrides.pop("model_options", {})
    typed = {**file_options, **typed_options}
    model_options = {**PRESETS[preset].get("model_options", {}), **typed}
    values = {**PRESETS[preset], **file_values, **overrides, "preset": preset, "model_options": model_options}
    if "warmup_epochs" not in file_values and "warmup_epochs" not in overrides:
        values["warmup_epochs"] = _preset_warmup(PRESETS[preset], values.get("epochs"))
    for name in ("data", "init_from"):  # saved absolute: evaluate and --resume work from any folder
        if values.get(name) is not None:
            values[name] = os.path.abspath(values[name])
    refuse_unknown(values)
    cfg = TrainConfig(**values)
    with _naming_the_file(config_file, file_values, overrides):
        validate(cfg)
    cfg = _paper_rule_without_nesterov(cfg, config_file if "nesterov" in file_values.keys() - overrides.keys()
                                       else "nesterov" in overrides)
    _check_model(cfg, config_file, "model" in file_values and "model" not in overrides,
                 set(file_options) - set(typed_options))  # both dicts: read_config_file and the check above
    if "init_bias" in typed and typed["init_bias"] != PRESETS[preset].get("model_options", {}).get("init_bias"):
        _check_init_bias(cfg)  # the preset's own value is not typed (a run's config.json repeats it)
    return cfg


def _paper_rule_without_nesterov(cfg: TrainConfig, given_by: str | Path | bool | None) -> TrainConfig:
    """``cfg`` with Nesterov off under ``--optimizer paper``, whose update rule (optim.PaperSGD) has
    none: config.json recorded the photos/fashion_mnist preset's ``nesterov: true`` for a run that
    never used it. Typed (``given_by`` True) or written in a config file (its path): ConfigError."""
    if cfg.optimizer != "paper" or not cfg.nesterov:
        return cfg
    if given_by is True:
        raise ConfigError("--nesterov: the paper's update rule (--optimizer paper) has no Nesterov momentum; "
                          "drop --nesterov or use --optimizer sgd")
    if given_by:
        raise ConfigError(f"--config {given_by}: nesterov = true: the paper's update rule (optimizer paper) has no "
                          "Nesterov momentum; set it false or use optimizer sgd")
    return dataclasses.replace(cfg, nesterov=False)  # the preset's, meant for torch's SGD


def _check_file_paths(config_file: str | Path | None, file_values: dict[str, Any], overrides: dict[str, Any]) -> None:
    """ConfigError naming the file for a data or init-from path it gives (and the command line does
    not) that is not there. It said '--data: path not found: ../woof', a flag never typed, and not
    that a relative path is taken from the current folder, as typed ones are, not from the file's."""
    for name in ("data", "init_from"):
        value = file_values.get(name)
        if name in overrides or not isinstance(value, str) or os.path.exists(value):
            continue
        where = "" if os.path.isabs(value) else f" (a relative path is taken from the current folder, {os.getcwd()}, not the file's)"
        raise ConfigError(f"--config {config_file}: {name} = {value!r}: not found{where}; {flag(name)} PATH gives its place")


@contextlib.contextmanager
def _naming_the_file(path: str | Path | None, file_values: dict[str, Any], overrides: dict[str, Any]) -> Iterator[None]:
    """An error about an option that the config file gave, and the command line did not, names the
    file and the key written there: "--lr must be ..." would send the user to a flag never typed."""
    try:
        yield
    except ConfigError as e:
        text = str(e)
        for name in file_values.keys() - overrides.keys() if path else ():
            spelled = flag(name) if name in _FIELDS else None
            if spelled and (text == spelled or text.startswith((spelled + " ", spelled + ":"))):
                raise ConfigError(f"--config {path}: {name}{text[len(spelled):]}") from None
        raise


def _check_model(cfg: TrainConfig, config_file: str | Path | None, model_in_file: bool, options_in_file: set[str]) -> None:
    """ConfigError, now rather than when the network is built, for a model name or model option that
    cannot work, naming where it was given: ``config_file`` (which gave the model when ``model_in_file``,
    and the options ``options_in_file``) or the flag. The model's own messages name neither."""
    from .errors import UnknownModelError
    from .model import model_config

    try:
        model_config(cfg.model, **cfg.model_options)
    except UnknownModelError as e:
        raise ConfigError(f"--config {config_file}: model: {e.args[0]}" if model_in_file else f"--model: {e.args[0]}") from None
    except ConfigError as e:
        if not options_in_file:
            raise ConfigError(f"--model-option: {e}") from None
        try:  # the file's options left out: if the others build, the file's are at fault
            model_config(cfg.model, **{k: v for k, v in cfg.model_options.items() if k not in options_in_file})
        except ConfigError as typed_error:
            raise ConfigError(f"--model-option: {typed_error}") from None
        raise ConfigError(f"--config {config_file}: model_options: {e}") from None


def _check_init_bias(cfg: TrainConfig) -> None:
    """ConfigError for a typed init_bias that would do nothing: only the paper's init sets biases from
    it (the photos preset's He init zeroes them; --init-from replaces every weight)."""
    from .model import model_config

    init = model_config(cfg.model, **cfg.model_options).init  # the options' own checks first (init_bias=nan)
    if cfg.init_from:
        why = f"the weights come from --init-from {cfg.init_from}"
    elif init != "paper":
        why = f"only init=paper sets biases from it, and this run's init is {init} (--model-option init=paper takes it)"
    else:
        return
    raise ConfigError(f"model option init_bias={cfg.model_options['init_bias']} would do nothing: {why}")


def _preset_warmup(recipe: dict[str, Any], epochs: Any) -> float:
    """A recipe's warm-up, at most half the run: the photos recipe's 2 epochs would be the whole of a
    2-epoch run, which would then end at the peak rate instead of decaying."""
    warmup = recipe.get("warmup_epochs", 0.0)
    return min(warmup, epochs / 2) if is_finite(epochs) and epochs > 0 else warmup


def flag(name: str) -> str:
    """The command-line spelling of option ``name``."""
    f = _FIELDS[name]
    return f.metadata.get("flag") or f"--{name.replace('_', '-')}"


def field_types() -> dict[str, Any]:
    """Option name -> its type (``int``, ``float | None``, ``list[str]``, ...), resolved."""
    return typing.get_type_hints(TrainConfig)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _check_scalar(name: str, value: Any, kind: Any) -> None:
    """One scalar option: its type (None where allowed), finiteness, range and choices."""
    meta, args = _FIELDS[name].metadata, typing.get_args(kind)
    if value is None and type(None) in args:
        return
    base = next((a for a in args if a is not type(None)), kind)
    check, choices = meta.get("check"), meta.get("choices")
    if base is bool:
        require(isinstance(value, bool), flag(name), "true or false", value)
    elif base is int:
        require(is_whole(value) and (check is None or check[0](value)), flag(name),
                "a whole number" + (f" {check[1]}" if check else ""), value)
    elif base is float:
        require(is_finite(value) and (check is None or check[0](value)), flag(name),
                "a finite number" + (f" {check[1]}" if check else ""), value)
    else:
        require(isinstance(value, (str, os.PathLike)), flag(name), "a string", value)
    if choices:
        require(value in choices, flag(name), f"one of {', '.join(choices)}", value)


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the first option that cannot work: of the wrong type (a config file
    can hold anything), out of range, NaN or infinite, or not one of its choices. Whole numbers given
    for number options become floats (:func:`_as_floats`)."""
    for name, kind in field_types().items():
        if typing.get_origin(kind) not in (list, dict):
            _check_scalar(name, getattr(cfg, name), kind)
    _validate_containers(cfg)
    _as_floats(cfg)
    if warm_up_outlasts(cfg.warmup_epochs, cfg.epochs):
        raise ConfigError(f"--warmup-epochs {cfg.warmup_epochs:g} is not shorter than --epochs {cfg.epochs}: the rate would "
                          "still be rising when the run ends")
    # torch.optim.SGD raises ValueError for Nesterov without momentum: '--momentum 0' under the photos
    # and fashion_mnist presets (Nesterov on) stopped with 'internal error' after loading the data.
    if cfg.optimizer == "sgd" and cfg.nesterov and cfg.momentum == 0:
        raise ConfigError("--momentum 0: Nesterov momentum (--nesterov, the preset's) needs a momentum above 0; "
                          "add --no-nesterov")


def _as_floats(cfg: TrainConfig) -> None:
    """The float options (and --lr-mult's values) as floats, once checked: 'lr = 1' in a TOML file, or
    fit's {"lr": 1}, was recorded as 1 in config.json and the checkpoint where --lr 1 gave 1.0 (one
    field, an integer or a float by where it came from; a typed reader of config.json takes one)."""
    for name, kind in field_types().items():
        value = getattr(cfg, name)
        if typing.get_origin(kind) not in (list, dict) and float in (kind, *typing.get_args(kind)) and is_finite(value):
            setattr(cfg, name, float(value))
    cfg.lr_mult = {layer: float(m) for layer, m in cfg.lr_mult.items()}


def warm_up_outlasts(warmup_epochs: float, epochs: int) -> bool:
    """Whether a warm-up of ``warmup_epochs`` lasts the whole run of ``epochs``: the rate would still
    be rising when the run ends."""
    return bool(warmup_epochs) and warmup_epochs >= epochs


def _validate_containers(cfg: TrainConfig) -> None:
    """The list and table options: their types, and every layer multiplier finite and >= 0."""
    require(isinstance(cfg.model_options, dict), flag("model_options"), "a table of model options", cfg.model_options)
    for name in ("freeze", "tower_devices"):
        value = getattr(cfg, name)
        require(isinstance(value, list) and all(isinstance(v, str) for v in value), flag(name), "a list of strings", value)
    require(isinstance(cfg.lr_mult, dict), "--lr-mult", "a table of layer = multiplier", cfg.lr_mult)
    for layer, mult in cfg.lr_mult.items():
        require(is_finite(mult) and mult >= 0, f"--lr-mult {layer}", "a finite number >= 0", mult)
    from .model import expand_layers, expand_lr_mult

    expand_lr_mult(cfg.lr_mult)  # an unknown layer is refused here, before any file is read
    # A group some of whose layers are frozen (--freeze conv1 --lr-mult features=0.1) still sets the others'.
    frozen = [name for name in cfg.lr_mult if set(expand_layers([name], "--lr-mult")) <= set(expand_layers(cfg.freeze))]
    if frozen:
        raise ConfigError(f"--lr-mult {frozen[0]}={cfg.lr_mult[frozen[0]]:g}: {frozen[0]} is frozen (--freeze "
                          f"{','.join(cfg.freeze)}), so its learning rate would do nothing")
