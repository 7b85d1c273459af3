"""Every using command on checkpoints trained on each kind of data: outcomes checked, not exit codes.

A checkpoint trained on photos embeds the training set's mean image as a tensor; the commands that
write JSON (features, export) used to crash on it. Each data kind below trains alexnet_paper for one
short epoch at 64 px (seconds), then evaluate (centre, ten crops), predict, features + retrieve,
export to safetensors / ONNX / TorchScript and load back, alexnet.load and torch.hub run on it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import alexnet
from alexnet.cli import main
from alexnet.data.loaders import model_input
from alexnet.data.presets import MEAN_IMAGE_KEY
from alexnet.predict import load_image
from conftest import IMAGEWOOF, ROOT, make_tiny_fmnist

pytestmark = pytest.mark.skipif(not IMAGEWOOF.is_dir(), reason=f"needs the real photos in {IMAGEWOOF} (../shared)")


def _photos(root: Path, per_class: int = 4, classes: int = 3) -> Path:
    """A small train/val folder of real JPEGs copied from imagewoof-mini."""
    for split in ("train", "val"):
        for folder in sorted((IMAGEWOOF / split).iterdir())[:classes]:
            (root / split / folder.name).mkdir(parents=True)
            for f in sorted(folder.iterdir())[:per_class]:
                shutil.copy(f, root / split / folder.name / f.name)
    return root


def _train(data: Path, out: Path, *extra: str) -> Path:
    args = ["train", "--data", str(data), "--epochs", "1", "--batch-size", "4", "--workers", "0", "--out", str(out), *extra]
    assert main(args) == 0
    return out / "last.pt"


@pytest.fixture(scope="module", params=["folder-paper", "packed-photos", "fashion-mnist"])
def trained(request, tmp_path_factory) -> tuple[str, Path, Path]:
    """(kind, checkpoint, folder of images to use it on)."""
    tmp = tmp_path_factory.mktemp(request.param)
    small = ("--model-option", "input_size=64")
    if request.param == "fashion-mnist":
        data = make_tiny_fmnist(tmp / "fmnist")
        return request.param, _train(data, tmp / "run", "--model", "alexnet_small"), data
    photos = _photos(tmp / "photos")
    if request.param == "folder-paper":
        return request.param, _train(photos, tmp / "run", "--preset", "paper", *small), photos
    assert main(["prepare", "--data", str(photos), "--out", str(tmp / "packed"), "--size", "73"]) == 0
    return request.param, _train(tmp / "packed", tmp / "run", *small), photos


def test_load_and_evaluate(trained, capsys):
    kind, ckpt, data = trained
    model = alexnet.load(ckpt)
    if kind != "fashion-mnist":  # photos: the training set's mean image travels with the weights
        assert isinstance(model.preprocess["mean_image"], torch.Tensor) and model.preprocess["mean_image"].shape[0] == 3
    capsys.readouterr()
    expected = 40 if kind == "fashion-mnist" else 12  # every image of the test / val split
    for extra in ([], ["--ten-crop"]):
        assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--json", *extra]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["images"] == expected and result["top5"] >= result["top1"]


def test_predict_features_retrieve(trained, tmp_path, capsys):
    kind, ckpt, data = trained
    if kind == "fashion-mnist":
        pytest.skip("predict, features and retrieve take image files")
    capsys.readouterr()
    query = sorted((data / "val").rglob("*.JPEG"))[0]
    assert main(["predict", str(query), "--checkpoint", str(ckpt), "--top", "2", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert len(top) == 2 and top[0]["probability"] >= top[1]["probability"]
    index = tmp_path / "index.safetensors"
    assert main(["features", "--checkpoint", str(ckpt), "--data", str(data / "val"), "--out", str(index)]) == 0
    capsys.readouterr()
    assert main(["retrieve", str(query), "--index", str(index), "--k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    # The query is in the index: it is its own nearest neighbour, far nearer than the next one
    # (not at distance 0: features decodes with its own batched path, retrieve one image by PIL).
    assert Path(hits[0]["path"]).name == query.name and hits[0]["distance"] < 0.1 * hits[1]["distance"]
    from alexnet.retrieval import load_index

    loaded = load_index(index)
    torch.testing.assert_close(loaded["preprocess"]["mean_image"], alexnet.load(ckpt).preprocess["mean_image"])


def _same_outputs(ckpt: Path, run, data: Path) -> None:
    """``run(x)`` of an exported model against the checkpoint's own model on real inputs."""
    model = alexnet.load(ckpt)
    files = sorted((data / "val").rglob("*.JPEG"))[:3] if (data / "val").is_dir() else None
    if files:
        images = torch.stack([load_image(f, model.preprocess) for f in files])
        x = model_input(images, torch.zeros(len(files), dtype=torch.int64), model.preprocess, False)
    else:
        x = torch.randn(3, model.config.in_chans, model.config.input_size, model.config.input_size)
    with torch.no_grad():
        torch.testing.assert_close(torch.as_tensor(run(x)), model(x), rtol=1e-4, atol=1e-4)


def test_export_and_load_back(trained, tmp_path):
    kind, ckpt, data = trained
    mean = alexnet.load(ckpt).preprocess.get("mean_image")
    st = tmp_path / "m.safetensors"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "safetensors", "--out", str(st)]) == 0
    back = alexnet.load(st)
    _same_outputs(ckpt, back, data)
    summary = json.loads(st.with_suffix(".json").read_text())["preprocess"].get("mean_image")
    if isinstance(mean, torch.Tensor):
        torch.testing.assert_close(back.preprocess["mean_image"], mean)
        assert summary["shape"] == list(mean.shape)
        assert summary["channel_mean"] == pytest.approx(mean.double().mean((1, 2)).tolist())

    ts = tmp_path / "m.pt"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(ts)]) == 0
    extra = {"config.json": "", MEAN_IMAGE_KEY + ".npy": ""}
    scripted = torch.jit.load(str(ts), _extra_files=extra)
    _same_outputs(ckpt, scripted, data)
    if isinstance(mean, torch.Tensor):
        import io

        np.testing.assert_array_equal(np.load(io.BytesIO(extra[MEAN_IMAGE_KEY + ".npy"])), mean.numpy())

    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the 'export' extra")
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(onnx_path)]) == 0
    assert not list(tmp_path.glob(".*.tmp"))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    _same_outputs(ckpt, lambda x: session.run(None, {"image": x.numpy()})[0], data)
    if isinstance(mean, torch.Tensor):
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
        np.testing.assert_allclose(np.array(json.loads(meta[MEAN_IMAGE_KEY])), mean.numpy(), rtol=1e-6)


def test_torch_hub(trained):
    kind, ckpt, data = trained
    name = "alexnet_small" if kind == "fashion-mnist" else "alexnet_paper"
    model = torch.hub.load(str(ROOT), name, source="local", checkpoint=str(ckpt))
    _same_outputs(ckpt, model.eval(), data)
