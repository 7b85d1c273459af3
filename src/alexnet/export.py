"""Weights out: safetensors + JSON config (the shareable default), ONNX, torch.export (.pt2) and TorchScript.

``safetensors``: the tensors of the state dict, with ``model_config``, ``classes`` (and a trained
run's class ``folders``) and ``preprocess`` as JSON in the file's metadata and, for people, in a
``.json`` file beside it.
:func:`alexnet.load` reads it back. The ONNX, .pt2 and TorchScript files take a (N, 3, S, S)
float batch prepared as ``preprocess`` says and return the fc8 scores; the recipe is stored with
them too (ONNX metadata props, extra file ``config.json`` in .pt2 and TorchScript files). A
recipe's mean image is a tensor ``preprocess.mean_image`` beside the weights (safetensors), a JSON
list in the ONNX metadata or in an extra ``preprocess.mean_image.json`` (.pt2), or an extra
``preprocess.mean_image.npy`` (TorchScript); the config JSON holds its summary. All three graphs
compute LRN with plain PyTorch ops: none needs this package to run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import atomic, installed, jsonio, lrn
from .atomic import atomic_path
from .data import presets
from .errors import ConfigError
from .model import AlexNet

FORMATS = ("safetensors", "onnx", "pt2", "torchscript", "torchvision")


def _config(model: AlexNet, fmt: str = "safetensors", source: Source | None = None) -> dict[str, Any]:
    """The recipe stored with an export; ``format`` names the file's kind ("alexnet-onnx-1", ...),
    ``source`` the checkpoint it was made from and ``versions`` what wrote it (readers ignore both)."""
    return {
        "format": f"alexnet-{fmt}-1",
        "model_config": model.config.to_dict(),
        "classes": list(model.classes or []),
        # a trained run's class folders (WNIDs a mapping named), which evaluate matches where names differ
        **({"folders": list(model.folders)} if model.folders else {}),
        "preprocess": model.preprocess.to_json() if model.preprocess is not None else None,
        **({"source": source.to_dict()} if source is not None else {}),
        "versions": installed.versions(),
    }


@dataclass(frozen=True)
class Source:
    """The checkpoint an export was made from: its absolute path and sha256, so that an exported file
    names the training run behind it even after that checkpoint was replaced."""

    path: str
    sha256: str

    @classmethod
    def of(cls, path: str | os.PathLike) -> Source:
        """The source of the checkpoint file ``path``: its absolute path and the sha256 of its bytes (OSError
        if it cannot be read)."""
        with open(path, "rb") as f:
            return cls(os.path.abspath(path), hashlib.file_digest(f, "sha256").hexdigest())

    def to_dict(self) -> dict[str, str]:
        """``{"path": ..., "sha256": ...}``, as an export's metadata records it."""
        return {"path": self.path, "sha256": self.sha256}


def _mean_image(model: AlexNet) -> torch.Tensor | None:
    return model.preprocess.mean_image if model.preprocess is not None else None


def export_safetensors(model: AlexNet, path: str | os.PathLike, source: Source | None = None) -> list[Path]:
    """Write ``path`` (.safetensors) and ``path`` with suffix .json. Returns both paths."""
    path = Path(path)
    config = _config(model, source=source)
    meta = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in config.items()}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    mean_image = _mean_image(model)
    if mean_image is not None:  # beside the weights; the metadata holds its summary
        state[presets.MEAN_IMAGE_KEY] = mean_image
    # The sidecar names its weights: another name of the same stem (m.safetensors, m.bin) shares it.
    # Both are written before a Ctrl-C or SIGTERM stops the command: one between the two left new
    # weights beside an earlier export's .json, which tools other than alexnet.load read.
    with atomic.signals_held():
        atomic.write_safetensors(path, state, meta)
        side = atomic.write_text(path.with_suffix(".json"), json.dumps({**config, "weights": path.name}, indent=2) + "\n")
    return [path, side]


