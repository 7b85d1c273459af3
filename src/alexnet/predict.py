"""Classify your own pictures: image files or folders in, top-K class names and probabilities out."""

from __future__ import annotations

import functools
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .data.folder import (
    _image_files,
    _resize_crop,
    class_name,
    decode_image,
    find_classes,
    not_images,
    pil_image,
    to_luma,
)
from .data.loaders import model_input
from .data.presets import Preprocess
from .errors import CheckpointError, ConfigError, DataError, decoding_failure
from .model import AlexNet
from .runtime import autocast, counted, eval_mode, precision_name, progress, resolve_amp, say


def _alexnet(model: object) -> None:
    if not isinstance(model, AlexNet):  # a checkpoint's path, most often
        raise TypeError(f"expected an AlexNet, got {kind_of(model)}: alexnet.load(checkpoint) gives one")


def recipe(model: AlexNet) -> Preprocess:
    """The preprocessing recipe ``model`` carries; a DataError for a bare network (``create_model``)."""
    _alexnet(model)
    if getattr(model, "preprocess", None) is None:
        raise DataError("the model has no preprocessing recipe (a network from create_model knows no data); "
                        "load a trained one with alexnet.load(checkpoint)")
    return model.preprocess


def kind_of(value: object) -> str:
    """What ``value`` is, in a few words (a tensor's repr would print its numbers)."""
    if isinstance(value, (list, tuple)):
        odd = next((v for v in value if not isinstance(v, (str, os.PathLike))), None)
        if odd is None:  # only paths, or nothing: not "holding a builtins.NoneType"
            return f"a {type(value).__name__} of {len(value)} path{'s' if len(value) != 1 else ''}"
        return f"a {type(value).__name__} holding a {type(odd).__module__}.{type(odd).__name__}"
    return f"a {type(value).__module__}.{type(value).__name__}"


def class_names(model: AlexNet) -> list[str]:
    """The names of ``model``'s outputs (numbered when it carries none); ConfigError when fc8 was
    replaced by hand and no longer has an output per name."""
    _alexnet(model)
    outputs = model.fc8.out_features
    classes = list(model.classes or [str(i) for i in range(model.config.num_classes)])
    if len(classes) != outputs or model.config.num_classes != outputs:
        raise ConfigError(f"the model's fc8 has {outputs} outputs but it names {len(classes)} classes "
                          f"(config.num_classes {model.config.num_classes}): replace fc8 with model.reset_classifier"
                          f"({outputs}, classes=[...]), which keeps them in step")
    return classes


