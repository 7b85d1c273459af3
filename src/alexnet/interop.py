"""Weights in: torchvision's alexnet and BVLC's bvlc_alexnet (Caffe ``.caffemodel`` or the TF ports' ``.npy``).

Each importer returns a checkpoint dict (``model``, ``model_config``, ``classes``, ``preprocess``)
that :func:`alexnet.load` and every command read. Caffe's network takes BGR images on the 0-255
scale minus a mean; the converted model takes RGB like every other model here: conv1's input
channels are reversed, and ``preprocess`` holds the RGB mean with a standard deviation of 1.

The ``.caffemodel`` is read with a minimal protobuf wire-format reader (no caffe or protobuf
package): only the fields below of caffe.proto are used.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import FORMAT
from .data.presets import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from .errors import CheckpointError, CheckpointNotFound, check_weights, state_dict_mismatch
from .model import LAYER_NAMES, AlexNet, model_config
from .unpickle import load_plain

# ILSVRC-2012 mean of BVLC's ilsvrc_2012_mean.binaryproto, averaged over pixels, in B, G, R order.
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)

# caffe.proto field numbers.
NET_LAYER, NET_LAYERS_V1 = 100, 2  # NetParameter: repeated LayerParameter layer / V1LayerParameter layers
LAYER_NAME, LAYER_TYPE, LAYER_BLOBS = 1, 2, 7  # LayerParameter (type: a string, "LRN", "Pooling", ...)
V1_NAME, V1_TYPE, V1_BLOBS = 4, 5, 6  # V1LayerParameter (type: an enum)
V1_KINDS = {15: "LRN", 17: "Pooling"}  # V1LayerParameter.LayerType
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH = 1, 2, 3, 4  # BlobProto (legacy 4-d shape)
BLOB_DATA, BLOB_SHAPE, BLOB_DOUBLE_DATA = 5, 7, 8  # BlobProto
SHAPE_DIM = 1  # BlobShape: repeated int64 dim


def imagenet_classes() -> list[str] | None:
    """The 1000 ILSVRC-2012 class names in synset order (shared by torchvision and Caffe), if available."""
    try:
        from torchvision.models import AlexNet_Weights

        return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])
    except Exception:  # an old or missing torchvision: fall back to numbers
        return None


def _classes(n: int) -> list[str]:
    names = imagenet_classes() if n == 1000 else None
    return names or [str(i) for i in range(n)]


def _checkpoint(model: AlexNet, preprocess: Preprocess, source: str, checked: bool = False) -> dict[str, Any]:
    """The checkpoint dict of an imported ``model``; its weights checked for NaN and inf unless ``checked``."""
    state = model.state_dict()
    if not checked:
        check_weights(state, source)
    return {
        "model": state,
        "model_config": model.config.to_dict(),
        "classes": _classes(model.config.num_classes),
        "preprocess": preprocess.state(),
        "format": FORMAT,
        "imported_from": source,
    }


# -- torchvision ---------------------------------------------------------------------------------
def is_torchvision_alexnet(state_dict: dict[str, Any]) -> bool:
    """Whether ``state_dict`` names its tensors as torchvision's ``AlexNet`` does."""
    return {"features.0.weight", "classifier.6.weight"} <= set(state_dict)


def from_torchvision(state_dict: dict[str, torch.Tensor], source: str = "torchvision") -> dict[str, Any]:
    """torchvision ``alexnet`` state dict -> an ``alexnet_owt`` checkpoint with the same outputs."""
    if not is_torchvision_alexnet(state_dict):
        keys = ", ".join(map(str, list(state_dict)[:6])) + (", ..." if len(state_dict) > 6 else "")
        raise CheckpointError(f"{source}: not a torchvision alexnet state dict (no features.0 / classifier.6 weights; its keys: {keys})")
    check_weights(state_dict, source)  # before anything else, naming the file's own tensors (classifier.1.bias)
    num_classes = state_dict["classifier.6.weight"].shape[0]
    model = AlexNet(model_config("alexnet_owt", num_classes=num_classes))
    try:
        model.load_state_dict(dict(state_dict))
    except RuntimeError as e:
        raise CheckpointError(f"{source}: weights do not fit torchvision's alexnet: {state_dict_mismatch(e)}") from None
    return _checkpoint(model, torchvision_recipe(), source, checked=True)