def _example(model: AlexNet, batch: int = 1) -> torch.Tensor:
    c = model.config
    return torch.zeros(batch, c.in_chans, c.input_size, c.input_size, device=next(model.parameters()).device)


class _StaticAdaptiveAvgPool(torch.nn.Module):
    """``AdaptiveAvgPool2d(out)`` for one input size, as slices and means. The TorchScript ONNX
    exporter refuses adaptive pooling whose output size does not divide the input's (``input_size``
    256 with ``adaptive_pool`` 6), or whose input size it cannot see; the spatial size is fixed in
    the exported graph anyway (only the batch axis is dynamic)."""

    def __init__(self, height: int, width: int, out: int) -> None:
        super().__init__()
        # torch's windows: rows floor(i * H / out) to ceil((i + 1) * H / out), columns alike
        self.rows = [(i * height // out, -(-(i + 1) * height // out)) for i in range(out)]
        self.cols = [(j * width // out, -(-(j + 1) * width // out)) for j in range(out)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.cat([x[:, :, a:b, c:d].mean(dim=(2, 3), keepdim=True) for c, d in self.cols], dim=3)
                          for a, b in self.rows], dim=2)


@contextlib.contextmanager
def _static_pooling(model: AlexNet):
    """``model`` with its adaptive pooling as :class:`_StaticAdaptiveAvgPool` at the size its
    ``input_size`` gives (the config's own arithmetic), put back afterwards."""
    original = model.avgpool
    if isinstance(original, torch.nn.AdaptiveAvgPool2d):
        side = model.config.pooled_size()
        model.avgpool = _StaticAdaptiveAvgPool(side, side, model.config.adaptive_pool)
    try:
        yield model
    finally:
        model.avgpool = original


def export_onnx(model: AlexNet, path: str | os.PathLike, source: Source | None = None, opset: int = 17) -> list[Path]:
    """Write an ONNX graph with a dynamic batch axis (input ``image``, output ``logits``).

    LRN is exported as plain element-wise ops and a channel window sum (the model switches to
    its traceable form during export), so any ONNX runtime runs it; adaptive pooling as slices
    and means at the input size the graph is built for.
    """
    try:
        import onnx
    except ImportError:
        raise ConfigError("--format onnx needs the onnx package: pip install 'alexnet[export]'") from None
    path = Path(path)
    model = model.eval()
    # the TorchScript-based exporter is noisy about its own deprecation
    with atomic_path(path) as tmp, warnings.catch_warnings(), _static_pooling(model):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (_example(model),),
            str(tmp),
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
        )
        proto = onnx.load(str(tmp))
        metadata = dict(_config(model, "onnx", source))
        mean_image = _mean_image(model)
        if mean_image is not None:  # ONNX metadata holds strings only: the mean image as a JSON list
            metadata[presets.MEAN_IMAGE_KEY] = json.dumps(mean_image.tolist())
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
        onnx.save(proto, str(tmp))
    return [path]


def _extra_files(model: AlexNet, binary: bool, source: Source | None) -> dict[str, str | bytes]:
    """The recipe as extra files of a TorchScript (``binary``) or .pt2 archive: ``config.json``,
    and the recipe's mean image, if any, as ``preprocess.mean_image.npy`` (readable with numpy
    alone), or as a JSON list ``preprocess.mean_image.json`` where the archive takes text only (.pt2)."""
    extra: dict[str, str | bytes] = {"config.json": json.dumps(_config(model, "torchscript" if binary else "pt2", source))}
    mean_image = _mean_image(model)
    if mean_image is not None and binary:
        buf = io.BytesIO()
        np.save(buf, mean_image.numpy())
        extra[presets.MEAN_IMAGE_KEY + ".npy"] = buf.getvalue()
    elif mean_image is not None:  # float32 -> JSON -> float32 is exact
        extra[presets.MEAN_IMAGE_KEY + ".json"] = json.dumps(mean_image.tolist())
    return extra


def export_pt2(model: AlexNet, path: str | os.PathLike, source: Source | None = None) -> list[Path]:
    """Write a ``torch.export`` program with a dynamic batch axis (``torch.export.load(path).module()``
    runs it without this package): TorchScript's successor in PyTorch."""
    path = Path(path)
    model = model.eval()
    batch = torch.export.Dim("batch")
    with atomic_path(path) as tmp:  # first: a folder it cannot write to is found before the work
        with torch.no_grad(), lrn.plain_ops():
            program = torch.export.export(model, (_example(model, 2),), dynamic_shapes=({0: batch},))
        buf = io.BytesIO()  # not the temporary file: the archive's folder would take its name
        torch.export.save(program, buf, extra_files=_extra_files(model, binary=False, source=source))
        tmp.write_bytes(buf.getbuffer())
    return [path]


def export_torchscript(model: AlexNet, path: str | os.PathLike, source: Source | None = None) -> list[Path]:
    """Write a traced TorchScript module (``torch.jit.load`` runs it without this package)."""
    path = Path(path)
    model = model.eval()
    # torch.jit is deprecated upstream but still the portable format
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, _example(model, 2))
        with open(tmp, "wb") as f:  # a file, not its name: the archive's folder is "archive", not the temporary's name
            torch.jit.save(traced, f, _extra_files=_extra_files(model, binary=True, source=source))
    return [path]