def image_paths(inputs: str | os.PathLike | list[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (searched recursively, sorted) into image files; one path may be
    given alone.

    Raises:
        DataError: a path does not exist, or a folder holds no images.
    """
    if isinstance(inputs, (str, os.PathLike)):  # not its characters, one by one
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)) or not all(isinstance(i, (str, os.PathLike)) for i in inputs):
        raise TypeError(f"images are given as paths (a file or folder, or a list of them), not {kind_of(inputs)}; "
                        "for a tensor: model(alexnet.data.loaders.model_input(uint8_batch, index, model.preprocess, False))")
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            others: list[str] = []
            found = [Path(f) for f in _image_files(p, others)]  # regular files only: a FIFO would block
            if not found:
                raise DataError(f"{p}: no image files in this folder" + (f" ({not_images(others)})" if others else ""))
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        elif p.exists():
            raise DataError(f"{p}: not a regular file (a FIFO, device or socket)")
        else:
            raise DataError(f"{p}: no such file or folder")
    return paths


def load_image(path: str | os.PathLike, preprocess: Preprocess) -> torch.Tensor:
    """Decode one image as the model's data was stored: (C, size, size) uint8.

    The shorter side is resized to ``preprocess.resize`` (or ``size``), the centre square
    kept; one-channel models get the ITU-R 601 luma of the RGB image, as PIL's "L" mode.
    The image is first turned upright as its EXIF orientation tag says (phones store photos sideways
    with such a tag), as training, evaluation and the statistics see it (:func:`alexnet.data.folder.decode_bytes`).

    Raises:
        DataError: the file cannot be read as an image.
        OutOfMemory: the memory free cannot hold it decoded (the file is not to blame).
    """
    resize, size = preprocess.stored_sizes()
    try:
        image = decode_image(str(path), resize, size)
    except Exception as e:  # noqa: BLE001 - whatever the decoder raises, the file is what is wrong ...
        short = decoding_failure(e, path)
        if short is not None:  # ... but for want of memory
            raise short from None
        raise DataError(f"{path}: cannot read this image ({type(e).__name__}: {' '.join(str(e).split()) or 'no detail'})") from None
    return to_luma(image) if preprocess.channels == 1 else image


class ImageTransform:
    """What :func:`predict` does to one image, for your own Dataset or loop (torchvision's
    ``weights.transforms()``, timm's ``create_transform``): an image file's path, a PIL image or a
    uint8 (C, H, W) tensor (``torchvision.io.read_image``'s) -> the float (C, input_size, input_size)
    tensor the model takes. ``model.preprocess.transforms()`` makes one; it pickles, for DataLoader workers.

    The image is made RGB (grey ones repeated, alpha dropped, as predict's decoding does), turned upright
    by its EXIF orientation where it has one (a path, a PIL image; a tensor is taken as it is), its
    shorter side resized to the recipe's ``resize``, the central square it stored kept, made luma for a
    one-channel model, then centre-cropped and normalised (:func:`alexnet.data.loaders.model_input`). A
    path is decoded exactly as predict decodes it; a PIL image or tensor of a JPEG at least twice the
    ``resize`` was decoded in full, where predict lets libjpeg decode it at a reduced size (close, not equal).
    """

    def __init__(self, preprocess: Preprocess) -> None:
        if not isinstance(preprocess, Preprocess):
            raise TypeError(f"ImageTransform takes a recipe (a loaded model's .preprocess), not {type(preprocess).__name__}")
        self.preprocess = preprocess

    def __call__(self, image: str | os.PathLike | torch.Tensor | Image.Image) -> torch.Tensor:
        pre = self.preprocess
        if isinstance(image, (str, os.PathLike)):
            x = load_image(image, pre)
        else:
            if isinstance(image, torch.Tensor):
                x = _resize_crop(_rgb_tensor(image), *pre.stored_sizes())
            elif isinstance(image, Image.Image):
                x = pil_image(image, *pre.stored_sizes())
            else:
                raise TypeError(f"ImageTransform takes an image file's path, a PIL image or a uint8 (C, H, W) tensor, "
                                f"not {kind_of(image)}")
            x = to_luma(x) if pre.channels == 1 else x
        return model_input(x.unsqueeze(0), torch.zeros(1, dtype=torch.int64), pre, False)[0]

    def __repr__(self) -> str:
        pre = self.preprocess
        resize, size = pre.stored_sizes()
        image = ", mean_image" if pre.mean_image is not None else ""
        return (f"ImageTransform(resize={resize}, stored={size}, crop={pre.test_crop}, input_size={pre.input_size}, "
                f"mean={pre.mean}{image}, std={pre.std})")


def _rgb_tensor(image: torch.Tensor) -> torch.Tensor:
    """A uint8 (C, H, W) image tensor (grey, grey and alpha, RGB, RGBA) as (3, H, W) RGB; ValueError for any other."""
    if image.dtype != torch.uint8 or image.dim() != 3 or not 1 <= image.shape[0] <= 4:
        raise ValueError(f"ImageTransform takes a uint8 (C, H, W) image tensor of 1 to 4 channels (0-255 pixels, as "
                         f"torchvision.io.read_image gives), not {image.dtype} of shape {tuple(image.shape)}")
    return image[:1].expand(3, -1, -1) if image.shape[0] <= 2 else image[:3]


def true_class(path: str | os.PathLike, classes: list[str], depth: int = 3, folders: list[str] | None = None) -> str | None:
    """The class the nearest of an image's ``depth`` enclosing folders names, if one is in ``classes``.

    Folders as the path names them, links not followed: training labels an image by the class
    folder it is listed under, also in a linked class folder, a linked file, or a sub-folder. A
    folder name (e.g. ImageNet's ``n02086240``) is also named as training named it, from the folder
    and its siblings, by the same code (:func:`alexnet.data.folder.find_classes`: a ``classes.tsv``,
    else the 1000 ILSVRC synsets, or some of them at their rank in the devkit's ``meta.mat`` or
    Kaggle's ``LOC_synset_mapping.txt`` beside the data, by torchvision's categories; else the known
    synsets). A folder the data names by itself that is one of the model's ``folders`` (the class
    folders a run recorded: synsets a mapping named, scored without it) is that output's class.
    """
    for folder in list(Path(os.path.abspath(path)).parents)[:depth]:
        own = class_name(folder.name)
        if own in classes:
            return own
        siblings, names = _sibling_classes(str(folder.parent))
        name = names[siblings.index(folder.name)] if folder.name in siblings else None
        if name in classes:
            return name
        if folders and own in folders and name == own and len(folders) == len(classes):
            return classes[folders.index(own)]
    return None


@functools.lru_cache(maxsize=64)
def _sibling_classes(root: str) -> tuple[list[str], list[str]]:
    """The class folders of ``root`` and their names, as training names them (the 1000 ILSVRC synsets
    need all their siblings, a subset of them the ImageNet files beside them): read once per folder,
    not once per image. Any folder may hold a broken link (a home folder's to an unmounted drive): it
    names no class here, so it is passed over. A damaged devkit or Kaggle file beside synset folders,
    which train and evaluate refuse, is said in one warning line: the images are still classified,
    but without a word their true classes went unmarked."""
    try:
        return find_classes(root, broken_links=True)
    except DataError as e:
        warnings.warn(f"{e}; the true classes of the images under {root} are not marked", stacklevel=2)
        return [], []


def model_log_probs(
    model: AlexNet,
    images: torch.Tensor,
    preprocess: Preprocess,
    ten_crop: bool = False,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Log-probabilities (B, classes) of one model for a uint8 batch, averaged over ten crops if asked;
    from the logits, so a probability under float32's range is not 0, whose log a loss would have to
    clamp (evaluate's was cut at -log 1e-12 = 27.6 an image).

    Ten crops are cut from the stored image, padded by ``preprocess.padding`` as in training: a
    32 px CIFAR image gives ten different 32 px crops of its padded 40 px version, while a crop the
    size of an unpadded image (Fashion-MNIST's 28 px) is the image and its mirror, five times each.
    Their probabilities are averaged (as log-sum-exp less log 10).
    """
    views = 10 if ten_crop else 1
    # One view of the batch at a time, made when it is forwarded: ten crops of 256 images at once
    # would hold 2,560 images' activations (about 10 GB for alexnet_paper), and their normalised
    # inputs alone are 1.5 GB in float32. Their log-probabilities are small: (B, views, classes).
    log_probs = torch.stack([_view_log_probs(model, images, preprocess, views, v, amp, channels_last) for v in range(views)], 1)
    # not checked here (a read per batch, a wait on a GPU): predict checks on the host, evaluate by its loss
    return mean_of_probs(log_probs, dim=1)


def _view_log_probs(
    model: AlexNet, images: torch.Tensor, preprocess: Preprocess, views: int, view: int, amp: torch.dtype | None,
    channels_last: bool,
) -> torch.Tensor:
    """Log-probabilities (B, classes) of one of the ``views`` test views of a uint8 batch. Its input
    is gone when this returns: the next view's is made in the same (pooled) memory."""
    index = torch.zeros(images.shape[0], dtype=torch.int64, device=images.device)  # unused at test time
    x = model_input(images, index, preprocess, False, channels_last=channels_last, views=views, view=view)
    x = x.to(model.dtype)  # a model cast to bf16/fp16 (model.half()) takes its own dtype
    with autocast(images.device, amp):
        return torch.log_softmax(model(x).float(), dim=1)


def mean_of_probs(log_probs: torch.Tensor, dim: int) -> torch.Tensor:
    """The log of the mean of ``exp(log_probs)`` over ``dim``, computed in the log domain."""
    if log_probs.shape[dim] == 1:
        return log_probs.squeeze(dim)
    return torch.logsumexp(log_probs, dim=dim) - math.log(log_probs.shape[dim])


def check_finite(values: torch.Tensor, amp: torch.dtype | None, what: str = "outputs") -> None:
    """CheckpointError where the network's ``what`` (a row per image) overflowed to inf or NaN (inf
    logits give NaN probabilities): scores, accuracies and distances, and the JSON printed of them
    (NaN and Infinity, which JSON has not), would mean nothing."""
    bad = int((~torch.isfinite(values)).flatten(1).any(dim=1).sum())
    if bad:
        precision = precision_name(amp)
        hint = "; --amp none computes in float32" if amp is not None else ""
        raise CheckpointError(f"the network's {what} are not finite (NaN or inf) for {bad} of {counted(values.shape[0], 'image')} in "
                              f"{precision}: its activations overflow, so it scores nothing{hint}")


@torch.no_grad()
def predict(
    model: AlexNet,
    inputs: str | os.PathLike | list[str | os.PathLike],
    top: int = 5,
    batch_size: int = 32,
    return_images: bool = False,
    show_progress: bool | None = None,
    amp: torch.dtype | str | None = None,
) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], list[torch.Tensor]]:
    """Top-``top`` classes of every image in ``inputs`` (files or folders) with a loaded model.

    ``model`` is what :func:`alexnet.load` returns (it carries ``classes`` and ``preprocess``).
    Each result: ``{"path", "top": [{"class", "index", "probability"}, ...], "label"}`` where
    ``label`` is the true class when the parent folder names one (else None). With
    ``return_images`` the decoded uint8 images come back too (for figures). Unreadable images are
    skipped with one warning line each on stderr; a DataError says so when none could be read.
    ``amp``: the autocast dtype (None: float32), or its name as ``--amp`` takes it (``"bf16"``).
    """
    for name, value in (("top", top), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"predict: {name} must be a whole number >= 1, got {value!r}")
    classes = class_names(model)
    preprocess = recipe(model)
    paths = image_paths(inputs)
    device = next(model.parameters()).device
    amp = resolve_amp(amp, device)  # "bf16" as on the command line, or a dtype
    results: list[dict[str, Any]] = []
    images_out: list[torch.Tensor] = []
    k = min(top, len(classes))
    starts = range(0, len(paths), batch_size)
    failed: list[DataError] = []
    with eval_mode(model):  # once, not per batch: it visits every module
        for start in progress(starts, total=len(starts), desc="predict", enabled=show_progress, unit="batch"):
            chunk, images = _load_images(paths[start : start + batch_size], preprocess, failed)
            if not chunk:
                continue
            probs = model_log_probs(model, images.to(device), preprocess, amp=amp).exp().cpu()
            check_finite(probs, amp)  # on the host already: no wait of its own
            values, indices = probs.topk(k, dim=1)
            for p, v, i in zip(chunk, values, indices):
                results.append(
                    {
                        "path": str(p),
                        "top": [{"class": classes[j], "index": int(j), "probability": float(q)} for q, j in zip(v, i)],
                        "label": true_class(p, classes, folders=getattr(model, "folders", None)),
                    }
                )
            if return_images:
                images_out.extend(images)
    _report_unreadable(failed, predicted=len(results))
    return (results, images_out) if return_images else results


def _load_images(paths: list[Path], preprocess: Preprocess, failed: list[DataError]) -> tuple[list[Path], torch.Tensor]:
    """The readable ones of ``paths`` and their stacked images; the errors of the others go to ``failed``."""
    kept, images = [], []
    for p in paths:
        try:
            images.append(load_image(p, preprocess))
            kept.append(p)
        except DataError as e:
            failed.append(e)
    return kept, torch.stack(images) if images else torch.empty(0)


def _report_unreadable(failed: list[DataError], predicted: int) -> None:
    """One warning line per unreadable image; a DataError (one line) when no image was readable."""
    if predicted == 0 and failed:
        if len(failed) == 1:
            raise failed[0]
        raise DataError(f"none of the {len(failed)} images could be read; the first: {failed[0]}")
    for e in failed:  # reported after the others, so that a run where nothing works says it once
        say(f"warning: skipping {e}")  # 'skipping', as an image folder's unreadable files are said
