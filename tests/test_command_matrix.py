"""Every using command on checkpoints trained on each kind of data: outcomes checked, not exit codes.

A checkpoint trained on photos embeds the training set's mean image as a tensor; the commands that
write JSON (features, export) used to crash on it. Each data kind below (an image folder with the
paper preset, a packed folder, the ILSVRC layout with a flat val/, CIFAR batches of real photos at
32 px, Fashion-MNIST) trains for one short epoch (alexnet_paper at 64 px, alexnet_small for the
small images), then evaluate (centre, ten crops), predict, features + retrieve,
export to safetensors / ONNX / .pt2 / TorchScript and load back, alexnet.load and torch.hub run on it.
"""

from __future__ import annotations

import csv
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGEWOOF, ROOT, make_tiny_fmnist
from PIL import Image

import alexnet
from alexnet.cli import main
from alexnet.data.loaders import model_input
from alexnet.data.presets import MEAN_IMAGE_KEY
from alexnet.predict import load_image

pytestmark = pytest.mark.skipif(not IMAGEWOOF.is_dir(), reason=f"needs the real photos in {IMAGEWOOF} (../shared)")


def _photos(root: Path, per_class: int = 4, classes: int = 3) -> Path:
    """A small train/val folder of real JPEGs copied from imagewoof-mini."""
    for split in ("train", "val"):
        for folder in sorted((IMAGEWOOF / split).iterdir())[:classes]:
            (root / split / folder.name).mkdir(parents=True)
            for f in sorted(folder.iterdir())[:per_class]:
                shutil.copy(f, root / split / folder.name / f.name)
    return root


def _cifar(root: Path, photos: Path) -> Path:
    """cifar-10-batches-py (as Python 3 pickles it) holding the real photos of ``photos`` at 32x32."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    classes = sorted(d.name for d in (photos / "train").iterdir())

    def batch(split: str) -> dict:
        files = sorted((photos / split).rglob("*.JPEG"))
        data = [np.asarray(Image.open(f).convert("RGB").resize((32, 32), Image.BILINEAR)).transpose(2, 0, 1).reshape(-1) for f in files]
        labels = [classes.index(f.parent.name) for f in files]
        return {b"data": np.stack(data), b"labels": labels, b"filenames": [f.name.encode() for f in files]}

    train, test = batch("train"), batch("val")
    for i in range(1, 6):  # the real layout has five training batches; the photos go in the first
        part = train if i == 1 else {b"data": np.zeros((0, 3072), np.uint8), b"labels": [], b"filenames": []}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(part, protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    meta = {b"label_names": [c.encode() for c in classes], b"num_cases_per_batch": len(train[b"labels"])}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def _ilsvrc(root: Path, photos: Path) -> Path:
    """The ILSVRC-2012 layout: train/WNID/ folders, a flat val/ of ILSVRC2012_val_N.JPEG labelled by
    Kaggle's LOC_val_solution.csv (the imagewoof folders are WNIDs already)."""
    shutil.copytree(photos / "train", root / "train")
    (root / "val").mkdir()
    rows = []
    for n, f in enumerate(sorted((photos / "val").rglob("*.JPEG")), start=1):
        name = f"ILSVRC2012_val_{n:08d}"
        shutil.copy(f, root / "val" / f"{name}.JPEG")
        rows.append({"ImageId": name, "PredictionString": f"{f.parent.name} 0 0 10 10"})
    with (root / "LOC_val_solution.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["ImageId", "PredictionString"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def _val_images(data: Path) -> list[Path]:
    """The validation JPEGs of a photo folder (class sub-folders or ILSVRC's flat val/)."""
    return sorted((data / "val").rglob("*.JPEG"))


def _train(data: Path, out: Path, *extra: str) -> Path:
    # lr 0.002: the recipes' rates are for batches of 128; at batch 4 they diverge in the few steps
    # of these runs (once the warm-up no longer spans the whole run) and the health check stops them.
    args = ["train", "--data", str(data), "--epochs", "1", "--batch-size", "4", "--lr", "0.002", "--workers", "0",
            "--out", str(out), *extra]
    assert main(args) == 0
    return out / "last.pt"


KINDS = ["folder-paper", "packed-photos", "ilsvrc", "cifar", "fashion-mnist"]


@pytest.fixture(scope="module", params=KINDS)
def trained(request, tmp_path_factory) -> tuple[str, Path, Path]:
    """(kind, checkpoint, the data it was trained on: a folder whose val/ holds JPEGs, or FMNIST)."""
    tmp = tmp_path_factory.mktemp(request.param)
    small = ("--model-option", "input_size=64")
    if request.param == "fashion-mnist":
        data = make_tiny_fmnist(tmp / "fmnist")
        return request.param, _train(data, tmp / "run", "--model", "alexnet_small"), data
    photos = _photos(tmp / "photos")
    if request.param == "folder-paper":
        return request.param, _train(photos, tmp / "run", "--preset", "paper", *small), photos
    if request.param == "ilsvrc":
        data = _ilsvrc(tmp / "ilsvrc", photos)
        return request.param, _train(data, tmp / "run", *small), data
    if request.param == "cifar":
        data = _cifar(tmp / "cifar", photos)
        return request.param, _train(data, tmp / "run", "--model", "alexnet_small"), photos
    assert main(["prepare", "--data", str(photos), "--out", str(tmp / "packed"), "--size", "73"]) == 0
    return request.param, _train(tmp / "packed", tmp / "run", *small), photos


def test_load_and_evaluate(trained, capsys):
    kind, ckpt, data = trained
    model = alexnet.load(ckpt)
    if kind not in ("fashion-mnist", "cifar"):  # photos: the training set's mean image travels with the weights
        assert isinstance(model.preprocess.mean_image, torch.Tensor) and model.preprocess.mean_image.shape[0] == 3
    capsys.readouterr()
    expected = 40 if kind == "fashion-mnist" else 12  # every image of the test / val split
    source = ckpt.parent.parent / "cifar" if kind == "cifar" else data
    for extra in ([], ["--ten-crop"]):
        assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(source), "--json", *extra]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["images"] == expected and result["top5"] >= result["top1"]


