"""fc7 features and image retrieval (the paper's section 6.1 and figure 4, right).

An index is a safetensors file: ``features`` (N, 4096) float32 and ``labels`` (N,) int64 tensors,
with paths, class names, the checkpoint and the preprocessing recipe as JSON in its metadata.
Nothing in it is pickled, so reading one runs no code.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from . import jsonio
from .atomic import write_safetensors
from .checks import require_loader_sizes
from .data import presets
from .data.folder import ImageFolderDataset, collate, find_classes, list_images, skipped, top_level_images
from .data.loaders import model_input
from .data.presets import Preprocess
from .data.sources import detect, each_batch, refuse_split_folders
from .errors import ConfigError, DataError
from .installed import versions
from .model import AlexNet
from .predict import check_finite, kind_of, load_image, recipe
from .runtime import autocast, eval_mode, precision_name, progress, resolve_amp

INDEX_FORMAT = "alexnet-fc7-index-1"


@torch.no_grad()
def fc7(model: AlexNet, images: torch.Tensor, amp: torch.dtype | str | None = None) -> torch.Tensor:
    """fc7 vectors (B, fc_width) of a uint8 batch prepared by the model's ``preprocess`` (centre crop),
    computed under autocast to ``amp`` (None: float32)."""
    device = next(model.parameters()).device
    x = model_input(images.to(device), torch.zeros(len(images), dtype=torch.int64), model.preprocess, False).to(model.dtype)
    amp = resolve_amp(amp, device)  # "bf16" as on the command line, or a dtype
    with autocast(device, amp), eval_mode(model):
        out = model.forward_fc7(x).float().cpu()
    check_finite(out, amp, "fc7 features")  # their distances would be NaN
    return out


def fc7_fingerprint(model: AlexNet) -> str:
    """A digest of what an image's fc7 vector depends on: every weight but fc8's, and the recipe
    that prepares the image. Two models with the same digest put images at the same points."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict().items():
        if not name.startswith("fc8."):
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy())
    pre = model.preprocess
    if pre is not None:
        h.update(json.dumps(pre.to_json(), sort_keys=True).encode())
        if pre.mean_image is not None:
            h.update(pre.mean_image.to(torch.float32).contiguous().numpy())
    return h.hexdigest()


def _index_samples(root: Path) -> tuple[list[tuple[str, int]], tuple[list[str], list[str]]]:
    """(path, label) of every image under ``root``, and the classes: images in CLASS folders (at
    any depth) labelled by them, images at the top level with -1 (no class), as ILSVRC's val/."""
    samples, classes = [], ([], [])
    with os.scandir(root) as entries:
        nested = any(d.is_dir() and not skipped(d.name) for d in entries)
    if nested:
        refuse_split_folders(root, lambda splits: f"index one split, e.g. --data {root / ('val' if 'val' in splits else splits[0])}")
        classes = find_classes(root)
        samples = list_images(root, classes[0], empty_ok=True)  # predict, too, takes a folder with an empty one
    return samples + [(f, -1) for f in top_level_images(root)], classes