def torchvision_recipe() -> Preprocess:
    """torchvision's ImageNet preprocessing: shorter side 256, the central 224, its mean and std."""
    return Preprocess(
        dataset="image_folder", resize=256, size=256, train_crop=224, test_crop=224, input_size=224,
        mean=tuple(IMAGENET_MEAN), std=tuple(IMAGENET_STD), preset="torchvision",
    )


# -- protobuf wire format --------------------------------------------------------------------------
def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def parse_message(buf: memoryview) -> dict[int, list[tuple[int, Any]]]:
    """Split one protobuf message into ``{field number: [(wire type, value), ...]}``.

    Values: int for varints, bytes-like memoryview for length-delimited fields, raw 4/8 bytes for
    fixed-width ones. Nested messages are parsed on demand by calling this again.
    """
    fields: dict[int, list[tuple[int, Any]]] = {}
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > end:
            raise ValueError("truncated message")
        fields.setdefault(number, []).append((wire, value))
    return fields


def _floats(entries: list[tuple[int, Any]], fmt: str) -> np.ndarray:
    """A repeated float/double field, packed (wire type 2) or not (wire types 5 / 1)."""
    parts = [np.frombuffer(v, dtype=fmt) for _, v in entries]  # views into the file's bytes
    return np.concatenate(parts) if parts else np.zeros(0, dtype=fmt)  # one copy, owned and writable


def _ints(entries: list[tuple[int, Any]]) -> list[int]:
    out: list[int] = []
    for wire, v in entries:
        if wire == 0:
            out.append(v)
        else:  # packed varints
            pos = 0
            while pos < len(v):
                x, pos = _varint(v, pos)
                out.append(x)
    return out


def _string(entries: list[tuple[int, Any]] | None) -> str:
    return bytes(entries[0][1]).decode("utf-8", "replace") if entries else ""


def parse_blob(buf: memoryview) -> np.ndarray:
    """A caffe ``BlobProto`` -> float32 array of its shape (``shape`` or legacy num/channels/height/width)."""
    f = parse_message(buf)
    data = _floats(f.get(BLOB_DATA, []), "<f4")
    if not data.size and BLOB_DOUBLE_DATA in f:
        data = _floats(f[BLOB_DOUBLE_DATA], "<f8").astype(np.float32)
    if BLOB_SHAPE in f:
        shape = _ints(parse_message(f[BLOB_SHAPE][0][1]).get(SHAPE_DIM, []))
    else:
        shape = [(_ints(f[n]) or [1])[0] if n in f else 1 for n in (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH)]
    if int(np.prod(shape)) != data.size:
        raise ValueError(f"blob holds {data.size} numbers but its shape is {shape}")
    return data.reshape(shape)