def test_predict_features_retrieve(trained, tmp_path, capsys):
    kind, ckpt, data = trained
    if kind == "fashion-mnist":
        pytest.skip("predict, features and retrieve take image files")
    capsys.readouterr()
    query = _val_images(data)[0]
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
    assert loaded["preprocess"] == alexnet.load(ckpt).preprocess
    torch.testing.assert_close(loaded["preprocess"].mean_image, alexnet.load(ckpt).preprocess.mean_image)


def _same_outputs(ckpt: Path, run, data: Path) -> None:
    """``run(x)`` of an exported model against the checkpoint's own model on real inputs."""
    model = alexnet.load(ckpt)
    files = _val_images(data)[:3] if (data / "val").is_dir() else None
    if files:
        images = torch.stack([load_image(f, model.preprocess) for f in files])
        x = model_input(images, torch.zeros(len(files), dtype=torch.int64), model.preprocess, False)
    else:
        x = torch.randn(3, model.config.in_chans, model.config.input_size, model.config.input_size)
    with torch.no_grad():
        torch.testing.assert_close(torch.as_tensor(run(x)), model(x), rtol=1e-4, atol=1e-4)


def test_export_and_load_back(trained, tmp_path):
    kind, ckpt, data = trained
    mean = alexnet.load(ckpt).preprocess.mean_image
    st = tmp_path / "m.safetensors"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "safetensors", "--out", str(st)]) == 0
    back = alexnet.load(st)
    _same_outputs(ckpt, back, data)
    summary = json.loads(st.with_suffix(".json").read_text())["preprocess"].get("mean_image")
    if isinstance(mean, torch.Tensor):
        torch.testing.assert_close(back.preprocess.mean_image, mean)
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

    pt2 = tmp_path / "m.pt2"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(pt2)]) == 0
    extra = {"config.json": "", MEAN_IMAGE_KEY + ".json": ""}
    program = torch.export.load(str(pt2), extra_files=extra)
    _same_outputs(ckpt, program.module(), data)
    config = alexnet.load(ckpt).config.to_dict()
    assert json.loads(extra["config.json"])["model_config"] == json.loads(json.dumps(config))
    if isinstance(mean, torch.Tensor):
        torch.testing.assert_close(torch.tensor(json.loads(extra[MEAN_IMAGE_KEY + ".json"])), mean, rtol=0, atol=0)
    else:
        assert extra[MEAN_IMAGE_KEY + ".json"] == ""  # none written

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
    name = "alexnet_small" if kind in ("fashion-mnist", "cifar") else "alexnet_paper"
    model = torch.hub.load(str(ROOT), name, source="local", checkpoint=str(ckpt))
    _same_outputs(ckpt, model.eval(), data)