def file_stamp(path: str) -> list[int] | None:
    """[size, modification time in ns] of ``path`` (None if it cannot be read): an image replaced
    under the same name since it was indexed has another, as the statistics cache tells it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def changed_since_indexed(index: dict[str, Any], paths: list[str]) -> list[str]:
    """Those of ``paths`` (of ``index``) whose file is no longer the one indexed: replaced under the
    same name, edited, or gone. Their stored features, and so their distances, are of the old image.
    An index from before the stamps were kept tells nothing: []."""
    stamps = index.get("stamps")
    if not isinstance(stamps, list) or len(stamps) != len(index["paths"]):
        return []
    recorded = dict(zip(index["paths"], stamps))
    return [p for p in paths if p in recorded and recorded[p] != file_stamp(p)]


def _image_folder(data: str | os.PathLike) -> Path:
    """``data`` as an absolute folder of image files, or why it is not one (another data set's kind)."""
    if not isinstance(data, (str, os.PathLike)):
        raise TypeError(f"build_index: data is an image folder's path, not {kind_of(data)}")
    root = Path(os.path.abspath(data))
    if not root.is_dir():
        raise DataError(f"--data: {data} is not a folder of images")
    kind = detect(root)  # also refuses half a data set in one line
    if kind != "images":
        what = {"packed": "a packed data set: give it the folder 'alexnet prepare' read", "cifar": "CIFAR batches",
                "fashion_mnist": "Fashion-MNIST"}[kind]
        raise DataError(f"{data}: features indexes image files, for retrieve to show; this is {what}")
    return root


def build_index(
    model: AlexNet,
    data: str | os.PathLike,
    batch_size: int = 64,
    workers: int = 0,
    checkpoint: str | os.PathLike | None = None,
    show_progress: bool | None = None,
    amp: torch.dtype | str | None = None,
) -> dict[str, Any]:
    """fc7 features of every image of an image folder: CLASS/IMAGE files (labelled by their folder)
    and images at its top level, as in a flat folder such as ILSVRC's val/ (label -1: no class).
    Paths are stored absolute, so that the index works from any folder.

    Returns ``{"features", "labels", "paths", "classes", "checkpoint", "preprocess", "fingerprint"}``.
    """
    require_loader_sizes("build_index", batch_size, workers)
    root = _image_folder(data)
    pre = recipe(model)
    amp = resolve_amp(amp, next(model.parameters()).device)  # as precision_name records it
    samples, classes = _index_samples(root)
    if not samples:
        raise DataError(f"{data}: no images")
    check_header_fits([p for p, _ in samples], classes[1], data)  # not after hours of fc7
    resize, size = pre.stored_sizes()
    ds = ImageFolderDataset(root, resize=resize, size=size, channels=pre.channels, samples=samples, classes=classes)
    # generator: the base seed each iterator draws comes from it, not from the caller's torch RNG
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                                         generator=torch.Generator())
    # Filled in place: a list of batches joined by torch.cat held every vector twice at its end (32 KB
    # an image: 41 GB for ImageNet's 1.28 M training images, where one copy is 21 GB).
    feats = torch.empty(len(samples), model.config.fc_width)
    labels, kept = torch.empty(len(samples), dtype=torch.int64), []
    for batch in progress(each_batch(loader), total=len(loader), desc="fc7 features", enabled=show_progress, unit="batch"):
        if batch is None:
            continue
        images, y, index = batch
        feats[len(kept) : len(kept) + len(y)] = fc7(model, images, amp)
        labels[len(kept) : len(kept) + len(y)] = y
        kept.extend(int(i) for i in index)
    if not kept:
        raise DataError(f"{root}: no readable images")
    paths = ds.samples.paths(kept)
    return {
        "features": feats[: len(kept)],  # the unreadable images' rows are at the end, unused
        "labels": labels[: len(kept)],
        "paths": paths,
        "stamps": [file_stamp(p) for p in paths],  # for retrieve to tell an image replaced since
        "classes": list(ds.classes),
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "preprocess": pre,
        "fingerprint": fc7_fingerprint(model),
        "precision": precision_name(amp),
    }


# safetensors writes and reads no header over 100,000,000 bytes ('header too large'), and an index's
# header holds every path and file stamp: about 90 bytes an image, so a million images or so.
HEADER_LIMIT = 100_000_000
STAMP_BYTES = 36  # a stamp's most in the header: '[' 9-digit size ', ' 19-digit ns ']' ', ' escaped


def check_header_fits(paths: list[str], classes: list[str], where: str | os.PathLike) -> None:
    """DataError, before any work, when an index of ``paths`` and ``classes`` would have a header over
    safetensors' limit: their JSON (escaped again in the header), a stamp each, 64 KiB for the rest."""
    size = len(json.dumps(json.dumps(paths))) + len(json.dumps(json.dumps(classes))) + STAMP_BYTES * len(paths) + (1 << 16)
    if size > HEADER_LIMIT:
        raise DataError(
            f"{where}: an index of its {len(paths):,} images would carry {size / 1e6:.0f} MB of paths and file stamps, "
            f"over the {HEADER_LIMIT / 1e6:.0f} MB a safetensors header holds: index a part of it (some class folders, "
            "or val/), one index each"
        )


