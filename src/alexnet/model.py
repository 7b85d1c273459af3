"""The AlexNet family in one file: a dataclass config, one module, a name -> constructor registry.

Every number of the paper's network (Krizhevsky, Sutskever & Hinton 2012, section 3 and figure 2)
is a field of :class:`AlexNetConfig`; the named variants below are configs, and the paper's
ablations are overrides of a config (``create_model("alexnet_paper", lrn=False)``).

Layers are named as in the paper (conv1..conv5, fc6..fc8) so that a reader finds them, freezing
"conv1-conv5" is a name match, and fc7 features are one attribute away.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import typing
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from .checks import is_finite, is_whole, require
from .errors import ConfigError, UnknownModelError
from .lrn import RANGES as LRN_RANGES
from .lrn import LocalResponseNorm

if TYPE_CHECKING:
    from .data.presets import Preprocess
    from .pretrained import PretrainedCfg

LAYER_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


def expand_layers(names: list[str], option: str = "--freeze") -> list[str]:
    """The layers of ``--freeze`` names: ``features`` is conv1-conv5, ``classifier`` fc6-fc8."""
    out = []
    for name in names:
        if name == "features":
            out += list(LAYER_NAMES[:5])
        elif name == "classifier":
            out += list(LAYER_NAMES[5:])
        elif name in LAYER_NAMES:
            out.append(name)
        else:
            raise ConfigError(f"{option}: unknown layer {name!r}; use {', '.join(LAYER_NAMES)}, features or classifier")
    return out


def expand_lr_mult(lr_mult: dict[str, float]) -> dict[str, float]:
    """``--lr-mult``'s multiplier of each layer it names, ``features`` and ``classifier`` as
    ``--freeze`` reads them; a layer named by itself outranks its group, in any order
    (``features=0.1,conv1=0`` holds conv1 and slows conv2-conv5)."""
    groups = [name for name in lr_mult if name not in LAYER_NAMES]
    out = {layer: lr_mult[group] for group in groups for layer in expand_layers([group], "--lr-mult")}
    return out | {name: m for name, m in lr_mult.items() if name in LAYER_NAMES}


@dataclass
class AlexNetConfig:
    """Everything that defines an AlexNet-style network.

    Defaults are the paper's network (variant ``alexnet_paper``).
    """

    num_classes: int = 1000
    in_chans: int = 3
    input_size: int = 224  # the size fc6 is built for (unless adaptive_pool is set)
    widths: tuple[int, int, int, int, int] = (96, 256, 384, 384, 256)
    fc_width: int = 4096
    conv1_kernel: int = 11
    conv1_stride: int = 4
    conv1_padding: int = 2  # 224 + 2*2 -> 55x55, as 227 unpadded does
    # Two towers (the two GPUs of 2012): conv2, conv4, conv5 see only their own tower's maps.
    towers: int = 2
    activation: Literal["relu", "tanh"] = "relu"
    # LRN after the activation of conv1 and conv2 (section 3.3).
    lrn: bool = True
    lrn_size: int = 5
    lrn_alpha: float = 1e-4
    lrn_beta: float = 0.75
    lrn_k: float = 2.0
    lrn_convention: Literal["sum", "mean"] = "sum"
    # The paper normalises each tower's maps on its own GPU (the window never crosses towers);
    # Caffe's single-GPU bvlc_alexnet normalises across all channels.
    lrn_per_tower: bool = True
    # "norm_pool": conv -> act -> LRN -> pool (paper, bvlc_alexnet); "pool_norm": CaffeNet's swap.
    norm_order: Literal["norm_pool", "pool_norm"] = "norm_pool"
    # Overlapping max-pooling z=3, s=2 (section 3.4); (2, 2) is the non-overlapping ablation.
    pool_kernel: int = 3
    pool_stride: int = 2
    # Which of the three pooling layers (after conv1, conv2, conv5) exist; small inputs drop some.
    pools: tuple[bool, bool, bool] = (True, True, True)
    adaptive_pool: int | None = None  # torchvision's AdaptiveAvgPool2d(6) before fc6
    dropout: float = 0.5
    # "after": on the outputs of fc6 and fc7 (paper); "before": on the inputs of fc6 and fc7 (torchvision).
    dropout_position: Literal["after", "before"] = "after"
    init: Literal["paper", "caffe", "kaiming", "torch"] = "paper"
    # The constant bias of conv2, conv4, conv5, fc6 and fc7 under init="paper" (section 5: 1). With
    # few classes the paper's 1 makes the first steps diverge (docs/training.md); --preset paper
    # uses Caffe's 0.1.
    init_bias: float = 1.0

    def __post_init__(self) -> None:
        """Check every field by type and range (a checkpoint or --model-option can hold anything:
        ``lrn="maybe"`` is a true value to Python), one ConfigError naming the option."""
        for name, minimum in _WHOLE_FIELDS.items():
            value = getattr(self, name)
            require(is_whole(value, minimum), f"model option {name}", f"a whole number >= {minimum}", value)
            setattr(self, name, int(value))  # numpy ints too
        require(self.adaptive_pool is None or is_whole(self.adaptive_pool, 1), "model option adaptive_pool",
                "null or a whole number >= 1", self.adaptive_pool)
        for name, (test, wanted) in _FLOAT_FIELDS.items():
            value = getattr(self, name)
            require(is_finite(value) and test(value), f"model option {name}", f"a finite number{wanted}", value)
            setattr(self, name, float(value))
        for name in ("lrn", "lrn_per_tower"):
            require(isinstance(getattr(self, name), bool), f"model option {name}", "true or false", getattr(self, name))
        for name, choices in _literal_choices().items():
            value = getattr(self, name)
            require(value in choices, f"model option {name}", f"one of {', '.join(choices)}", value)
        self.widths = _sequence("widths", self.widths, 5, lambda w: is_whole(w, 1), "whole numbers >= 1", int)
        self.pools = _sequence("pools", self.pools, 3, lambda p: isinstance(p, bool), "true/false values", bool)
        # A wider window sees no more channels, and the C kernel's scratch memory grows with it.
        require(self.lrn_size <= 2 * max(self.widths) + 1, "model option lrn_size",
                f"at most {2 * max(self.widths) + 1} (twice the widest layer, plus one)", self.lrn_size)
        if any(w % self.towers for w in self.widths):
            raise ConfigError(f"towers={self.towers} must divide every conv width {self.widths}")
        # The layers before the adaptive pooling (alexnet_owt) need the input as much as pool5 does:
        # checking feature_size() alone let input_size=32 through, to fail at the first forward.
        if self.pooled_size() < 1:
            raise ConfigError(f"input_size={self.input_size} is too small for this network")

    def feature_size(self) -> int:
        """Spatial side of the fc6 input for ``input_size`` inputs (0 if the input is too small)."""
        return self.adaptive_pool or self.pooled_size()

    def pooled_size(self, side: int | None = None) -> int:
        """Spatial side of the features after the last pooling (the adaptive pooling's input, if any)
        for inputs of ``side`` pixels (default: ``input_size``); 0 if the input is too small."""
        s = ((self.input_size if side is None else side) + 2 * self.conv1_padding - self.conv1_kernel) // self.conv1_stride + 1
        if s < 1:
            return 0
        for use in self.pools:  # conv2..conv5 keep the size (padding k//2)
            if use:
                if s < self.pool_kernel:
                    return 0
                s = (s - self.pool_kernel) // self.pool_stride + 1
        return max(s, 0)

    def smallest_input(self) -> int:
        """The least side in pixels for which :meth:`pooled_size` is at least 1 (found by undoing the
        layers from pool5 back to conv1, so no search bounds it)."""
        need = 1
        for use in reversed(self.pools):  # a pooling with (s - k) // stride + 1 >= need
            if use:
                need = self.pool_kernel + (need - 1) * self.pool_stride
        return max(1, (need - 1) * self.conv1_stride + self.conv1_kernel - 2 * self.conv1_padding)

    def num_parameters(self) -> int:
        """The network's parameter count, from the config alone (nothing is allocated)."""
        w1, w2, w3, w4, w5 = self.widths
        g, fc, s = self.towers, self.fc_width, self.feature_size()
        convs = (
            (self.in_chans * self.conv1_kernel**2 + 1) * w1
            + (w1 // g * 25 + 1) * w2
            + (w2 * 9 + 1) * w3
            + (w3 // g * 9 + 1) * w4
            + (w4 // g * 9 + 1) * w5
        )
        return convs + (w5 * s * s + 1) * fc + (fc + 1) * fc + (fc + 1) * self.num_classes

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain values (what a checkpoint's ``model_config`` holds)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlexNetConfig:
        """The config of :meth:`to_dict`'s values, checked; ConfigError naming unknown fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown model option(s): {', '.join(sorted(unknown))}")
        return cls(**d)


# Field checks of AlexNetConfig.__post_init__: whole numbers (-> minimum), finite floats (-> test).
_WHOLE_FIELDS = {
    "num_classes": 1, "in_chans": 1, "input_size": 1, "fc_width": 1, "conv1_kernel": 1, "conv1_stride": 1,
    "conv1_padding": 0, "towers": 1, "lrn_size": 1, "pool_kernel": 1, "pool_stride": 1,
}
_FLOAT_FIELDS: dict[str, tuple[Callable[[float], bool], str]] = {
    **{f"lrn_{name}": test for name, test in LRN_RANGES.items()},
    "dropout": (lambda v: 0 <= v < 1, " in [0, 1)"),
    "init_bias": (lambda v: True, ""),
}


@functools.cache
def _literal_choices() -> dict[str, tuple[str, ...]]:
    """The allowed strings of each Literal field of AlexNetConfig, from its annotations."""
    hints = typing.get_type_hints(AlexNetConfig)
    return {name: typing.get_args(hint) for name, hint in hints.items() if typing.get_origin(hint) is Literal}


def _sequence(name: str, value: Any, length: int, ok: Callable[[Any], bool], wanted: str, cast: type) -> tuple:
    """``value`` as a tuple of ``length`` items that pass ``ok``; ConfigError naming ``name`` if not."""
    fits = isinstance(value, (list, tuple)) and len(value) == length and all(ok(v) for v in value)
    require(fits, f"model option {name}", f"a list of {length} {wanted}", value)
    return tuple(cast(v) for v in value)


class AlexNet(nn.Module):
    """AlexNet and its variants, configured by :class:`AlexNetConfig`.

    Made by :func:`alexnet.create_model` (a registered name) or :func:`alexnet.load` (a checkpoint).
    Its layers are the paper's (``conv1``..``fc8``, ``norm1``, ``norm2``, ``pool1``, ``pool2``,
    ``pool5``); torchvision's ``features.N``/``classifier.N`` keys load into them.
    """

    def __init__(self, config: AlexNetConfig) -> None:
        """The network of ``config`` (its fields checked again), initialised as ``config.init`` says;
        TypeError for anything but an AlexNetConfig, ConfigError for a field out of range."""
        if not isinstance(config, AlexNetConfig):
            raise TypeError(f"AlexNet takes an AlexNetConfig (alexnet.model_config(name, ...)), not {type(config).__name__}; "
                            "alexnet.create_model(name) builds a registered model")
        config.__post_init__()  # fields changed since it was made (cfg.lrn = "no") are checked again
        super().__init__()
        self.config = c = config
        w1, w2, w3, w4, w5 = c.widths
        g = c.towers
        self.conv1 = nn.Conv2d(c.in_chans, w1, c.conv1_kernel, c.conv1_stride, c.conv1_padding)
        self.conv2 = nn.Conv2d(w1, w2, 5, 1, 2, groups=g)
        self.conv3 = nn.Conv2d(w2, w3, 3, 1, 1)  # sees both towers
        self.conv4 = nn.Conv2d(w3, w4, 3, 1, 1, groups=g)
        self.conv5 = nn.Conv2d(w4, w5, 3, 1, 1, groups=g)
        self.act = nn.ReLU(inplace=True) if c.activation == "relu" else nn.Tanh()
        lrn = lambda: (  # noqa: E731
            LocalResponseNorm(c.lrn_size, c.lrn_alpha, c.lrn_beta, c.lrn_k, c.lrn_convention, c.towers if c.lrn_per_tower else 1)
            if c.lrn
            else nn.Identity()
        )
        self.norm1, self.norm2 = lrn(), lrn()
        pool = lambda use: nn.MaxPool2d(c.pool_kernel, c.pool_stride) if use else nn.Identity()  # noqa: E731
        self.pool1, self.pool2, self.pool5 = (pool(u) for u in c.pools)
        self.avgpool = nn.AdaptiveAvgPool2d(c.adaptive_pool) if c.adaptive_pool else nn.Identity()
        s = c.feature_size()
        self.fc6 = nn.Linear(w5 * s * s, c.fc_width)
        self.fc7 = nn.Linear(c.fc_width, c.fc_width)
        self.fc8 = nn.Linear(c.fc_width, c.num_classes)
        self.drop6 = nn.Dropout(c.dropout)
        self.drop7 = nn.Dropout(c.dropout)
        self.reset_parameters()
        # What alexnet.load attaches from a checkpoint: class names and the input recipe.
        self.classes: list[str] | None = None
        self.folders: list[str] | None = None  # the class folders its outputs trained on, where a run recorded them
        self.preprocess: Preprocess | None = None
        self.pretrained_cfg: PretrainedCfg | None = None  # where published weights came from (create_model(pretrained=True))
        # torchvision's AlexNet state dict (features.0.weight, ...) loads unchanged.
        self._register_load_state_dict_pre_hook(_translate_torchvision_keys, with_module=True)

    # -- initialisation -----------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Initialise weights by ``config.init``.

        ``paper``: every weight ~ N(0, 0.01^2); biases ``init_bias`` (the paper: 1) in conv2, conv4,
        conv5, fc6, fc7 (so the ReLUs start with positive input), 0 elsewhere (section 5).
        ``caffe``: bvlc_alexnet's fillers (std 0.005 for fc6/fc7, biases 0.1).
        ``kaiming``: He-normal weights, zero biases: trains fast from scratch on small data.
        ``torch``: PyTorch's layer defaults, as torchvision's alexnet.
        """
        for name in LAYER_NAMES:
            self._init_layer(name)

    def _init_layer(self, name: str) -> None:
        mode, layer = self.config.init, getattr(self, name)
        if mode == "torch":
            layer.reset_parameters()
        elif mode == "paper":
            nn.init.normal_(layer.weight, 0.0, 0.01)
            nn.init.constant_(layer.bias, self.config.init_bias if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0)
        elif mode == "caffe":
            nn.init.normal_(layer.weight, 0.0, 0.005 if name in ("fc6", "fc7") else 0.01)
            nn.init.constant_(layer.bias, 0.1 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0)
        else:  # kaiming
            if name == "fc8":
                nn.init.normal_(layer.weight, 0.0, 0.01)
            else:
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (what :func:`alexnet.predict.predict` and evaluation feed it)."""
        return self.conv1.weight.dtype

    @property
    def num_classes(self) -> int:
        """Outputs of fc8."""
        return self.config.num_classes

    @property
    def num_features(self) -> int:
        """Width of the features fc8 takes: fc7's (timm's name)."""
        return self.config.fc_width

    def reset_classifier(self, num_classes: int, classes: Sequence[str] | None = None) -> None:
        """A new fc8 with ``num_classes`` outputs (initialised as ``config.init`` says), for fine-tuning;
        ``config`` and ``classes`` (numbered unless given) follow, so predict and evaluate name them."""
        check_num_classes(num_classes, "reset_classifier")
        if classes is not None:
            if isinstance(classes, str) or not all(isinstance(n, str) for n in classes):
                raise ConfigError(f"reset_classifier: classes must be a list of names (strings), got {classes!r}")
            if len(classes) != num_classes:
                raise ConfigError(f"reset_classifier: {len(classes)} class names for {num_classes} classes")
        self.config = dataclasses.replace(self.config, num_classes=num_classes)
        old = self.fc8.weight
        self.fc8 = nn.Linear(self.config.fc_width, num_classes, device=old.device, dtype=old.dtype)
        self._init_layer("fc8")
        self.classes = list(classes) if classes is not None else [str(i) for i in range(num_classes)]
        self.folders = None  # the new outputs trained on none

    # -- forward ------------------------------------------------------------------------------
    def _stage(self, x: torch.Tensor, conv: nn.Module, norm: nn.Module, pool: nn.Module) -> torch.Tensor:
        if self.config.norm_order == "norm_pool" and isinstance(norm, LocalResponseNorm) and isinstance(self.act, nn.ReLU):
            # LRN(ReLU(.)) in one kernel: the ReLU costs no pass over memory of its own.
            return pool(norm(conv(x), relu=True))
        x = self.act(conv(x))
        if self.config.norm_order == "norm_pool":
            return pool(norm(x))
        return norm(pool(x))

    def check_input(self, x: torch.Tensor) -> None:
        """ValueError saying what the network takes, for an input that torch would refuse with an
        error about an inner layer ('mat1 and mat2 shapes cannot be multiplied', 'LRN with groups=2
        needs a channel count divisible by 2' for one unbatched image)."""
        c = self.config
        if isinstance(x, torch.fx.Proxy):  # symbolic tracing (create_feature_extractor): no sizes yet
            return
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self._name()} takes a torch.Tensor of shape (N, {c.in_chans}, H, W), not {type(x).__name__} "
                            "(torch.from_numpy(array) for a numpy array)")
        if x.dim() != 4 or x.shape[1] != c.in_chans:
            one = "; one image: x.unsqueeze(0)" if x.dim() == 3 and x.shape[0] == c.in_chans else ""
            raise ValueError(f"{self._name()} takes a batch of {c.in_chans}-channel images, shape (N, {c.in_chans}, H, W); "
                             f"got {tuple(x.shape)}{one}")
        if not x.is_floating_point():
            raise ValueError(f"{self._name()} takes float images prepared by its recipe (alexnet.data.loaders.model_input, "
                             f"or predict), not {x.dtype} pixels")
        h, w = x.shape[-2:]
        sides = (c.pooled_size(h), c.pooled_size(w))
        if c.adaptive_pool is not None and min(sides) < 1:
            least = c.smallest_input()
            raise ValueError(f"{self._name()} takes images of at least {least}x{least} pixels; got {h}x{w}")
        if c.adaptive_pool is None and sides != (c.pooled_size(),) * 2:
            f = c.feature_size()
            raise ValueError(f"{self._name()} is built for {c.input_size}x{c.input_size} inputs (fc6 takes {c.widths[4]}x{f}x{f} "
                             f"features); {h}x{w} images give {sides[0]}x{sides[1]}: resize or crop them (model.preprocess.test_crop)")

    def _name(self) -> str:
        return describe_model(self.config)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """conv1..pool5, flattened: the input of fc6 (9,216-d for the paper's net at 224 px)."""
        self.check_input(x)
        x = self._stage(x, self.conv1, self.norm1, self.pool1)
        x = self._stage(x, self.conv2, self.norm2, self.pool2)
        x = self.act(self.conv3(x))
        x = self.act(self.conv4(x))
        x = self.pool5(self.act(self.conv5(x)))
        return torch.flatten(self.avgpool(x), 1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """fc6..fc8 of :meth:`forward_features`' output: the logits, or with ``pre_logits`` the fc7
        activations (timm's names)."""
        if self.config.dropout_position == "before":
            x = self.act(self.fc6(self.drop6(x)))
            x = self.act(self.fc7(self.drop7(x)))
        else:
            x = self.act(self.fc7(self.drop6(self.act(self.fc6(x)))))
        if pre_logits:
            return x
        return self.fc8(self.drop7(x) if self.config.dropout_position == "after" else x)

    def forward_fc7(self, x: torch.Tensor) -> torch.Tensor:
        """The 4096-d fc7 activations (after ReLU): the paper's image descriptor (section 6.1)."""
        return self.forward_head(self.forward_features(x), pre_logits=True)

    def get_classifier(self) -> nn.Linear:
        """fc8 (timm's name)."""
        return self.fc8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of a float batch (N, in_chans, H, W) the model's recipe made."""
        return self.forward_head(self.forward_features(x))


# torchvision.models.AlexNet names its layers by position in two Sequentials.
TORCHVISION_KEYS = {
    "features.0": "conv1",
    "features.3": "conv2",
    "features.6": "conv3",
    "features.8": "conv4",
    "features.10": "conv5",
    "classifier.1": "fc6",
    "classifier.4": "fc7",
    "classifier.6": "fc8",
}


def torchvision_key(key: str) -> str:
    """Our name for a torchvision AlexNet state-dict key (other keys unchanged)."""
    layer, _, param = key.rpartition(".")
    return f"{TORCHVISION_KEYS[layer]}.{param}" if layer in TORCHVISION_KEYS else key


def _translate_torchvision_keys(module, state_dict, prefix, *args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        new = torchvision_key(key[len(prefix) :])
        if new != key[len(prefix) :]:
            state_dict[prefix + new] = state_dict.pop(key)


# -- registry ---------------------------------------------------------------------------------
_REGISTRY: dict[str, Callable[..., AlexNetConfig]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_model(fn: Callable[[], AlexNetConfig]) -> Callable[[], AlexNetConfig]:
    """Register a function returning a default config under its own name (a decorator, as timm's);
    its docstring's first line describes it in ``alexnet models``."""
    if not callable(fn) or not isinstance(getattr(fn, "__name__", None), str):
        raise TypeError(f"register_model takes a function returning an AlexNetConfig, not {fn!r}")
    name = fn.__name__
    if not name.isidentifier():  # a lambda's "<lambda>": no name to pass to --model or create_model
        raise TypeError(f"register_model: {name!r} is no model name; register a function defined with def, "
                        "whose name becomes the model's")
    if name in _REGISTRY:
        warnings.warn(f"register_model: {name!r} was registered already; {fn.__module__}.{fn.__qualname__} replaces it",
                      stacklevel=2)
    _DESCRIPTIONS[name] = next(iter((fn.__doc__ or "").strip().splitlines()), "")
    _REGISTRY[name] = fn
    return fn


@register_model
def alexnet_paper() -> AlexNetConfig:
    """The 2012 network: two towers, LRN (paper convention), overlapping pooling, paper init."""
    return AlexNetConfig()


@register_model
def alexnet_paper_1gpu() -> AlexNetConfig:
    """The paper's one-GPU comparison net: one tower, half the kernels in conv1-conv4 (48-128-192-192)."""
    # Section 4.1 compares the two-tower net with "a net with half as many kernels in each
    # convolutional layer trained on one GPU"; its footnote keeps conv5 (and the FC layers after
    # it) whole, so that the two nets have about the same number of parameters (59.8 M vs 61.0 M).
    # towers=1 alone is another net: every width kept, conv2/4/5 seeing all maps (62.4 M).
    return AlexNetConfig(widths=(48, 128, 192, 192, 256), towers=1)


@register_model
def alexnet_owt() -> AlexNetConfig:
    """torchvision's alexnet ("one weird trick", 2014): 64-192-384-256-256, no LRN, no towers."""
    return AlexNetConfig(
        widths=(64, 192, 384, 256, 256),
        towers=1,
        lrn=False,
        adaptive_pool=6,
        dropout_position="before",
        init="torch",
    )


@register_model
def alexnet_caffe() -> AlexNetConfig:
    """BVLC bvlc_alexnet: paper layout at 227 px, Caffe's LRN (k=1, alpha averaged over 5)."""
    return AlexNetConfig(
        input_size=227,
        conv1_padding=0,
        lrn_k=1.0,
        lrn_alpha=1e-4,
        lrn_convention="mean",
        lrn_per_tower=False,
        init="caffe",
    )


@register_model
def alexnet_small() -> AlexNetConfig:
    """The paper's net for 28 px grey images (Fashion-MNIST): conv1 stride 2, no pool5."""
    # Adapted only where a 28x28 grey input forces it: one input channel; conv1 stride 4 -> 2
    # (stride 4 would leave 5x5 maps after conv1); pool5 dropped. With conv1 padding 5 the maps
    # go 14 -> pool1 6 -> conv2 6 -> pool2 2 -> conv3..conv5 at 2x2, so fc6 sees 256x2x2 = 1,024
    # inputs (the paper's net: 256x6x6 = 9,216).
    # LRN, two towers, overlapping pooling, dropout and every width are the paper's. He init
    # (instead of N(0, 0.01^2)) lets it train in minutes.
    return AlexNetConfig(
        in_chans=1, input_size=28, conv1_stride=2, conv1_padding=5, pools=(True, True, False), init="kaiming"
    )


def list_models(filter: str = "", pretrained: bool = False) -> list[str]:
    """Names accepted by :func:`create_model`: those matching the shell pattern ``filter``
    (``"alexnet_p*"``), and with ``pretrained`` only those with published weights (as timm's)."""
    if not isinstance(filter, str):
        raise TypeError(f"list_models: filter is a shell pattern (a str such as 'alexnet_p*'), not {type(filter).__name__}")
    names = sorted(n for n in _REGISTRY if not filter or fnmatch.fnmatchcase(n, filter))
    if pretrained:
        from .pretrained import PRETRAINED

        names = [n for n in names if n in PRETRAINED]
    return names


def describe_models() -> dict[str, str]:
    """Name -> one-line description."""
    return {n: _DESCRIPTIONS[n] for n in list_models()}


def model_config(name: str, **overrides: Any) -> AlexNetConfig:
    """The config of a registered model with ``overrides`` applied; UnknownModelError for a name not
    registered, ConfigError for an override that is no field or is out of range."""
    if not isinstance(name, str):  # a list is unhashable: 'TypeError: unhashable type' named nothing
        raise TypeError(f"a model is named by a str from alexnet.list_models(), not {type(name).__name__}")
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; choose from: {', '.join(list_models())}")
    made = _REGISTRY[name]()
    if not isinstance(made, AlexNetConfig):
        raise TypeError(f"model {name!r}: its registered function returned {type(made).__name__}, not an AlexNetConfig")
    base = made.to_dict()
    bad = set(overrides) - set(base)
    if bad:
        raise ConfigError(f"unknown model option(s) for {name}: {', '.join(sorted(bad))}")
    base.update(overrides)
    return AlexNetConfig.from_dict(base)


_LOOSE = {"num_classes": 0, "in_chans": 0, "init": None, "dropout": 0.0}  # what a network's family does not fix


def differences(config: AlexNetConfig, name: str) -> dict[str, Any]:
    """The layer options of ``config`` that the registered model ``name`` has otherwise."""
    mine, theirs = {**config.to_dict(), **_LOOSE}, {**model_config(name).to_dict(), **_LOOSE}
    return {k: v for k, v in mine.items() if theirs.get(k) != v}


def model_family(config: AlexNetConfig) -> tuple[str, dict[str, Any]]:
    """The registered model that ``config`` differs from in the fewest layer options, and those
    options: ("alexnet_paper", {"input_size": 112}) for the paper's net trained on 128 px photos.
    A registered function that builds no config (one returning the network, as timm's do) is passed
    over: create_model of its name says what is wrong, and other networks' messages must not fail."""
    families = []
    for name in list_models():
        try:
            families.append((name, differences(config, name)))
        except Exception:  # noqa: BLE001 - whatever a user's registered function raises is its own name's
            continue
    return min(families, key=lambda nd: len(nd[1]))


def describe_model(config: AlexNetConfig) -> str:
    """A network's name for a message: "alexnet_paper", or "alexnet_paper with input_size=112"."""
    name, differs = model_family(config)
    return name + (" with " + ", ".join(f"{k}={v}" for k, v in differs.items()) if differs else "")


def check_num_classes(num_classes: Any, where: str) -> None:
    """timm's ``num_classes=0`` ("no head") pointed at the calls that give fc7's features; any other
    value is checked by AlexNetConfig as every option is."""
    if num_classes == 0 and is_whole(num_classes):
        raise ConfigError(f"{where}: num_classes=0: AlexNet keeps its fc8; for the features fc8 takes use "
                          "model.forward_fc7(x) or model.forward_head(model.forward_features(x), pre_logits=True)")


def create_model(
    name: str, num_classes: int | None = None, pretrained: bool = False, weights: object = None, **overrides: Any
) -> AlexNet:
    """Build a registered model.

    Args:
        name: A name from :func:`list_models`.
        num_classes: Outputs of fc8 (default: the registered config's, 1000 for the built-in models).
        pretrained: Start from the model's published ImageNet weights (``alexnet_owt``:
            torchvision's; ``alexnet_caffe``: BVLC's), downloaded once into torch.hub's cache, with
            ``model.classes`` and ``model.preprocess`` set; fc8 is new when ``num_classes`` is not
            1000 (:func:`alexnet.pretrained.load_pretrained`).
        weights: torchvision's way to say ``pretrained=True``: ``"DEFAULT"``, ``"IMAGENET1K_V1"``
            (``alexnet_owt``), ``"BVLC"`` (``alexnet_caffe``) or ``AlexNet_Weights.IMAGENET1K_V1``.
        **overrides: Any :class:`AlexNetConfig` field, e.g. ``lrn=False``, ``towers=1``,
            ``pool_kernel=2``, ``activation="tanh"``, ``dropout=0.0``, ``in_chans=1``.

    Returns:
        The network, in training mode on the CPU.

    Raises:
        UnknownModelError: ``name`` is not registered (a ConfigError and a KeyError).
        ConfigError: an override that is no field, is out of range or (``pretrained``) does not fit
            the published weights; a bad ``num_classes`` or ``pretrained``; ``weights`` the model
            has none of.
        CheckpointError: the published weights cannot be downloaded, or fail their digest.
    """
    if not isinstance(pretrained, bool):
        raise ConfigError(f"pretrained must be True or False, not {pretrained!r} (alexnet.load(FILE) loads a file)")
    if num_classes is None:
        num_classes = model_config(name).num_classes
    check_num_classes(num_classes, "create_model")
    if weights is not None:
        from .pretrained import wants_weights

        pretrained = wants_weights(name, weights) or pretrained
    if pretrained:
        from .pretrained import load_pretrained

        return load_pretrained(name, num_classes, **overrides)
    return AlexNet(model_config(name, num_classes=num_classes, **overrides))


def count_parameters(model: nn.Module) -> int:
    """The number of parameter values (elements) of ``model``, trainable or frozen."""
    return sum(p.numel() for p in model.parameters())

