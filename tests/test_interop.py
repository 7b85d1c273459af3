"""Weights in (torchvision, Caffe .caffemodel and .npy) and out (safetensors, ONNX, .pt2, TorchScript, torch.hub)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT

import alexnet
from alexnet.checkpoint import save_atomic
from alexnet.cli import build_parser, main
from alexnet.data.loaders import model_input

# -- torchvision -----------------------------------------------------------------------------------


def test_import_torchvision_same_outputs(tmp_path, capsys):
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.alexnet(num_classes=10).eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    assert main(["import", "torchvision", str(tmp_path / "tv.pth"), "--out", str(tmp_path / "owt.pt")]) == 0
    model = alexnet.load(tmp_path / "owt.pt")
    assert model.config.widths == (64, 192, 384, 256, 256) and model.preprocess.test_crop == 224
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x), rtol=1e-5, atol=1e-5)
    (tmp_path / "junk.pth").write_bytes(b"\x00" * 100)
    capsys.readouterr()
    assert main(["import", "torchvision", str(tmp_path / "junk.pth"), "--out", str(tmp_path / "x.pt")]) != 0
    assert "junk.pth" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


def test_torchvision_weights_saved_as_safetensors_load_as_its_pth_does(tmp_path):
    """alexnet.load (every --checkpoint, --init-from, torch.hub) of torchvision's state dict saved with
    safetensors said "no 'model_config'; build the model yourself", and --init-from re-initialised fc8,
    where the same weights as a .pth, and 'alexnet import torchvision' of the .safetensors, load."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    tv = torchvision.models.alexnet(num_classes=10).eval()
    save_file(tv.state_dict(), tmp_path / "tv.safetensors")
    model = alexnet.load(tmp_path / "tv.safetensors")
    assert model.config.widths == (64, 192, 384, 256, 256) and model.preprocess.preset == "torchvision"
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x), rtol=1e-5, atol=1e-5)