def read_caffemodel(path: str | os.PathLike) -> tuple[dict[str, list[np.ndarray]], str]:
    """Layer name -> [weights, bias] of every layer with blobs in a ``.caffemodel`` (V1 or V2 layers),
    and the net's ``norm_order`` (:func:`norm_order`), from one read of the file."""
    data = memoryview(Path(path).read_bytes())
    try:
        net = parse_message(data)
        layers: dict[str, list[np.ndarray]] = {}
        for number, name_field, blob_field in ((NET_LAYER, LAYER_NAME, LAYER_BLOBS), (NET_LAYERS_V1, V1_NAME, V1_BLOBS)):
            for _, raw in net.get(number, []):
                layer = parse_message(raw)
                blobs = [parse_blob(b) for _, b in layer.get(blob_field, [])]
                if blobs:
                    layers[_string(layer.get(name_field))] = blobs
        order = norm_order(net)
    except (ValueError, IndexError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable .caffemodel ({e})") from None
    if not layers:
        raise CheckpointError(f"{path}: no layers with weights (is it a .caffemodel?)")
    return layers, order


def norm_order(net: dict[int, list[tuple[int, Any]]]) -> str:
    """The ``norm_order`` of a parsed ``.caffemodel``'s net: "pool_norm" where it pools before its
    first LRN (CaffeNet, bvlc_reference_caffenet), else "norm_pool" (bvlc_alexnet, and a file whose
    layers say no types)."""
    kinds = [_string(parse_message(raw).get(LAYER_TYPE)) for _, raw in net.get(NET_LAYER, [])]
    kinds += [V1_KINDS.get((_ints(parse_message(raw).get(V1_TYPE, [])) or [0])[0], "") for _, raw in net.get(NET_LAYERS_V1, [])]
    first = {kind: kinds.index(kind) for kind in ("LRN", "Pooling") if kind in kinds}
    return "pool_norm" if len(first) == 2 and first["Pooling"] < first["LRN"] else "norm_pool"


def read_binaryproto_mean(path: str | os.PathLike) -> list[float]:
    """Per-channel mean (in the file's B, G, R order) of a Caffe mean ``.binaryproto``."""
    if not Path(path).is_file():
        raise CheckpointNotFound(f"{path}: file not found")
    try:
        blob = parse_blob(memoryview(Path(path).read_bytes()))
    except (ValueError, IndexError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable .binaryproto mean ({e})") from None
    blob = blob.reshape(-1, *blob.shape[-3:])[0] if blob.ndim >= 3 else blob.reshape(-1, 1, 1)
    return [float(c.mean()) for c in blob.astype(np.float64)]


# -- .npy dict (TensorFlow ports) ----------------------------------------------------------------------
def read_npy_weights(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, list[np.ndarray]]:
    """The pickled dict ``{layer: [W, b]}`` of a ``bvlc_alexnet.npy``.

    By default only numpy arrays and plain containers are unpickled (a restricted unpickler);
    ``allow_pickle=True`` uses ``np.load(allow_pickle=True)``, which runs whatever the file says:
    only for files you trust.
    """
    path = Path(path)
    try:
        if allow_pickle:
            obj = np.load(path, allow_pickle=True, encoding="latin1")
        else:
            with path.open("rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                _, _, dtype = read_header(f)
                if dtype != np.dtype(object):
                    raise CheckpointError(f"{path}: a plain array, not a dict of layer weights")
                obj = load_plain(f)
    except pickle.UnpicklingError as e:
        if allow_pickle or not str(e).startswith("refused"):  # damaged (truncated, say): --allow-pickle cannot help
            raise CheckpointError(f"{path}: not a readable .npy weights file ({e})") from None
        raise CheckpointError(f"{path}: {e}; pass --allow-pickle only if you trust this file") from None
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable .npy weights file ({type(e).__name__})") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of layer name -> [weights, bias]")
    out = {}
    for name, value in obj.items():
        name = name.decode() if isinstance(name, bytes) else str(name)
        if isinstance(value, dict):  # some ports store {"weights": W, "biases": b}
            value = [value.get("weights"), value.get("biases")]
        try:
            if isinstance(value, (str, bytes)) or len(value) != 2:
                raise TypeError
            if value[1] is None:
                raise CheckpointError(f"{path}: layer {name!r} has no bias")
            out[name] = [np.asarray(v, dtype=np.float32) for v in value]
        except (TypeError, ValueError):
            raise CheckpointError(f"{path}: layer {name!r} is not a [weights, bias] pair of numeric arrays") from None
    return out


def tf_to_caffe_layout(layers: dict[str, list[np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """TF-port layouts -> Caffe's: conv HWIO -> OIHW; fc (in, out) -> (out, in); fc6's rows from
    (h, w, c) order (the flattening of an NHWC map) to Caffe's (c, h, w)."""
    out = {}
    for name, (w, b) in layers.items():
        if w.ndim == 4:
            w = w.transpose(3, 2, 0, 1)
        elif name == "fc6":
            c = out["conv5"][0].shape[0]
            s = int(round((w.shape[0] / c) ** 0.5))
            w = w.reshape(s, s, c, -1).transpose(3, 2, 0, 1).reshape(w.shape[1], -1)
        else:
            w = w.T
        out[name] = [np.ascontiguousarray(w), b]
    return out


# -- Caffe weights -> alexnet_caffe ------------------------------------------------------------------
def from_caffe_layers(
    layers: dict[str, list[np.ndarray]], mean_bgr: tuple[float, float, float] | list[float] = CAFFE_MEAN_BGR, source: str = "caffe",
    norm_order: str = "norm_pool",
) -> dict[str, Any]:
    """Caffe-layout bvlc_alexnet weights (conv OIHW on BGR input, fc (out, in)) -> checkpoint.

    Widths, towers (from conv2's grouped kernels), fc width and the number of classes are read off
    the weights, so smaller nets of the same layout convert too; ``norm_order`` "pool_norm" is
    CaffeNet's (:func:`norm_order`).
    """
    names = list(LAYER_NAMES)
    if not set(names) <= set(layers):
        with_blobs = [n for n in layers]
        if len(with_blobs) != len(names):
            raise CheckpointError(f"{source}: expected layers {', '.join(names)}; found {', '.join(with_blobs)}")
        layers = dict(zip(names, layers.values()))  # same order, other names
    try:
        w = {n: torch.from_numpy(np.ascontiguousarray(layers[n][0], dtype=np.float32)) for n in names}
        b = {n: torch.from_numpy(np.ascontiguousarray(layers[n][1], dtype=np.float32)).reshape(-1) for n in names}
    except (IndexError, ValueError) as e:
        raise CheckpointError(f"{source}: every layer needs [weights, bias] ({e})") from None
    for n in names[5:]:  # old Caffe stores fc weights as (1, 1, out, in) blobs
        w[n] = w[n].reshape(w[n].shape[-2], w[n].shape[-1])
    if w["conv1"].dim() != 4 or w["conv1"].shape[1] != 3:
        raise CheckpointError(f"{source}: conv1 weights {tuple(w['conv1'].shape)} are not (out, 3, k, k)")
    widths = tuple(w[f"conv{i}"].shape[0] for i in range(1, 6))
    towers = widths[0] // w["conv2"].shape[1]
    cfg_kw = dict(widths=widths, towers=towers, fc_width=w["fc7"].shape[0], conv1_kernel=w["conv1"].shape[-1], norm_order=norm_order)
    try:
        cfg = model_config("alexnet_caffe", num_classes=w["fc8"].shape[0], **cfg_kw)
        cfg_side = cfg.feature_size()
        side = int(round((w["fc6"].shape[1] / widths[4]) ** 0.5))
        if side != cfg_side:  # a net built for another input size: find the one that gives fc6's input
            for size in range(cfg.input_size - 64, cfg.input_size + 400):
                trial = model_config("alexnet_caffe", num_classes=w["fc8"].shape[0], input_size=size, **cfg_kw)
                if trial.feature_size() == side:
                    cfg = trial
                    break
        model = AlexNet(cfg)
        w["conv1"] = w["conv1"].flip(1)  # BGR -> RGB: the model takes RGB like every other here
        model.load_state_dict({f"{n}.weight": w[n] for n in names} | {f"{n}.bias": b[n] for n in names})
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"{source}: weights do not fit bvlc_alexnet's layout: {state_dict_mismatch(e)}") from None
    size = cfg.input_size
    stored = round(size * 256 / 227)
    preprocess = Preprocess(
        dataset="image_folder", resize=stored, size=stored, train_crop=size, test_crop=size, input_size=size,
        # Caffe subtracts the mean from 0-255 pixels and does not divide: std 1. RGB order here.
        mean=tuple(float(m) for m in reversed(list(mean_bgr))), std=(1.0, 1.0, 1.0),
        note="Caffe's BGR weights: conv1 flipped to RGB on import",
    )
    return _checkpoint(model, preprocess, source)


def import_caffe(
    path: str | os.PathLike, mean_bgr: tuple[float, float, float] | list[float] = CAFFE_MEAN_BGR, allow_pickle: bool = False
) -> dict[str, Any]:
    """A ``.caffemodel`` or a TF-port ``.npy`` of bvlc_alexnet -> checkpoint dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFound(f"file not found: {path}")
    with path.open("rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        layers = read_npy_weights(path, allow_pickle)
        conv1 = layers.get("conv1", [np.zeros(0)])[0]
        if conv1.ndim == 4 and conv1.shape[2] == 3 and conv1.shape[0] == conv1.shape[1]:  # (k, k, 3, out): HWIO
            layers = tf_to_caffe_layout(layers)
        return from_caffe_layers(layers, mean_bgr, str(path))
    layers, order = read_caffemodel(path)
    return from_caffe_layers(layers, mean_bgr, str(path), order)


def import_torchvision(path: str | os.PathLike) -> dict[str, Any]:
    """A saved torchvision alexnet state dict (``torch.save(model.state_dict())``) -> checkpoint dict."""
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    return from_torchvision(ckpt["model"], str(path))