def save_index(index: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write an index as safetensors (atomically, the same bytes for the same index: see :mod:`alexnet.atomic`)."""
    path = Path(path)
    check_header_fits(index["paths"], index["classes"], path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": INDEX_FORMAT,
        "paths": json.dumps(index["paths"]),
        "classes": json.dumps(index["classes"]),
        "checkpoint": json.dumps(index.get("checkpoint")),
        "preprocess": json.dumps(index["preprocess"].to_json()),
        "fingerprint": json.dumps(index.get("fingerprint")),
        "precision": json.dumps(index.get("precision")),
        "stamps": json.dumps(index.get("stamps")),
        "versions": json.dumps(versions()),  # of what computed the features
    }
    tensors = {"features": index["features"].contiguous(), "labels": index["labels"].to(torch.int64).contiguous()}
    mean_image = index["preprocess"].mean_image
    if mean_image is not None:  # the recipe's mean image, summarised in the metadata
        tensors[presets.MEAN_IMAGE_KEY] = mean_image
    return write_safetensors(path, tensors, meta)


def load_index(path: str | os.PathLike) -> dict[str, Any]:
    """Read an index written by :func:`save_index` (DataError if it is not one)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"--index: file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != INDEX_FORMAT:
                raise DataError(f"{path}: not a feature index written by 'alexnet features'")
            features, labels = f.get_tensor("features"), f.get_tensor("labels")
            mean_image = f.get_tensor(presets.MEAN_IMAGE_KEY) if presets.MEAN_IMAGE_KEY in f.keys() else None
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable feature index ({type(e).__name__})") from None
    if features.dim() != 2 or tuple(labels.shape) != (len(features),):
        raise DataError(f"{path}: features {tuple(features.shape)} and labels {tuple(labels.shape)} do not make an index")
    out = {"features": features, "labels": labels, **_index_metadata(path, meta, len(features))}
    out["fingerprint"] = _optional_text(path, meta, "fingerprint")  # absent in indexes of 0.x before it: not checked
    out["precision"] = _optional_text(path, meta, "precision")
    if out["precision"] is None and out["fingerprint"] is None:  # 'features' took --amp only after it kept digests
        out["precision"] = "float32"  # (747d03c, then b3e738d): an index without either is float32's
    try:  # absent in indexes from before it: nothing is checked
        out["stamps"] = jsonio.loads(meta.get("stamps", "null"))
    except json.JSONDecodeError:
        out["stamps"] = None
    out["preprocess"] = Preprocess.from_dict(out["preprocess"], mean_image, str(path))
    return out


def _optional_text(path: Path, meta: dict[str, str], key: str) -> str | None:
    """An index's string-valued metadata entry that older indexes lack (None); DataError naming the
    file where it is not a JSON string (a damaged or hand-made index), not an internal error."""
    try:
        value = jsonio.loads(meta.get(key, "null"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: its {key!r} metadata is not valid JSON ({e.msg}); write it again with 'alexnet features'") from None
    if not isinstance(value, (str, type(None))):
        raise DataError(f"{path}: its {key!r} metadata is a {type(value).__name__}, not what 'alexnet features' writes")
    return value


def _index_metadata(path: Path, meta: dict[str, str], rows: int) -> dict[str, Any]:
    """Paths, classes, checkpoint and preprocess of an index's metadata, checked: one DataError
    naming the file when an entry is missing, not JSON, of the wrong type or of the wrong length."""
    wanted = {"paths": list, "classes": list, "checkpoint": (str, type(None)), "preprocess": dict}
    out = {}
    for key, kind in wanted.items():
        try:
            out[key] = jsonio.loads(meta[key])
        except KeyError:
            raise DataError(f"{path}: its metadata has no {key!r}; write it again with 'alexnet features'") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: its {key!r} metadata is not valid JSON ({e.msg}); write it again with 'alexnet features'") from None
        if not isinstance(out[key], kind):
            raise DataError(f"{path}: its {key!r} metadata is a {type(out[key]).__name__}, not what 'alexnet features' writes")
    if len(out["paths"]) != rows or not all(isinstance(p, str) for p in out["paths"]):
        raise DataError(f"{path}: its metadata lists {len(out['paths'])} paths for {rows} feature vectors")
    return out


# Index rows whose distances are computed at a time (in float64): 2048 x 4096 x 8 B = 64 MiB. A float64
# copy of a whole index took twice its float32 size again per query (retrieve on 30,000 images held
# 3.4 GB; on ImageNet's 1.28 M training images, 42 GB on top of the index's 21 GB).
NEAREST_ROWS = 2048


def distances(features: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (float64) of one vector to every row of ``features``, ``NEAREST_ROWS`` rows
    at a time: memory for the distances and one block, not a float64 copy of every row."""
    q = query.double().reshape(1, -1)
    blocks = [((features[i : i + NEAREST_ROWS].double() - q) ** 2).sum(1).sqrt() for i in range(0, len(features), NEAREST_ROWS)]
    return torch.cat(blocks) if blocks else torch.zeros(0, dtype=torch.float64)


def nearest(index: dict[str, Any], query: torch.Tensor, k: int = 6) -> list[dict[str, Any]]:
    """The ``k`` index entries nearest to one fc7 vector by Euclidean distance, nearest first."""
    d = distances(index["features"], query)
    values, order = d.topk(min(k, len(d)), largest=False)
    out = []
    for dist, i in zip(values.tolist(), order.tolist()):
        label = int(index["labels"][i])
        name = index["classes"][label] if 0 <= label < len(index["classes"]) else None  # -1: a flat folder's images
        out.append({"path": index["paths"][i], "distance": dist, "label": name})
    return out


def _check_index(index: Any, where: str) -> None:
    """TypeError naming ``where``'s argument unless ``index`` is an index dict (a path said
    'string indices must be integers')."""
    if not isinstance(index, dict):
        hint = ": alexnet.retrieval.load_index(path) reads a saved one" if isinstance(index, (str, os.PathLike)) else ""
        raise TypeError(f"{where}: index is the dict build_index or load_index returns, not {kind_of(index)}{hint}")


def _check_width(model: AlexNet, index: dict[str, Any], model_name: str = "the model", index_name: str = "the index") -> None:
    if index["features"].shape[1] != model.config.fc_width:
        raise DataError(f"{index_name} holds {index['features'].shape[1]}-d features but {model_name}'s fc7 has {model.config.fc_width}")


def check_index_model(
    model: AlexNet, index: dict[str, Any], model_name: str = "this checkpoint", index_name: str = "the index"
) -> None:
    """DataError unless ``model`` puts images where the model that built ``index`` did (the names
    say which files they came from); an index from before the digest was kept is warned about,
    as it cannot be checked. Once per pairing, not per query: the digest reads every weight (a
    quarter of a second for AlexNet)."""
    _check_index(index, "check_index_model")
    _check_width(model, index, model_name, index_name)
    if index.get("fingerprint") is None:
        warnings.warn(f"{index_name} was written by an earlier alexnet, which kept no digest of its model: that {model_name} "
                      "built it (and has not been trained further since) is not checked; 'alexnet features' indexes again",
                      stacklevel=2)
    elif index["fingerprint"] != fc7_fingerprint(model):
        built = f" ({index['checkpoint']})" if index.get("checkpoint") else ""
        raise DataError(
            f"{model_name} is not the model that built {index_name}{built}: its fc7 space differs, so distances "
            f"would mean nothing; index the images with {model_name} ('alexnet features')"
        )


_PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}  # precision_name's, inverted


def query_amp(amp: torch.dtype | str | None, index: dict[str, Any], device: torch.device) -> torch.dtype | None:
    """The precision a query's fc7 is computed in: ``amp`` resolved, but ``"auto"`` takes the index's
    own where this device computes it. A query in another precision than the index's puts an indexed
    image off itself (0.06 for a float32 index of a trained net queried in bf16), and auto's choice
    differs from machine to machine: an index built with --amp none, or on a GPU, queried here."""
    if amp == "auto" and index.get("precision") in _PRECISIONS:
        try:
            return resolve_amp(_PRECISIONS[index["precision"]], device)
        except ConfigError:  # float16 features, queried on a CPU: auto's choice, and the warning below
            pass
    return resolve_amp(amp, device)


def retrieve(
    model: AlexNet,
    index: dict[str, Any],
    image: str | os.PathLike,
    k: int = 6,
    amp: torch.dtype | str | None = None,
    check: bool = True,
) -> list[dict[str, Any]]:
    """The ``k`` indexed images nearest to the image file ``image`` in the model's fc7 space (``amp``:
    as for :func:`fc7`). ``check``: first make sure ``model`` built ``index``
    (:func:`check_index_model`, a quarter of a second: for many queries, check once and pass False)."""
    pre = recipe(model)
    _check_index(index, "retrieve")
    amp = query_amp(amp, index, next(model.parameters()).device)
    if not isinstance(image, (str, os.PathLike)):
        raise TypeError(f"retrieve: the query is the path of one image file, not {kind_of(image)}")
    if Path(image).is_dir():
        raise DataError(f"{image}: a folder; retrieve takes one image file as its query")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"retrieve: k must be a whole number >= 1, got {k!r}")
    if check:
        check_index_model(model, index)
    _check_width(model, index)  # cheap, and torch.cdist's error would be obscure
    if index.get("precision") is None:  # an index of alexnet 0.1.0 from between b3e738d and d1826aa
        warnings.warn(f"the index does not record the precision its features were computed in: if it is not the query's, "
                      f"{precision_name(amp)}, distances carry the difference (an indexed image is not at 0 from itself); "
                      "'alexnet features' indexes again", stacklevel=2)
    elif index["precision"] != precision_name(amp):
        warnings.warn(f"the index's features were computed in {index['precision']} and the query's are in "
                      f"{precision_name(amp)}: distances carry the difference (an indexed image is not at 0 from itself); "
                      "query in the index's precision (--amp) where this device has it, or index again in the query's",
                      stacklevel=2)
    query = fc7(model, load_image(image, pre).unsqueeze(0), amp)[0]
    return nearest(index, query, k)
