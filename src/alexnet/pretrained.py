"""Published ImageNet weights: ``create_model(name, pretrained=True)`` for the models that have them.

Two AlexNets were published with ILSVRC-2012 weights: torchvision's ``alexnet`` (our
``alexnet_owt``) and BVLC's Caffe replication of the paper's net (``alexnet_caffe``). The paper's
own weights were never released, so ``alexnet_paper`` and its variants have none.

A file is downloaded once into torch.hub's cache (``$TORCH_HOME/hub/checkpoints``, where
torchvision keeps its own copy of the same file, so one already there is used offline), checked
(also when already there) against the digest its publisher gives, and converted by :mod:`alexnet.interop` (Caffe's BGR conv1
flipped to RGB), so the model takes RGB images like every other here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from .errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from .model import AlexNet


@dataclass(frozen=True)
class PretrainedCfg:
    """Where a model's published weights are and what they score (timm's ``PretrainedCfg``, in small)."""

    url: str
    digest: tuple[str, str]  # (hashlib algorithm, the publisher's hex digest or its prefix)
    importer: Literal["torchvision", "caffe"]
    publisher: str
    top1: float  # ILSVRC-2012 validation, one centre crop, as published
    top5: float
    tag: str  # what ``weights=`` names them by, torchvision's enum member name where there is one

    @property
    def file_name(self) -> str:
        """The weights' file name: the last part of ``url``, which torch.hub caches it under."""
        return self.url.rsplit("/", 1)[1]


PRETRAINED: dict[str, PretrainedCfg] = {
    # torchvision.models.AlexNet_Weights.IMAGENET1K_V1; the name carries its sha256 prefix (torch.hub's rule)
    "alexnet_owt": PretrainedCfg(
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", ("sha256", "7be5be79"), "torchvision",
        "torchvision (AlexNet_Weights.IMAGENET1K_V1)", 0.56522, 0.79066, "IMAGENET1K_V1",
    ),
    # BVLC model zoo, models/bvlc_alexnet/readme.md: sha1 and "top-1 57.1%, top-5 80.2%, centre crop"
    "alexnet_caffe": PretrainedCfg(
        "http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel", ("sha1", "9116a64c0fbe4459d18f4bb6b56d647b63920377"),
        "caffe", "BVLC (Caffe model zoo, bvlc_alexnet)", 0.571, 0.802, "BVLC",
    ),
}


def pretrained_cfg(name: str) -> PretrainedCfg:
    """The published weights of model ``name``; ConfigError naming those that have some otherwise."""
    if name not in PRETRAINED:
        have = ", ".join(f"{n} ({c.publisher.split(' ')[0]}, top-1 {c.top1:.1%})" for n, c in PRETRAINED.items())
        why = "the paper's own weights were never released" if name.startswith("alexnet_paper") else "none were published"
        raise ConfigError(f"{name}: no published ImageNet weights ({why}); pretrained=True works for {have}; "
                          "alexnet.load(FILE) loads a checkpoint of your own")
    return PRETRAINED[name]


def wants_weights(name: str, weights: object) -> bool:
    """Whether torchvision's ``weights=`` argument asks for ``name``'s published weights.

    None asks for none; ``"DEFAULT"``, the weights' tag (``"IMAGENET1K_V1"`` for ``alexnet_owt``,
    ``"BVLC"`` for ``alexnet_caffe``), ``"AlexNet_Weights.IMAGENET1K_V1"`` and torchvision's enum
    member itself (matched by its file's address) ask for them; anything else is refused.
    """
    if weights is None:
        return False
    cfg = pretrained_cfg(name)
    url = getattr(weights, "url", None)  # torchvision's AlexNet_Weights member
    if url is not None:
        if url != cfg.url:
            raise ConfigError(f"{name}: weights={weights} are not {name}'s published weights ({cfg.url})")
        return True
    tag = weights.rsplit(".", 1)[-1] if isinstance(weights, str) else None
    if tag not in ("DEFAULT", cfg.tag):
        raise ConfigError(f"{name}: unknown weights={weights!r}; use weights={cfg.tag!r} or 'DEFAULT' ({cfg.publisher}), or None")
    return True