def test_weights_that_do_not_fit_are_named_with_their_shapes(tmp_path, capsys):
    """A load error names the tensors and shapes at fault; it said only torch's first line
    ("Error(s) in loading state_dict for AlexNet:")."""
    import torchvision
    from test_evaluate import tiny_checkpoint

    state = torchvision.models.alexnet(num_classes=10).state_dict()
    del state["features.3.bias"]
    state["classifier.1.weight"] = state["classifier.1.weight"][:100]
    torch.save(state, tmp_path / "tv.pth")
    capsys.readouterr()
    assert main(["import", "torchvision", str(tmp_path / "tv.pth"), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is [100, 9216] in the file but [4096, 9216] in the model" in err and '"conv2.bias"' in err, err
    ckpt = torch.load(tiny_checkpoint(tmp_path / "m.pt"), weights_only=False)
    ckpt["model_config"]["num_classes"] = 7
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(alexnet.errors.CheckpointError, match=r"fc8\.weight is \[3, 16\] in the file but \[7, 16\] in the model"):
        alexnet.load(tmp_path / "bad.pt")


def test_import_torchvision_takes_a_state_dict_entry_and_names_what_others_hold(tmp_path, capsys):
    """{'state_dict': sd} (as many training scripts save) imports; anything else gets a line saying what it is."""
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.alexnet(num_classes=7).eval()
    torch.save({"state_dict": tv.state_dict(), "epoch": 3}, tmp_path / "wrapped.pth")
    assert main(["import", "torchvision", str(tmp_path / "wrapped.pth"), "--out", str(tmp_path / "owt.pt")]) == 0
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(alexnet.load(tmp_path / "owt.pt")(x), tv(x), rtol=1e-5, atol=1e-5)
    torch.save({"net": {"w": torch.zeros(1)}, "epoch": 3}, tmp_path / "other.pth")
    torch.save({"state_dict": {"conv.w": torch.zeros(1)}}, tmp_path / "foreign.pth")
    (tmp_path / "notes.txt").write_text("hello world\n")
    (tmp_path / "half.pt").write_bytes((tmp_path / "wrapped.pth").read_bytes()[:5000])
    expected = {
        "other.pth": "no 'model' or 'state_dict' weights (its keys: 'net', 'epoch')",
        "foreign.pth": "not a torchvision alexnet state dict (no features.0 / classifier.6 weights; its keys: conv.w)",
        "notes.txt": "not a PyTorch checkpoint or safetensors file",
        "half.pt": "a zip archive but not a readable PyTorch checkpoint",
    }
    for name, message in expected.items():
        capsys.readouterr()
        assert main(["import", "torchvision", str(tmp_path / name), "--out", str(tmp_path / "x.pt")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"alexnet: error: {tmp_path / name}: ") and message in err and len(err.splitlines()) == 1, err
        assert "Error" not in err, err  # no bare exception names (KeyError, IndexError)
    with pytest.raises(alexnet.CheckpointError, match="not a PyTorch checkpoint or safetensors file"):
        alexnet.load(tmp_path / "notes.txt")
    assert not (tmp_path / "x.pt").exists()


# -- Caffe -------------------------------------------------------------------------------------------
# A protobuf writer (independent of the reader under test) and Caffe's forward pass in float64.

WIDTHS, FC, CLASSES = (8, 12, 8, 8, 8), 16, 5
MEAN_BGR = np.array([104.0, 117.0, 123.0])


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:  # length-delimited (wire type 2)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def field_int(number: int, value: int) -> bytes:  # varint (wire type 0)
    return varint(number << 3) + varint(value)


def blob(array: np.ndarray, legacy: bool) -> bytes:
    data = field(5, array.astype("<f4").tobytes())  # repeated float data = 5 [packed]
    if legacy:  # num = 1, channels = 2, height = 3, width = 4
        dims = (1,) * (4 - array.ndim) + array.shape
        return b"".join(field_int(i + 1, d) for i, d in enumerate(dims)) + data
    return field(7, field(1, b"".join(varint(d) for d in array.shape))) + data  # BlobShape shape = 7


def caffe_weights(seed: int = 0) -> dict[str, list[np.ndarray]]:
    """bvlc_alexnet's layout (two groups in conv2/4/5, 227 px input), thin."""
    rng = np.random.default_rng(seed)
    w1, w2, w3, w4, w5 = WIDTHS
    shapes = {
        "conv1": (w1, 3, 11, 11),
        "conv2": (w2, w1 // 2, 5, 5),
        "conv3": (w3, w2, 3, 3),
        "conv4": (w4, w3 // 2, 3, 3),
        "conv5": (w5, w4 // 2, 3, 3),
        "fc6": (FC, w5 * 6 * 6),
        "fc7": (FC, FC),
        "fc8": (CLASSES, FC),
    }
    out = {}
    for name, shape in shapes.items():
        fan_in = int(np.prod(shape[1:]))
        scale = (1.0 / fan_in) ** 0.5 * (0.02 if name == "conv1" else 1.5)  # 0-255 input: keep activations O(1-10)
        out[name] = [rng.normal(0, scale, shape).astype(np.float32), rng.normal(0, 0.1, shape[0]).astype(np.float32)]
    return out


BVLC_ALEXNET = ["data", "conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2", "conv3", "relu3", "conv4", "relu4",
                "conv5", "relu5", "pool5", "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8", "prob"]
CAFFENET = [{"norm1": "pool1", "pool1": "norm1", "norm2": "pool2", "pool2": "norm2"}.get(n, n) for n in BVLC_ALEXNET]  # pools first
# Layer types by name prefix: V2's type string, V1's LayerType enum.
CAFFE_TYPES = {"data": ("Data", 5), "conv": ("Convolution", 4), "relu": ("ReLU", 18), "norm": ("LRN", 15), "pool": ("Pooling", 17),
               "fc": ("InnerProduct", 14), "drop": ("Dropout", 6), "prob": ("Softmax", 20)}


def write_caffemodel(path: Path, weights: dict[str, list[np.ndarray]], v1: bool, order: list[str] = BVLC_ALEXNET) -> None:
    """NetParameter with V1 ``layers`` (= 2: name 4, type 5, blobs 6, legacy blob dims) or ``layer`` (= 100: name 1, type 2, blobs 7)."""
    layers = [b""]
    for name in order:
        kind, code = CAFFE_TYPES[name.rstrip("0123456789")]
        if v1:
            msg = field(4, name.encode()) + field_int(5, code)
            msg += b"".join(field(6, blob(a, legacy=True)) for a in weights.get(name, []))
            layers.append(field(2, msg))
        else:
            msg = field(1, name.encode()) + field(2, kind.encode())
            msg += b"".join(field(7, blob(a, legacy=False)) for a in weights.get(name, []))
            layers.append(field(100, msg))
    path.write_bytes(field(1, b"AlexNet") + b"".join(layers))


def write_tf_npy(path: Path, weights: dict[str, list[np.ndarray]]) -> None:
    """The TensorFlow ports' bvlc_alexnet.npy: conv HWIO, fc (in, out), fc6 rows in (h, w, c) order."""
    d = {}
    for name, (w, b) in weights.items():
        if w.ndim == 4:
            w = w.transpose(2, 3, 1, 0)
        elif name == "fc6":
            w = w.reshape(FC, WIDTHS[4], 6, 6).transpose(2, 3, 1, 0).reshape(-1, FC)
        else:
            w = w.T
        d[name] = [w, b]
    np.save(path, d, allow_pickle=True)


def caffe_lrn(x: np.ndarray, size=5, alpha=1e-4, beta=0.75, k=1.0) -> np.ndarray:
    """Caffe's ACROSS_CHANNELS LRN: x / (k + alpha/size * sum of squares over the window) ** beta."""
    sq = np.pad(x**2, ((0, 0), (size // 2, size // 2), (0, 0), (0, 0)))
    window = sum(sq[:, i : i + x.shape[1]] for i in range(size))
    return x / (k + alpha / size * window) ** beta


def caffe_forward(weights: dict[str, list[np.ndarray]], rgb_uint8: np.ndarray, caffenet: bool = False) -> np.ndarray:
    """bvlc_alexnet's deploy net (``caffenet``: pool before LRN) on a 256x256 RGB image: centre 227 crop, BGR, 0-255 minus mean."""
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64))  # noqa: E731
    off = (256 - 227) // 2
    bgr = rgb_uint8[:, ::-1, off : off + 227, off : off + 227].astype(np.float64) - MEAN_BGR.reshape(1, 3, 1, 1)
    x = t(bgr)

    def conv(x, name, stride=1, pad=0, group=1):
        return F.relu(F.conv2d(x, t(weights[name][0]), t(weights[name][1]), stride, pad, groups=group))

    pool = lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True)  # noqa: E731  Caffe rounds pooled sizes up
    lrn_pool = (lambda x: t(caffe_lrn(pool(x).numpy()))) if caffenet else (lambda x: pool(t(caffe_lrn(x.numpy()))))  # noqa: E731
    x = lrn_pool(conv(x, "conv1", stride=4))
    x = lrn_pool(conv(x, "conv2", pad=2, group=2))
    x = conv(conv(x, "conv3", pad=1), "conv4", pad=1, group=2)
    x = pool(conv(x, "conv5", pad=1, group=2)).reshape(x.shape[0], -1)
    for name in ("fc6", "fc7"):
        x = F.relu(x @ t(weights[name][0]).T + t(weights[name][1]))
    return (x @ t(weights["fc8"][0]).T + t(weights["fc8"][1])).numpy()


@pytest.mark.parametrize("kind", ["caffemodel-v2", "caffemodel-v1", "npy"])
def test_import_caffe_matches_caffe_forward(tmp_path, kind):
    weights = caffe_weights()
    src = tmp_path / ("bvlc_alexnet.npy" if kind == "npy" else "bvlc_alexnet.caffemodel")
    if kind == "npy":
        write_tf_npy(src, weights)
    else:
        write_caffemodel(src, weights, v1=kind.endswith("v1"))
    # The mean as a .binaryproto (a BlobProto of a 3x4x4 mean image, B, G, R).
    mean_img = np.broadcast_to(MEAN_BGR.reshape(1, 3, 1, 1), (1, 3, 4, 4)).astype(np.float32)
    (tmp_path / "mean.binaryproto").write_bytes(blob(mean_img, legacy=True))
    out = tmp_path / "caffe.pt"
    assert main(["import", "caffe", str(src), "--out", str(out), "--mean-file", str(tmp_path / "mean.binaryproto")]) == 0

    model = alexnet.load(out)
    assert model.config.widths == WIDTHS and model.config.lrn_k == 1.0 and model.config.input_size == 227
    rgb = np.random.default_rng(1).integers(0, 256, (2, 3, 256, 256), dtype=np.uint8)
    x = model_input(torch.from_numpy(rgb), torch.arange(2), model.preprocess, train=False)  # RGB, as a user feeds it
    with torch.no_grad():
        ours = model(x).double().numpy()
    ref = caffe_forward(weights, rgb)
    assert np.abs(ref).max() > 1.0  # a meaningful comparison, not zeros against zeros
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("v1", [True, False])
def test_import_caffenet_pools_before_lrn_as_its_file_says(tmp_path, v1):
    """CaffeNet (bvlc_reference_caffenet) pools before LRN, and its .caffemodel's layers say so by their
    types; the import built bvlc_alexnet's order (LRN, then pool) whatever the file said."""
    weights = caffe_weights()
    weights["conv1"][0] *= 50  # conv1's outputs in the hundreds, as a trained net's: LRN then divides them by ~2
    write_caffemodel(tmp_path / "caffenet.caffemodel", weights, v1=v1, order=CAFFENET)
    mean_img = np.broadcast_to(MEAN_BGR.reshape(1, 3, 1, 1), (1, 3, 4, 4)).astype(np.float32)
    (tmp_path / "mean.binaryproto").write_bytes(blob(mean_img, legacy=True))
    out = tmp_path / "caffenet.pt"
    assert main(["import", "caffe", str(tmp_path / "caffenet.caffemodel"), "--out", str(out),
                 "--mean-file", str(tmp_path / "mean.binaryproto")]) == 0
    model = alexnet.load(out)
    assert model.config.norm_order == "pool_norm"
    rgb = np.random.default_rng(1).integers(0, 256, (2, 3, 256, 256), dtype=np.uint8)
    x = model_input(torch.from_numpy(rgb), torch.arange(2), model.preprocess, train=False)
    with torch.no_grad():
        ours = model(x).double().numpy()
    ref = caffe_forward(weights, rgb, caffenet=True)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_caffe_bad_files(tmp_path, capsys):
    (tmp_path / "junk.caffemodel").write_bytes(b"\xff" * 64)
    np.save(tmp_path / "foreign.npy", {"conv1": [struct.pack]}, allow_pickle=True)  # pickles a reference to a function
    # Malformed dicts said "internal error: TypeError: 'int' object is not iterable" / "not enough
    # values to unpack", exit 1 (a user sweep).
    np.save(tmp_path / "int.npy", {"conv1": 3}, allow_pickle=True)
    np.save(tmp_path / "nobias.npy", {"conv1": [np.zeros((3, 3, 3, 8), np.float32)]}, allow_pickle=True)
    np.save(tmp_path / "text.npy", {"conv1": ["ab", "cd"]}, allow_pickle=True)
    # A port's {"weights": W} without "biases" said "conv1.bias is [1] in the file"; NaN weights
    # were imported and gave a model whose every output is NaN.
    weights = caffe_weights()
    write_tf_npy(tmp_path / "nan.npy", {**weights, "conv3": [weights["conv3"][0] * np.nan, weights["conv3"][1]]})
    np.save(tmp_path / "dictnobias.npy", {n: {"weights": w} for n, (w, _) in weights.items()}, allow_pickle=True)
    cases = (("junk.caffemodel", "caffemodel", []), ("foreign.npy", "allow-pickle", []),
             ("nan.npy", "weights hold NaN or inf: conv3.weight", []), ("dictnobias.npy", "layer 'conv1' has no bias", []),
             *((f, "'conv1' is not a [weights, bias] pair", extra) for f in ("int.npy", "nobias.npy", "text.npy")
               for extra in ([], ["--allow-pickle"])))
    for name, hint, extra in cases:
        capsys.readouterr()
        assert main(["import", "caffe", str(tmp_path / name), "--out", str(tmp_path / "x.pt"), *extra]) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and name in err and hint in err, err
    assert not (tmp_path / "x.pt").exists()


def test_truncated_npy_is_called_damaged_not_untrusted(tmp_path, capsys):
    """A truncated .npy said "pickle data was truncated; pass --allow-pickle only if you trust this
    file", with --allow-pickle given too: that option cannot read a damaged file."""
    write_tf_npy(tmp_path / "w.npy", caffe_weights())
    (tmp_path / "cut.npy").write_bytes((tmp_path / "w.npy").read_bytes()[:3000])
    for extra in ([], ["--allow-pickle"]):
        capsys.readouterr()
        assert main(["import", "caffe", str(tmp_path / "cut.npy"), "--out", str(tmp_path / "x.pt"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"alexnet: error: {tmp_path / 'cut.npy'}: not a readable .npy weights file (pickle data was truncated)", err
    assert not (tmp_path / "x.pt").exists()


def test_caffe_missing_mean_file_is_one_line_naming_the_option(tmp_path, capsys):
    write_tf_npy(tmp_path / "w.npy", caffe_weights())
    args = ["import", "caffe", str(tmp_path / "w.npy"), "--out", str(tmp_path / "x.pt"), "--mean-file"]
    assert main([*args, str(tmp_path / "nope.binaryproto")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"alexnet: error: --mean-file {tmp_path / 'nope.binaryproto'}: file not found", err
    assert not (tmp_path / "x.pt").exists()


# -- export ------------------------------------------------------------------------------------------


@pytest.fixture
def paper_ckpt(tmp_path) -> Path:
    """A thin paper-layout net (LRN with the paper's k=2 sum convention, two towers)."""
    from test_evaluate import tiny_checkpoint

    return tiny_checkpoint(tmp_path / "m.pt", widths=(16, 16, 16, 16, 16))


def test_export_onnx_matches_pytorch(tmp_path, paper_ckpt):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the 'export' extra")
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(paper_ckpt), "--format", "onnx", "--out", str(out)]) == 0
    model = alexnet.load(paper_ckpt)
    x = torch.randn(3, 3, 67, 67) * 2
    with torch.no_grad():
        ref = model(x).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert '"input_size": 67' in meta["model_config"] and "class2" in meta["classes"]


@pytest.mark.parametrize("options", [dict(adaptive_pool=6, input_size=83), dict(adaptive_pool=6, towers=1)])
def test_export_onnx_of_adaptive_pooling_the_exporter_refused(tmp_path, options):
    """Adaptive pooling whose output does not divide its input (83 px: 5x5 -> 6x6 windows that
    overlap), or behind a one-tower LRN, failed in torch's ONNX exporter with a 50-line internal
    error; it is exported as slices and means now, and onnxruntime agrees with PyTorch."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the 'export' extra")
    import onnx

    from alexnet.export import export_onnx

    torch.manual_seed(0)
    opts = dict(widths=(8, 8, 8, 8, 8), fc_width=16, input_size=67, dropout=0.0, init="kaiming") | options
    model = alexnet.create_model("alexnet_paper", num_classes=3, **opts).eval()
    export_onnx(model, tmp_path / "m.onnx")
    x = torch.randn(3, 3, opts["input_size"], opts["input_size"])
    with torch.no_grad():
        ref = model(x).numpy()
    got = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta["format"] == "alexnet-onnx-1"  # it said alexnet-safetensors-1


def test_export_safetensors_and_torchscript_load_back(tmp_path, paper_ckpt, capsys):
    model = alexnet.load(paper_ckpt)
    x = torch.randn(2, 3, 67, 67)
    with torch.no_grad():
        ref = model(x)
    st = tmp_path / "m.safetensors"
    assert main(["export", "--checkpoint", str(paper_ckpt), "--out", str(st)]) == 0  # safetensors is the default
    # Both the file and its JSON name the checkpoint it came from (by its bytes too: a later run may
    # replace it) and what wrote it.
    source = {"path": os.path.abspath(paper_ckpt), "sha256": hashlib.sha256(paper_ckpt.read_bytes()).hexdigest()}
    side = json.loads((tmp_path / "m.json").read_text())
    from safetensors import safe_open

    with safe_open(str(st), framework="pt") as f:
        meta = f.metadata()
    assert side["source"] == json.loads(meta["source"]) == source
    assert side["versions"]["torch"] == json.loads(meta["versions"])["torch"] == torch.__version__
    again = alexnet.load(st)
    assert again.classes == model.classes and again.preprocess == model.preprocess
    with torch.no_grad():
        torch.testing.assert_close(again(x), ref)
    from safetensors.torch import load_file, save_file

    bare = tmp_path / "bare.safetensors"  # no metadata: the config comes from bare.json
    save_file(load_file(st), str(bare))
    (tmp_path / "bare.json").write_text((tmp_path / "m.json").read_text())
    with torch.no_grad():
        torch.testing.assert_close(alexnet.load(bare)(x), ref)
    for other in ("[1, 2]", "null", "7", '"alexnet_paper"'):  # said "internal error: AttributeError: 'list' ..."
        (tmp_path / "bare.json").write_text(other)
        capsys.readouterr()
        assert main(["summary", "--checkpoint", str(bare)]) == 2, other
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "bare.json: holds a JSON" in err, err

    ts = tmp_path / "m.torchscript"
    assert main(["export", "--checkpoint", str(paper_ckpt), "--format", "torchscript", "--out", str(ts)]) == 0
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(ts))(x), ref, rtol=1e-5, atol=1e-5)
    # Given to a command as a checkpoint, an export says what it is and what reads it: one line, exit 2.
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(ts)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "a TorchScript file (load it with torch.jit.load)" in err
    with pytest.raises(alexnet.CheckpointError, match="an ONNX file"):
        alexnet.load(shutil.copy(ts, tmp_path / "m.onnx"))


def test_a_safetensors_export_reads_as_a_checkpoint_does(tmp_path, paper_ckpt):
    """load_checkpoint gave a .pt's preprocess as the table the file stores and a .safetensors export's
    as a Preprocess object: one key, two types by the file's kind (ckpt["preprocess"]["mean"] raised
    TypeError on an export). Both are now the table, the mean image a tensor."""
    import dataclasses

    from alexnet.checkpoint import load_checkpoint
    from alexnet.export import export_safetensors

    model = alexnet.load(paper_ckpt)
    model.preprocess = dataclasses.replace(model.preprocess, mean_image=torch.rand(3, 76, 76) * 255)
    st = export_safetensors(model, tmp_path / "m.safetensors")[0]
    got, want = load_checkpoint(st)["preprocess"], model.preprocess.state()
    assert isinstance(got, dict) and got.keys() == want.keys()
    torch.testing.assert_close(got.pop("mean_image"), want.pop("mean_image"), rtol=0, atol=0)
    assert got == want
    assert alexnet.load(st).preprocess == model.preprocess


def test_exports_and_feature_indexes_are_the_same_bytes_each_time(tmp_path, paper_ckpt):
    """safetensors writes the metadata in a hash map's order, seeded afresh for each file: an export
    or a feature index of the same model differed from one run to the next (the same tensors, the
    metadata reordered). They are the same bytes now, the metadata in sorted order, and load back."""
    from conftest import make_image_folder

    from alexnet.export import export_safetensors
    from alexnet.retrieval import build_index, load_index, save_index

    model = alexnet.load(paper_ckpt)
    index = build_index(model, make_image_folder(tmp_path / "imgs", classes=2, per_class=2))
    for name, write in (("export", lambda p: export_safetensors(model, p)), ("index", lambda p: save_index(index, p))):
        files = [tmp_path / f"{name}{i}.safetensors" for i in range(3)]
        for f in files:
            write(f)
        blobs = {f.read_bytes() for f in files}
        assert len(blobs) == 1, name
        blob = blobs.pop()
        keys = list(json.loads(blob[8 : 8 + struct.unpack("<Q", blob[:8])[0]])["__metadata__"])
        assert keys == sorted(keys) and len(keys) >= 4, keys
    assert alexnet.load(tmp_path / "export0.safetensors").classes == model.classes
    torch.testing.assert_close(load_index(tmp_path / "index0.safetensors")["features"], index["features"])


def test_torchscript_and_torchvision_exports_are_the_same_bytes_each_time(tmp_path, paper_ckpt):
    """torch.jit.save and torch.save name the archive's folder after the file they are given: the
    export's temporary (.m.ts.k2x9_a.tmp), a new name each time, so that two exports of the same
    model differed. They write to an open file now: the folder is "archive", as a checkpoint's is.
    (TorchScript in a process of its own each: a second trace in one process mangles class names.)"""
    from conftest import run_cli

    from alexnet.export import export_torchvision

    owt = alexnet.create_model("alexnet_owt", num_classes=2)
    for suffix in (".ts", ".pth"):
        files = [tmp_path / "a" / f"m{suffix}", tmp_path / "b" / f"m{suffix}"]
        for f in files:
            f.parent.mkdir(exist_ok=True)
            if suffix == ".ts":
                r = run_cli("export", "--checkpoint", str(paper_ckpt), "--out", str(f))
                assert r.returncode == 0, r.stderr
            else:
                export_torchvision(owt, f)
        assert files[0].read_bytes() == files[1].read_bytes(), suffix
        assert {name.split("/")[0] for name in zipfile.ZipFile(files[0]).namelist()} == {"archive"}, suffix


def test_export_pt2_runs_without_this_package(tmp_path, paper_ckpt, capsys):
    """A .pt2 (torch.export) program runs in a Python that cannot import alexnet (LRN is plain ops
    in its graph, not this package's operator), at any batch size, with the checkpoint's outputs."""
    from alexnet.export import FORMATS

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["export"]
    assert next(a for a in sub._actions if a.dest == "format").choices == FORMATS  # the parser (cli/options.py) writes them out
    model = alexnet.load(paper_ckpt)
    pt2 = tmp_path / "m.pt2"
    assert main(["export", "--checkpoint", str(paper_ckpt), "--out", str(pt2)]) == 0
    xs = {b: torch.randn(b, 3, 67, 67) for b in (1, 2, 5)}
    torch.save(xs, tmp_path / "x.pt")
    script = (
        "import sys, json, torch; sys.modules['alexnet'] = None\n"  # any import of alexnet now fails
        "extra = {'config.json': ''}\n"
        f"f = torch.export.load({str(pt2)!r}, extra_files=extra).module()\n"
        f"xs = torch.load({str(tmp_path / 'x.pt')!r})\n"
        "with torch.no_grad():\n"
        f"    torch.save({{b: f(x) for b, x in xs.items()}}, {str(tmp_path / 'y.pt')!r})\n"
        "print(json.dumps(json.loads(extra['config.json'])))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads(done.stdout.strip().splitlines()[-1])
    assert config["classes"] == list(model.classes)
    assert config["source"] == {"path": os.path.abspath(paper_ckpt), "sha256": hashlib.sha256(paper_ckpt.read_bytes()).hexdigest()}
    ys = torch.load(tmp_path / "y.pt")
    with torch.no_grad():
        for b, x in xs.items():
            torch.testing.assert_close(ys[b], model(x), rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(pt2)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "a torch.export program (load it with torch.export.load)" in err
    old = tmp_path / "old.pt2"  # as torch < 2.8 writes them: the files at the top of the zip
    with zipfile.ZipFile(old, "w") as z:
        for name in ("serialized_exported_program.json", "serialized_state_dict.pt", "version", "extra_files/config.json"):
            z.writestr(name, "{}")
    with pytest.raises(alexnet.CheckpointError, match=r"old.pt2: a torch.export program \(load it with torch.export.load\)"):
        alexnet.load(old)


def test_export_pt2_has_plain_lrn_and_compile_keeps_the_fused_operator(tmp_path):
    """The export switches LRN to plain ops itself (torch.compiler.is_exporting is missing before
    torch 2.7); torch.compile's graphs keep calling the fused operator (where that function said
    True under torch.compile too, asking it cost compiled models their kernels)."""
    from alexnet.export import export

    model = alexnet.create_model("alexnet_small", num_classes=3).eval()
    export(model, None, tmp_path / "m.pt2")
    program = torch.export.load(str(tmp_path / "m.pt2"))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("alexnet" in t for t in targets) and any("pow" in t for t in targets), targets
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)

    compiled: set[str] = set()

    def record(gm, inputs):  # a torch.compile backend that notes the graph's calls and runs it as is
        compiled.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    try:
        with torch.no_grad():
            torch.testing.assert_close(torch.compile(model, backend=record)(x), model(x))
    finally:  # AlexNet.forward's compiled frames would make the next test's shapes dynamic
        torch._dynamo.reset()  # (torch 2.11's inductor then fails on test_lrn's model)
    assert "alexnet.lrn.default" in compiled, compiled


def test_export_format_from_the_name_and_names_refused(tmp_path, paper_ckpt, capsys):
    """Without --format the name says the format (m.ts is TorchScript, not safetensors under a .ts
    name); a name that says another format than --format, a folder, and a safetensors file named
    .json (its JSON config would replace it) are refused in one line, exit 2, nothing written."""
    model = alexnet.load(paper_ckpt)
    x = torch.randn(2, 3, 67, 67)
    ts = tmp_path / "m.ts"
    assert main(["export", "--checkpoint", str(paper_ckpt), "--out", str(ts)]) == 0
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(ts))(x), model(x), rtol=1e-5, atol=1e-5)
    # a name of no format's (a typo of .onnx) is the default, safetensors, and export says so; .safetensors says nothing more
    from safetensors.torch import load_file

    capsys.readouterr()
    for name, said in (("m.onxx", " (safetensors: the name m.onxx says no format; --format, or a name ending .pth, .onnx, .pt2, "
                                  ".ts, .torchscript, for another)"), ("n.safetensors", "")):
        assert main(["export", "--checkpoint", str(paper_ckpt), "--out", str(tmp_path / name)]) == 0
        side = (tmp_path / name).with_suffix(".json")
        assert capsys.readouterr().out == f"wrote {tmp_path / name}, {side}{said}\n"
        held, weights = load_file(tmp_path / name), model.state_dict()
        assert held.keys() == weights.keys() and all(torch.equal(held[k], weights[k]) for k in weights)
    (tmp_path / "keep.json").write_text("{}")
    (tmp_path / "folder").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, message in [
        (["--format", "safetensors", "--out", str(tmp_path / "w.onnx")], "the name says onnx, but --format is safetensors"),
        (["--out", str(tmp_path / "keep.json")], "name the weights .safetensors"),
        (["--out", str(tmp_path / "folder")], "is a folder; give a file name, e.g. " + str(tmp_path / "folder" / "model.safetensors")),
    ]:
        capsys.readouterr()
        assert main(["export", "--checkpoint", str(paper_ckpt), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].endswith(message), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before and (tmp_path / "keep.json").read_text() == "{}"


def test_export_and_import_refuse_to_write_over_the_file_they_read(tmp_path, paper_ckpt, capsys):
    """'export --checkpoint m.pt --out m.pt' replaced the checkpoint (its training state too) with a
    safetensors export under its name, and 'import torchvision tv.pth --out tv.pth' torchvision's file
    with a checkpoint torchvision cannot load; exit 0, no word. Now one line, exit 2, the file kept."""
    import torchvision

    torch.save(torchvision.models.alexnet(num_classes=3).state_dict(), tmp_path / "tv.pth")
    (tmp_path / "link.pt").symlink_to(paper_ckpt)  # the same file by another name
    tv, link = str(tmp_path / "tv.pth"), str(tmp_path / "link.pt")
    cases = [(["export", "--checkpoint", str(paper_ckpt), "--out", str(paper_ckpt)], "checkpoint", str(paper_ckpt)),
             (["export", "--checkpoint", link, "--out", str(paper_ckpt), "--format", "onnx"], "checkpoint", link),
             (["import", "torchvision", tv, "--out", tv], "file", tv)]
    for args, what, given in cases:
        out = Path(args[args.index("--out") + 1])
        before = out.read_bytes()
        capsys.readouterr()
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err == f"alexnet: error: --out {out}: is the {what} it reads ({given}), which writing would replace; give another name", err
        assert out.read_bytes() == before


def test_evaluate_asks_for_data_where_the_weights_record_none(tmp_path, paper_ckpt, capsys):
    """Imported and exported weights carry no training data set: evaluate asks for --data (one line,
    exit 2) instead of trying its default data set, Fashion-MNIST, on them."""
    st = tmp_path / "m.safetensors"
    assert main(["export", "--checkpoint", str(paper_ckpt), "--out", str(st)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(st)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"alexnet: error: {st} records no data set (it was imported or exported, not trained here): give --data"]


def test_torch_hub_local(tmp_path, paper_ckpt):
    m = torch.hub.load(str(ROOT), "alexnet_paper", source="local", num_classes=7, trust_repo=True)
    assert isinstance(m, alexnet.AlexNet) and m.fc8.out_features == 7 and m.config.lrn_k == 2.0
    loaded = torch.hub.load(str(ROOT), "alexnet_paper", source="local", checkpoint=str(paper_ckpt), trust_repo=True)
    assert loaded.classes == ["class0", "class1", "class2"]
    # The checkpoint fixes the network: another entry's name, or options it would drop unseen, are refused.
    small = alexnet.create_model("alexnet_small", num_classes=3)
    save_atomic({"model": small.state_dict(), "model_config": small.config.to_dict()}, tmp_path / "small.pt")
    with pytest.raises(ValueError, match="small.pt holds alexnet_small, not alexnet_paper"):
        torch.hub.load(str(ROOT), "alexnet_paper", source="local", checkpoint=str(tmp_path / "small.pt"), trust_repo=True)
    assert torch.hub.load(str(ROOT), "alexnet_small", source="local", checkpoint=str(tmp_path / "small.pt")).fc8.out_features == 3
    # A network built with options (the paper's net for 128 px photos) belongs to its nearest entry:
    # under any other name it loaded without a word (helper 30's audit).
    paper112 = alexnet.create_model("alexnet_paper", num_classes=3, input_size=112, lrn=False)
    save_atomic({"model": paper112.state_dict(), "model_config": paper112.config.to_dict()}, tmp_path / "p112.pt")
    with pytest.raises(ValueError, match="p112.pt holds alexnet_paper with input_size=112, lrn=False, not alexnet_small: "
                                         r"load it with torch.hub.load\(..., 'alexnet_paper', checkpoint=...\)"):
        torch.hub.load(str(ROOT), "alexnet_small", source="local", checkpoint=str(tmp_path / "p112.pt"))
    assert torch.hub.load(str(ROOT), "alexnet_paper", source="local", checkpoint=str(tmp_path / "p112.pt")).config.input_size == 112
    with pytest.raises(ValueError, match="num_classes, lrn cannot change a network loaded from checkpoint="):
        torch.hub.load(str(ROOT), "alexnet_paper", source="local", checkpoint=str(paper_ckpt), num_classes=5, lrn=False, trust_repo=True)


def test_a_missing_weights_file_is_a_file_not_found_error(tmp_path, capsys):
    """A path with no file was a bare CheckpointError to Python callers, who catch torch.load's
    FileNotFoundError; it is both now (no errno: nothing was opened), and still one line, exit 2, on
    the command line."""
    from alexnet.cli import main
    from alexnet.interop import import_caffe, read_binaryproto_mean

    missing = tmp_path / "nope.pt"
    for call in (lambda: alexnet.load(missing), lambda: import_caffe(missing), lambda: read_binaryproto_mean(missing)):
        with pytest.raises(FileNotFoundError) as raised:
            call()
        assert isinstance(raised.value, alexnet.CheckpointError) and str(missing) in str(raised.value)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(missing)]) == 2
    assert capsys.readouterr().err == f"alexnet: error: checkpoint not found: {missing}\n"


def test_a_safetensors_export_never_replaces_another_files_json(tmp_path, paper_ckpt, capsys):
    """Any name but the known suffixes is written as safetensors with its config beside it under the
    stem: 'export --out m.bin' after 'export --out m.safetensors' (from another checkpoint) rewrote
    m.json, which then named m.bin's checkpoint beside m.safetensors; '--out RUN/config' replaced the
    run's config.json. Both are now refused in one line (exit 2) with nothing written; exporting the
    same name again, also over the config of an export made before configs named their weights, works."""

    other = tmp_path / "other.pt"
    shutil.copyfile(paper_ckpt, other)
    st, side = tmp_path / "m.safetensors", tmp_path / "m.json"
    assert main(["export", "--checkpoint", str(paper_ckpt), "--out", str(st)]) == 0
    first = side.read_text()
    assert json.loads(first)["source"]["path"] == os.path.abspath(paper_ckpt)
    for out, message in [(tmp_path / "m.bin", f"would replace {side}, the config of m.safetensors; "),
                         (tmp_path / "config", f"would replace {tmp_path / 'config.json'}, a file that export did not write")]:
        (tmp_path / "config.json").write_text('{"train": {}}')
        capsys.readouterr()
        assert main(["export", "--checkpoint", str(other), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], err
        assert not out.exists()
    assert side.read_text() == first and (tmp_path / "config.json").read_text() == '{"train": {}}'
    legacy = {k: v for k, v in json.loads(first).items() if k != "weights"}
    side.write_text(json.dumps(legacy))
    assert main(["export", "--checkpoint", str(other), "--out", str(st)]) == 0
    assert json.loads(side.read_text())["source"]["path"] == os.path.abspath(other)


def test_a_safetensors_export_stopped_between_its_two_files_writes_both(tmp_path, paper_ckpt, monkeypatch, ctrl_c_raises):
    """export to safetensors writes the weights, then their .json: a Ctrl-C (or SIGTERM) between the
    two left new weights beside an earlier export's .json, naming another checkpoint. The second write
    now ends first; then the command stops (KeyboardInterrupt, exit 130 in the CLI)."""
    import signal

    from alexnet import atomic
    from alexnet.export import Source, export_safetensors

    other = tmp_path / "other.pt"
    shutil.copyfile(paper_ckpt, other)
    st, side = tmp_path / "x.safetensors", tmp_path / "x.json"
    export_safetensors(alexnet.load(paper_ckpt), st, source=Source.of(paper_ckpt))
    write = atomic.write_safetensors

    def write_then_ctrl_c(*args, **kwargs):
        write(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(atomic, "write_safetensors", write_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        export_safetensors(alexnet.load(other), st, source=Source.of(other))
    monkeypatch.undo()
    from safetensors import safe_open

    with safe_open(str(st), framework="pt") as f:
        weights_from = json.loads(f.metadata()["source"])["path"]
    assert weights_from == str(other) and json.loads(side.read_text())["source"]["path"] == str(other)