def torchvision_state_dict(model: AlexNet) -> dict[str, torch.Tensor]:
    """``model``'s weights under torchvision's names (on the CPU), which ``torchvision.models.alexnet(
    num_classes=N)`` loads; a ConfigError unless the network has its layers (``alexnet_owt``, RGB, at
    any input size: both pool adaptively to 6x6 before fc6)."""
    from .model import TORCHVISION_KEYS, describe_model, differences, model_config

    # The options that differ, each with torchvision's value: "alexnet_owt with widths=(8, ...)" named
    # the family the network belongs to, not why torchvision's alexnet cannot hold it.
    differs = {k: v for k, v in differences(model.config, "alexnet_owt").items() if k != "input_size"}
    theirs = {k: v for k, v in model_config("alexnet_owt").to_dict().items() if k in differs}
    if model.config.in_chans != 3:
        differs["in_chans"], theirs["in_chans"] = model.config.in_chans, 3
    if differs:
        said = [", ".join(f"{k}={v}" for k, v in options.items()) for options in (theirs, differs)]
        raise ConfigError(f"--format torchvision: torchvision's alexnet has alexnet_owt's layers ({said[0]}); "
                          f"this network ({describe_model(model.config)}) has {said[1]}: "
                          "export it as .safetensors, .onnx, .pt2 or .ts")
    ours = {v: k for k, v in TORCHVISION_KEYS.items()}
    return {f"{ours[k.rpartition('.')[0]]}.{k.rpartition('.')[2]}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def export_torchvision(model: AlexNet, path: str | os.PathLike, source: Source | None = None) -> list[Path]:
    """Write the state dict under torchvision's names: ``torchvision.models.alexnet(num_classes=N)``
    loads it. Only a network of torchvision's layout (``alexnet_owt``) has them; the file holds weights
    alone (``source`` too: torchvision's format has no place for it), so a recipe other than
    torchvision's ImageNet normalisation is warned about."""
    state = torchvision_state_dict(model)
    pre = model.preprocess
    imagenet = np.allclose([*pre.mean, *pre.std], [*presets.IMAGENET_MEAN, *presets.IMAGENET_STD]) if pre is not None else True
    if pre is not None and (pre.mean_image is not None or not imagenet):
        mean = "its mean image" if pre.mean_image is not None else f"mean {tuple(round(m, 1) for m in pre.mean)}"
        warnings.warn(f"{path}: torchvision's file holds weights alone, and this model takes inputs prepared by its "
                      f"'{pre.preset}' recipe ({mean}, std {tuple(round(v, 1) for v in pre.std)} on the 0-255 scale), not "
                      "torchvision's ImageNet normalisation: prepare them so", stacklevel=2)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # the archive's folder "archive", as for export_torchscript
        torch.save(state, f)
    return [Path(path)]


# The file names that say their format; any other name is written in the format asked (safetensors by default).
SUFFIXES = {
    ".pth": "torchvision",
    ".safetensors": "safetensors",
    ".onnx": "onnx",
    ".pt2": "pt2",
    ".ts": "torchscript",
    ".torchscript": "torchscript",
}


def resolve_format(fmt: str | None, path: str | os.PathLike) -> str:
    """The format to write ``path`` in: ``fmt`` if given, else the one its suffix names, else
    safetensors. Refuses a name that says another format than ``fmt``, a folder, and a safetensors
    file named ``.json`` (its JSON config, written beside it, would replace it)."""
    path = Path(path)
    named = SUFFIXES.get(path.suffix.lower())
    fmt = fmt or named or "safetensors"
    if fmt not in FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if named is not None and named != fmt:
        raise ConfigError(f"--out {path}: the name says {named}, but --format is {fmt}")
    if path.is_dir():
        raise ConfigError(f"--out {path}: is a folder; give a file name, e.g. {path / ('model' + _suffix(fmt))}")
    if fmt == "safetensors" and path.suffix.lower() == ".json":
        raise ConfigError(f"--out {path}: the safetensors file's JSON config is written beside it as {path.with_suffix('.json')}; "
                          "name the weights .safetensors")
    if fmt == "safetensors":
        _check_sidecar(path)
    return fmt


def unnamed_default(fmt: str | None, path: str | os.PathLike) -> str:
    """What export says after the files it wrote where neither ``fmt`` nor the name chose the format
    (``--out m.onxx``, meant for ONNX, is written as safetensors): the format and how to choose
    another; '' otherwise."""
    path = Path(path)
    if fmt or path.suffix.lower() in SUFFIXES:
        return ""
    others = ", ".join(suffix for suffix, named in SUFFIXES.items() if named != "safetensors")
    return f" (safetensors: the name {path.name} says no format; --format, or a name ending {others}, for another)"


def _check_sidecar(path: Path) -> None:
    """ConfigError unless the .json that a safetensors ``path`` writes beside it is free, or is this
    same file's config: ``--out m.bin`` replaced the config of an earlier ``--out m.safetensors`` (made
    from another checkpoint) with its own, and ``--out RUN/config`` a run's config.json."""
    side = path.with_suffix(".json")
    if not side.exists():
        return
    try:
        held = jsonio.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        held = None
    ours = isinstance(held, dict) and str(held.get("format", "")).startswith("alexnet-safetensors")
    # an export older than the "weights" key: this file's own config if the file is there
    weights = held.get("weights", path.name if path.exists() else None) if ours else None
    if weights == path.name:
        return
    what = f"the config of {weights}" if ours and weights else "a file that export did not write for it"
    raise ConfigError(f"--out {path}: its JSON config would replace {side}, {what}; give the weights another name "
                      f"(or remove {side})")


def _suffix(fmt: str) -> str:
    return next(suffix for suffix, f in SUFFIXES.items() if f == fmt)


def export(model: AlexNet, fmt: str | None, path: str | os.PathLike, source: Source | None = None) -> list[Path]:
    """Export ``model`` (from :func:`alexnet.load`) to ``path`` in ``fmt`` (one of :data:`FORMATS`;
    None: as :func:`resolve_format` says); ``source`` (``Source.of(checkpoint)``) is recorded with it."""
    fmt = resolve_format(fmt, path)
    writers = {"safetensors": export_safetensors, "onnx": export_onnx, "pt2": export_pt2, "torchscript": export_torchscript,
               "torchvision": export_torchvision}
    return writers[fmt](model, path, source=source)