def weights_file(name: str, show_progress: bool | None = None) -> Path:
    """The published weights of ``name`` in torch.hub's cache, downloaded and checked if not there yet."""
    from .fetch import fetch_url

    cfg = pretrained_cfg(name)
    dest = Path(torch.hub.get_dir()) / "checkpoints" / cfg.file_name
    if not dest.is_file():
        hint = f"without the internet, copy the file there by hand: {dest}"
        unwritable = "set TORCH_HOME to a writable folder (torch.hub's cache), or pass a downloaded copy of the file"
        fetch_url(cfg.url, dest, show_progress, CheckpointError, hint, cfg.digest, unwritable)  # checked as it arrives
    else:
        _check_cached(dest, cfg)
    return dest


def _check_cached(path: Path, cfg: PretrainedCfg) -> None:
    """CheckpointError unless the cached ``path`` has the publisher's digest. A file already in the
    cache (copied there by hand, as the offline hint says; torchvision's copy) was taken unchecked:
    a truncated copy failed as 'not a PyTorch checkpoint', and other weights of the same shapes
    loaded as the published ones. About 0.2 s for torchvision's 233 MB, beside reading it to load."""
    import hashlib

    try:
        hasher = hashlib.new(cfg.digest[0])
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                hasher.update(chunk)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the cached weights: {e.strerror or e}") from None
    if not hasher.hexdigest().startswith(cfg.digest[1].lower()):
        raise CheckpointError(f"{path}: its {cfg.digest[0]} is {hasher.hexdigest()}, not the published {cfg.digest[1]}: "
                              f"a truncated, damaged or other file, not {cfg.publisher}'s weights; delete it to "
                              "download it again (or copy the published file there)")


def import_weights(name: str, path: str | Path) -> dict[str, Any]:
    """The checkpoint dict (model, classes, preprocess) of ``name``'s published weights file ``path``."""
    from .interop import import_caffe, import_torchvision

    return import_torchvision(path) if pretrained_cfg(name).importer == "torchvision" else import_caffe(path)


def load_pretrained(name: str, num_classes: int = 1000, show_progress: bool | None = None, **overrides: Any) -> AlexNet:
    """``name`` with its published ImageNet weights, ``model.classes`` and ``model.preprocess`` set.

    With ``num_classes`` other than the published 1000, fc8 is new (initialised as the model's init
    does) and the classes are numbered, as when fine-tuning; ``overrides`` that change a weight's
    shape are refused.
    """
    from .checkpoint import _check_recipe_fits, _preprocess
    from .errors import state_dict_mismatch
    from .model import AlexNet, model_config

    ckpt = import_weights(name, weights_file(name, show_progress))
    # The file's own network (the published one), with what the caller changes on top.
    model = AlexNet(model_config(name, **{**ckpt["model_config"], "num_classes": num_classes, **overrides}))
    same_classes = num_classes == ckpt["model_config"]["num_classes"]
    state = ckpt["model"] if same_classes else {k: v for k, v in ckpt["model"].items() if not k.startswith("fc8.")}
    given = ", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "the model"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ConfigError(f"{name}: {given} does not fit the published weights: {state_dict_mismatch(e)}") from None
    if unexpected or [k for k in missing if same_classes or not k.startswith("fc8.")]:
        raise ConfigError(f"{name}: {given} does not fit the published weights (missing {missing}, unexpected {unexpected})")
    source = f"{name} (published weights)"
    recipe = _preprocess(ckpt["preprocess"], source)
    try:
        _check_recipe_fits(model.config, recipe, source)
    except CheckpointError as e:
        raise ConfigError(f"{given}: {e}") from None
    model.classes = list(ckpt["classes"]) if same_classes else [str(i) for i in range(num_classes)]
    model.preprocess = recipe
    model.pretrained_cfg = pretrained_cfg(name)
    return model


def describe(name: str) -> str | None:
    """One line on ``name``'s published weights, or None."""
    cfg = PRETRAINED.get(name)
    return f"ImageNet weights: {cfg.publisher}, top-1 {cfg.top1:.1%} / top-5 {cfg.top5:.1%}" if cfg else None

