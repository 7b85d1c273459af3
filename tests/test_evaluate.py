"""evaluate (ten crops, ensembles, per class), predict, features/retrieve and the figure commands."""

from __future__ import annotations

import collections
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import cli_env, make_image_folder
from PIL import Image

from alexnet import create_model, figures
from alexnet.checkpoint import load_checkpoint, save_atomic
from alexnet.cli import main
from alexnet.data.folder import ImageFolderDataset

PRE = {  # an image-folder recipe for 67 px inputs cut from 76 px stored images
    "dataset": "image_folder",
    "resize": 76,
    "size": 76,
    "train_crop": 67,
    "test_crop": 67,
    "input_size": 67,
    "padding": 0,
    "flip": True,
    "mean": [120.0, 115.0, 100.0],
    "std": [60.0, 55.0, 50.0],
}


def pre_float64() -> tuple[torch.Tensor, torch.Tensor]:
    """PRE's mean and std as float64 (3, 1, 1) tensors, for the independent computations."""
    mean, std = (torch.tensor(PRE[key], dtype=torch.float64).reshape(3, 1, 1) for key in ("mean", "std"))
    return mean, std


def tiny_checkpoint(path: Path, classes: int = 3, seed: int = 0, **overrides) -> Path:
    """A small paper-layout net (LRN, two towers) saved as 'alexnet train' would."""
    torch.manual_seed(seed)
    opts = dict(widths=(8, 8, 8, 8, 8), fc_width=16, input_size=67, dropout=0.0, init="kaiming") | overrides
    m = create_model("alexnet_paper", num_classes=classes, **opts)
    with torch.no_grad():  # spread the scores so that crops and models disagree visibly
        m.fc8.weight.mul_(30)
    names = [f"class{i}" for i in range(classes)]
    save_atomic({"model": m.state_dict(), "model_config": m.config.to_dict(), "classes": names, "preprocess": PRE}, path)
    return path


def cli_json(capsys, *args: str):
    capsys.readouterr()
    assert main(list(args)) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def cli_fails(capsys, *args: str) -> str:
    """Run a command that must fail: exit != 0 and exactly one line on stderr, which is returned."""
    capsys.readouterr()
    assert main(list(args)) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("mean_image", [False, True], ids=["channel-mean", "mean-image"])
def test_ten_crop_evaluation_against_independent_computation(tmp_path, capsys, mean_image):
    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=3)
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    image_mean = None
    if mean_image:  # the paper's recipe: each view minus the same crop of the mean image
        image_mean = torch.linspace(40, 200, 76 * 76 * 3, dtype=torch.float32).reshape(3, 76, 76)
        ckpt_data = torch.load(ckpt, weights_only=True)
        ckpt_data["preprocess"] = dict(PRE, mean_image=image_mean)
        save_atomic(ckpt_data, ckpt)
    got = cli_json(capsys, "evaluate", "--checkpoint", str(ckpt), "--data", str(folder), "--ten-crop", "--json",
                   "--progress", "off", "--amp", "none", "--out", str(tmp_path / "ev"))

    # Independent: explicit crop coordinates, float64 normalisation, one image at a time.
    import alexnet

    model = alexnet.load(ckpt).double()
    ds = ImageFolderDataset(folder, 76, 76)
    mean, std = pre_float64()
    c1 = c5 = 0
    nll = 0.0
    confusion = [[0] * 3 for _ in range(3)]
    for image, label, _ in (ds[i] for i in range(len(ds))):
        s, n = 67, 76
        crops = []
        for top, left in ((0, 0), (0, n - s), (n - s, 0), (n - s, n - s), ((n - s) // 2, (n - s) // 2)):
            crop = image[:, top : top + s, left : left + s].double()
            if image_mean is not None:
                crop = crop - image_mean[:, top : top + s, left : left + s].double() + mean
            crops += [crop, torch.flip(crop, dims=[2])]
        with torch.no_grad():
            p = torch.softmax(model(torch.stack([(c - mean) / std for c in crops])), dim=1).mean(0)
        ranked = sorted(range(3), key=lambda j: -float(p[j]))
        c1 += ranked[0] == label
        c5 += label in ranked[:5]
        nll -= math.log(float(p[label]))
        confusion[label][ranked[0]] += 1
    assert got["images"] == len(ds) == 9
    table = (tmp_path / "ev" / "confusion.csv").read_text().splitlines()[1:]  # rows: true classes; columns: predicted
    assert [[int(v) for v in row.split(",")[1:]] for row in table] == confusion
    assert got["top1"] == pytest.approx(c1 / 9) and got["top5"] == pytest.approx(c5 / 9)
    assert got["loss"] == pytest.approx(nll / 9, rel=1e-4)
    centre = cli_json(capsys, "evaluate", "--checkpoint", str(ckpt), "--data", str(folder), "--json", "--amp", "none")
    assert centre["loss"] != pytest.approx(got["loss"], rel=1e-6)  # ten crops do change the answer


# Code run in a process of its own (its arguments: sys.argv[1:]), then the process's peak resident
# memory beyond what importing torch took, in KiB, on stderr.
_PEAK = """
import sys
import torch
from alexnet.cli import main
def peak(): return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
before = peak()
try:
    RUN
finally:
    print("peak", peak() - before, file=sys.stderr)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status: Linux")
def test_ten_crop_evaluation_needs_about_the_memory_of_the_centre_crop(tmp_path):
    """evaluate --ten-crop normalised the ten views of a whole batch in float32 before forwarding
    them (256 photos: 1.5 GB), which set its peak at 2.7x the centre crop's; each view's batch is now
    made when it is forwarded. Measured as users run it: the command's peak resident memory in a
    process of its own, ten crops against the centre crop, on a batch of 256 images."""
    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=86)
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    peaks = {}
    for crops in ([], ["--ten-crop"]):
        peaks[bool(crops)] = peak_kib("evaluate", str(ckpt), "--data", str(folder), "--batch-size", "256", "--threads", "1",
                                      "--amp", "none", "--progress", "off", "--json", *crops)
    # The ten views of 256 images in float32 alone: 256 x 10 x 3 x 67 x 67 x 4 B = 134 MiB (the old peak was 3x the centre's).
    assert peaks[True] < 1.3 * peaks[False], peaks


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status: Linux")
def test_a_trained_runs_checkpoint_is_loaded_in_about_twice_its_weights(tmp_path):
    """Loading a model (evaluate, predict, features) read the whole checkpoint, the optimizer's
    momentum (as large as the weights) too, and checked the weights for NaN with isfinite on each
    whole tensor (a float copy and masks of fc6's weight): 5x the weights at its peak, which malloc
    then kept (evaluate: 1.5x torchvision's loop). Now the file is mapped and only the weights are
    read: the weights in the file and in the model, about twice. alexnet.load in a process of its own."""
    torch.manual_seed(0)
    m = create_model("alexnet_owt", num_classes=3, fc_width=1024)
    weights = [p.detach() for p in m.state_dict().values()]
    size_kib = sum(w.numel() * w.element_size() for w in weights) / 1024  # 49 MB
    momentum = {"state": {i: {"momentum_buffer": torch.randn_like(w)} for i, w in enumerate(weights)},
                "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": list(range(len(weights)))}]}
    recipe = dict(PRE, resize=256, size=256, train_crop=224, test_crop=224, input_size=224)
    save_atomic({"model": m.state_dict(), "model_config": m.config.to_dict(), "classes": ["a", "b", "c"], "preprocess": recipe,
                 "optimizer": momentum}, tmp_path / "best.pt")
    peak = peak_kib(str(tmp_path / "best.pt"), run="import alexnet; alexnet.load(sys.argv[1])")
    assert peak < 3 * size_kib, (peak / size_kib, size_kib)  # 5x before, 2.6x now


def test_a_checkpoint_in_torchs_legacy_format_is_read_not_mapped(tmp_path):
    """alexnet.load maps a checkpoint, which torch does only for its zip format ('mmap can only be
    used with files saved with torch.save(..., _use_new_zipfile_serialization=True)'): a file saved
    in the older format is read instead, with the weights it holds."""
    import alexnet

    ckpt = torch.load(tiny_checkpoint(tmp_path / "m.pt"), weights_only=True)
    torch.save(ckpt, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    model = alexnet.load(tmp_path / "old.pt")
    assert model.state_dict().keys() == ckpt["model"].keys()
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items())


def peak_kib(*args: str, run: str = "sys.exit(main(sys.argv[1:]))") -> int:
    """The peak resident memory of ``alexnet ARGS`` (or of the code ``run``, given ``args`` as sys.argv[1:])
    in a process of its own, beyond what importing torch took (KiB)."""
    r = subprocess.run([sys.executable, "-c", _PEAK.replace("RUN", run), *args], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    return int(r.stderr.split("peak ")[-1])


def test_ensemble_of_identical_models_equals_one_and_writes_outputs(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=3)
    a = tiny_checkpoint(tmp_path / "a.pt")
    b = tiny_checkpoint(tmp_path / "b.pt")  # same seed: the same weights
    other = tiny_checkpoint(tmp_path / "c.pt", seed=5)
    one = cli_json(capsys, "evaluate", "--checkpoint", str(a), "--data", str(folder), "--json", "--amp", "none")
    out = tmp_path / "eval"
    two = cli_json(capsys, "evaluate", "--checkpoint", str(a), "--ensemble", str(b), "--data", str(folder), "--json",
                   "--amp", "none", "--out", str(out))
    for key in ("top1", "top5", "loss", "images"):
        assert two[key] == pytest.approx(one[key], rel=1e-6), key
    mixed = cli_json(capsys, "evaluate", "--checkpoint", str(a), "--ensemble", str(other), "--data", str(folder), "--json", "--amp", "none")
    assert mixed["loss"] != pytest.approx(one["loss"], rel=1e-6)

    rows = (out / "per_class.csv").read_text().splitlines()
    assert rows[0] == "index,class,images,top1" and len(rows) == 4
    assert sum(int(r.split(",")[2]) for r in rows[1:]) == 9
    correct = sum(float(r.split(",")[3]) * int(r.split(",")[2]) for r in rows[1:])
    assert correct / 9 == pytest.approx(one["top1"])
    assert Image.open(out / "confusion.png").size == (900, 800)
    table = [line.split(",") for line in (out / "confusion.csv").read_text().splitlines()]
    assert table[0] == ["true \\ predicted", "class0", "class1", "class2"] and [r[0] for r in table[1:]] == ["class0", "class1", "class2"]
    counts = [[int(v) for v in r[1:]] for r in table[1:]]
    assert [sum(r) for r in counts] == [int(r.split(",")[2]) for r in rows[1:]]  # per true class, as per_class.csv
    assert sum(counts[i][i] for i in range(3)) / 9 == pytest.approx(one["top1"])
    written = json.loads((out / "evaluate.json").read_text())
    assert written["images"] == 9
    settings = written["settings"]  # how the figures were computed, resolved (--amp auto, threads)
    assert (settings["device"], settings["amp"], settings["batch_size"]) == ("cpu", "none", 256)
    assert settings["threads"] == torch.get_num_threads() and settings["channels_last"] is True


def _versions_of_the_modules() -> dict[str, str]:
    """The versions as the imported modules say them, not as the installed metadata does (torchvision's
    local build label, "+cu130", which its metadata lacks, was left out of the records before)."""
    import platform

    import numpy
    import PIL
    import torchvision

    import alexnet

    return {"alexnet": alexnet.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "pillow": PIL.__version__, "python": platform.python_version()}


def test_a_train_config_that_is_not_a_table_is_refused_in_one_line(tmp_path, capsys):
    """A damaged checkpoint whose train_config is a list stopped evaluate with 'internal error:
    AttributeError: 'list' object has no attribute 'get'' (exit 1), as the first of an ensemble or another member."""
    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=2)
    tiny_checkpoint(tmp_path / "good.pt")
    blob = torch.load(tiny_checkpoint(tmp_path / "bad.pt"), weights_only=True)
    save_atomic({**blob, "train_config": [1]}, tmp_path / "bad.pt")
    for paths in (["bad.pt"], ["good.pt", "--ensemble", "bad.pt"]):
        err = cli_fails(capsys, "evaluate", *(str(tmp_path / p) if p.endswith(".pt") else p for p in paths), "--data", str(folder))
        assert err == f"alexnet: error: {tmp_path / 'bad.pt'}: its train_config is a list, not a table of options: damaged", err


def test_evaluate_json_names_the_default_data_by_its_path(tmp_path, monkeypatch):
    """evaluate.json's settings.data is the data's absolute path; for a run trained without --data
    (its checkpoint records data None: Debian's Fashion-MNIST) it was the description instead,
    'Fashion-MNIST test (/usr/share/datasets/fashion-mnist)', which no reader of paths can open."""
    from conftest import make_tiny_fmnist

    from alexnet.config import resolve_config
    from alexnet.data import fashion_mnist, loaders
    from alexnet.train import fit

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_ROOT", make_tiny_fmnist(tmp_path / "debian"))
    monkeypatch.setattr(loaders, "DEBIAN_ROOT", fashion_mnist.DEBIAN_ROOT, raising=False)  # the code before kept its own
    cfg = resolve_config(None, {"out": "run", "epochs": 1, "batch_size": 8, "amp": "none", "workers": 0,
                                "model_options": {"widths": [8, 16, 16, 16, 16], "fc_width": 32}})
    fit(cfg, log=lambda s: None)
    assert main(["evaluate", "run/last.pt", "--amp", "none", "--out", "eval", "--progress", "off"]) == 0
    written = json.loads(Path("eval/evaluate.json").read_text())
    assert written["settings"]["data"] == str(tmp_path / "debian")
    assert written["data"] == f"Fashion-MNIST test ({tmp_path / 'debian'})" and written["images"] == 40


def test_outputs_record_what_computed_them(tmp_path, capsys, monkeypatch):
    """evaluate.json named its checkpoints only as typed (relative), not how JPEGs were decoded, and
    torch's version alone; a pack's index.json named its source as typed and no version of what decoded
    it; a features index and a run's config.json no version of torchvision, Pillow or numpy."""
    from safetensors import safe_open

    from alexnet.data.packed import prepare

    monkeypatch.chdir(tmp_path)
    make_image_folder(Path("imgs"), classes=3, per_class=2)
    tiny_checkpoint(Path("a.pt"))
    versions = _versions_of_the_modules()
    assert main(["evaluate", "--checkpoint", "a.pt", "--data", "imgs", "--amp", "none", "--out", "eval"]) == 0
    settings = json.loads(Path("eval/evaluate.json").read_text())["settings"]
    assert settings["checkpoints"] == [str(tmp_path / "a.pt")] and settings["decode"] == "workers"
    assert settings["data"] == str(tmp_path / "imgs")  # as typed ("imgs") it names no folder once the cwd is unknown
    assert {k: settings[k] for k in versions} == versions
    index = prepare(Path("imgs"), Path("packed"), size=32, show_progress=False)
    assert json.loads(Path("packed/index.json").read_text())["source"] == str(tmp_path / "imgs")
    assert index["versions"] == versions
    assert main(["features", "--checkpoint", "a.pt", "--data", "imgs", "--out", "idx.safetensors"]) == 0
    with safe_open("idx.safetensors", "pt") as f:
        assert json.loads(f.metadata()["versions"]) == versions
    capsys.readouterr()


def test_ensemble_members_agree_on_classes_not_on_their_order_or_storage(tmp_path, capsys):
    """The same network with its classes in another order (folders named otherwise) is the same
    model: put in the first's order, the ensemble equals one model (it averaged class 0 with class 2
    before). Classes one member lacks are refused; a packed-folder model ensembles with an image-folder one."""
    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=3)
    a = tiny_checkpoint(tmp_path / "a.pt")
    perm = torch.load(a, weights_only=True)
    order = [2, 0, 1]
    for key in ("fc8.weight", "fc8.bias"):
        perm["model"][key] = perm["model"][key][order]
    perm["classes"] = [perm["classes"][i] for i in order]
    perm["preprocess"] = dict(perm["preprocess"], dataset="packed")  # trained from 'alexnet prepare' output
    save_atomic(perm, tmp_path / "perm.pt")
    one = cli_json(capsys, "evaluate", "--checkpoint", str(a), "--data", str(folder), "--json", "--amp", "none")
    two = cli_json(capsys, "evaluate", "--checkpoint", str(a), "--ensemble", str(tmp_path / "perm.pt"), "--data", str(folder),
                   "--json", "--amp", "none")
    for key in ("top1", "top5", "loss", "images"):
        assert two[key] == pytest.approx(one[key], rel=1e-6), key
    perm["classes"][0] = "wolf"
    save_atomic(perm, tmp_path / "wolf.pt")
    err = cli_fails(capsys, "evaluate", "--checkpoint", str(a), "--ensemble", str(tmp_path / "wolf.pt"), "--data", str(folder))
    assert "predicts other classes than" in err and "'wolf'" in err
    crane = torch.load(a, weights_only=True)  # a hand-made classes.tsv can name two classes alike
    crane["classes"] = ["crane", "kite", "crane"]
    save_atomic(crane, tmp_path / "crane.pt")
    crane["classes"] = ["crane", "crane", "kite"]
    save_atomic(crane, tmp_path / "crane2.pt")
    err = cli_fails(capsys, "evaluate", "--checkpoint", str(tmp_path / "crane.pt"), "--ensemble", str(tmp_path / "crane2.pt"),
                    "--data", str(folder))
    assert "'crane' is named twice" in err
    crane["classes"] = ["crane", "kite", "kite"]  # the same names, not as often: was 'internal error: StopIteration'
    save_atomic(crane, tmp_path / "kite2.pt")
    err = cli_fails(capsys, "evaluate", "--checkpoint", str(tmp_path / "crane.pt"), "--ensemble", str(tmp_path / "kite2.pt"),
                    "--data", str(folder))
    assert "predicts other classes than" in err and "'kite' is named 2 times by it, 1 by the first" in err, err


def test_predict_top_k_true_label_and_figure(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=1)
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    fig = tmp_path / "pred.png"
    got = cli_json(capsys, "predict", str(folder), "--checkpoint", str(ckpt), "--top", "2", "--json", "--figure", str(fig),
                   "--amp", "none")  # float32: compared with float64 below
    assert [Path(r["path"]).parent.name for r in got] == ["class0", "class1", "class2"]
    for r in got:
        assert r["label"] == Path(r["path"]).parent.name
        assert len(r["top"]) == 2 and r["top"][0]["probability"] >= r["top"][1]["probability"]
    # Each image's top 2 (class, index, probability) are the model's float64 softmax on the centre crop.
    import alexnet

    model = alexnet.load(ckpt).double()
    dataset = ImageFolderDataset(folder, 76, 76)
    for k, r in enumerate(got):
        img = dataset[k][0].double()[:, 4:71, 4:71]
        x = (img - torch.tensor(PRE["mean"]).double().reshape(3, 1, 1)) / torch.tensor(PRE["std"]).double().reshape(3, 1, 1)
        with torch.no_grad():
            want = torch.softmax(model(x[None]), 1)[0].topk(2)
        assert [(t["class"], t["index"]) for t in r["top"]] == [(f"class{j}", j) for j in want.indices.tolist()], k
        assert [t["probability"] for t in r["top"]] == pytest.approx(want.values.tolist(), rel=1e-4), k
    assert Image.open(fig).size == (900, 400) and fig.stat().st_size > 1000
    # The suffix names the format (a .jpg held PNG data); one it cannot write is refused before the work.
    jpg = tmp_path / "pred.jpg"
    cli_json(capsys, "predict", str(folder), "--checkpoint", str(ckpt), "--json", "--figure", str(jpg))
    assert Image.open(jpg).format == "JPEG"
    assert cli_fails(capsys, "predict", str(folder), "--checkpoint", str(ckpt), "--figure", str(tmp_path / "p.gif")) == (
        f"alexnet: error: --figure {tmp_path / 'p.gif'}: a figure is written as .jpeg, .jpg, .pdf, .png, .svg; name it so")
    # An output folder under a file: refused before the evaluation, naming the option (it said 'File exists').
    err = cli_fails(capsys, "evaluate", "--checkpoint", str(ckpt), "--data", str(folder), "--out", str(fig / "ev"))
    assert err == f"alexnet: error: --out {fig / 'ev'}: cannot write there: {fig} is a file, not a folder"


def test_a_network_whose_outputs_overflow_is_refused_not_printed_as_nan(tmp_path, capsys):
    """Finite weights whose activations overflow float32 (inf logits, NaN softmax): evaluate --json
    printed "loss": NaN beside a top-1 of NaN scores and predict --json "probability": NaN, which
    JSON has not (jq and JSON.parse reject the document); both now refuse in one line, exit 2."""
    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=2)
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    state = torch.load(ckpt, weights_only=True)
    for name in ("fc6.weight", "fc7.weight", "fc8.weight"):
        state["model"][name] = state["model"][name] * 1e15  # finite: the checkpoint loads
    save_atomic(state, ckpt)
    for args in (["evaluate", "--checkpoint", str(ckpt), "--data", str(folder), "--json", "--ten-crop"],
                 ["predict", str(folder), "--checkpoint", str(ckpt), "--json"]):
        capsys.readouterr()
        assert main([*args, "--amp", "none", "--progress", "off"]) == 2
        out, err = capsys.readouterr()
        assert out == "" and "NaN" not in out
        assert err.strip() == ("alexnet: error: the network's outputs are not finite (NaN or inf) for 6 of 6 images in "
                               "float32: its activations overflow, so it scores nothing")


def test_fc7_features_that_overflow_are_refused_not_printed_as_nan_distances(tmp_path, capsys, monkeypatch):
    """fc7 overflowing float32 (finite, huge fc6/fc7 weights): features wrote an index of inf and
    retrieve --json printed "distance": NaN, which JSON has not; both now refuse in one line, exit 2."""
    folder = make_image_folder(tmp_path / "imgs", classes=2, per_class=2)
    huge = tiny_checkpoint(tmp_path / "huge.pt")
    state = torch.load(huge, weights_only=True)
    for name in ("fc6.weight", "fc7.weight"):
        state["model"][name] = state["model"][name] * 1e25
    save_atomic(state, huge)
    bad_index = tmp_path / "bad.safetensors"
    expected = ("alexnet: error: the network's fc7 features are not finite (NaN or inf) for {} in float32: its "
                "activations overflow, so it scores nothing")
    err = cli_fails(capsys, "features", "--checkpoint", str(huge), "--data", str(folder), "--out", str(bad_index), "--amp", "none")
    assert err == expected.format("4 of 4 images") and not bad_index.exists()
    with monkeypatch.context() as m:  # the index of inf features that features wrote before
        m.setattr("alexnet.retrieval.check_finite", lambda *a, **k: None)
        assert main(["features", "--checkpoint", str(huge), "--data", str(folder), "--out", str(bad_index), "--amp", "none"]) == 0
    capsys.readouterr()
    assert main(["retrieve", str(folder / "class0" / "img0.jpg"), "--index", str(bad_index), "--json", "--amp", "none"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and expected.format("1 of 1 image") in err


def test_features_and_retrieval_return_the_query_first(tmp_path, capsys):
    """An empty sub-folder is a class with nothing to find: features refused the folder ('class
    folder has no images'), which predict takes."""
    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=3)
    (folder / "zz-empty").mkdir()
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    index = tmp_path / "index.safetensors"
    # Another name: refused before the work (a safetensors file was written as e.npz; user sweep).
    err = cli_fails(capsys, "features", "--checkpoint", str(ckpt), "--data", str(folder), "--out", str(tmp_path / "e.npz"))
    assert err == f"alexnet: error: --out {tmp_path / 'e.npz'}: the index is a safetensors file: name it NAME.safetensors"
    assert not (tmp_path / "e.npz").exists()
    assert main(["features", "--checkpoint", str(ckpt), "--data", str(folder), "--out", str(index), "--amp", "none"]) == 0
    (folder / "zz-empty").rmdir()  # for the independent computation below
    query = folder / "class1" / "img2.jpg"
    fig = tmp_path / "ret.png"
    hits = cli_json(capsys, "retrieve", str(query), "--index", str(index), "--k", "4", "--json", "--figure", str(fig), "--amp", "none")
    assert len(hits) == 4 and hits[0]["path"] == str(query) and hits[0]["label"] == "class1"
    assert hits[0]["distance"] < 1e-3 * hits[1]["distance"]
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
    assert Image.open(fig).size == (1500, 340)  # the query and 4 neighbours, 300 x 340 px each

    # The Python API: the stored vectors are fc7 of the centre crops; distances are Euclidean.
    import alexnet
    from alexnet.retrieval import load_index, nearest

    idx = load_index(index)
    assert idx["features"].shape == (9, 16) and idx["labels"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    model = alexnet.load(ckpt)
    img = ImageFolderDataset(folder, 76, 76)[5][0].float()[:, 4:71, 4:71]
    x = (img - torch.tensor(PRE["mean"]).reshape(3, 1, 1)) / torch.tensor(PRE["std"]).reshape(3, 1, 1)
    with torch.no_grad():
        f = model.forward_fc7(x[None])[0]
    torch.testing.assert_close(idx["features"][5], f, rtol=1e-4, atol=1e-4)
    far = nearest(idx, idx["features"][0], k=9)[-1]
    expected = max(float(((idx["features"][0].double() - g.double()) ** 2).sum().sqrt()) for g in idx["features"])
    assert far["distance"] == pytest.approx(expected)

    # A neighbour's photo deleted since: the listing stands, its tile is empty and a note names it
    # (the figure failed, listing nothing: 'cannot read this image (FileNotFoundError...').
    Path(hits[2]["path"]).unlink()
    fig.unlink()
    assert main(["retrieve", str(query), "--index", str(index), "--k", "4", "--figure", str(fig), "--amp", "none"]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[1] for line in out.splitlines()] == [h["path"] for h in hits], out
    assert err.splitlines() == [f"figure: {fig}", f"note: --figure {fig}: the images of 1 of the 4 neighbours cannot be read now (first: "
                                f"{hits[2]['path']}, not found): their tiles are empty; moved since {index} was built? "
                                "'alexnet features' indexes them where they are"], err
    white = np.asarray(Image.open(fig).convert("L"))[60:320] == 255  # the row of tiles, 283 px each, 300 px apart from x = 8
    assert Image.open(fig).size == (1500, 340)
    assert white[:, 620:880].mean() < 0.1 and white[:, 920:1180].mean() > 0.9  # the second neighbour shown, the third not


class _Watched(torch.Tensor):
    """A tensor that records the most elements of any tensor computed from it."""

    most = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        out = super().__torch_function__(func, types, args, kwargs or {})
        for t in out if isinstance(out, tuple) else (out,):
            if isinstance(t, torch.Tensor):
                cls.most = max(cls.most, t.numel())
        return out


def test_nearest_compares_the_index_in_blocks_not_a_float64_copy_of_it():
    """retrieve made a float64 copy of the whole index per query: 30,000 images held 3.4 GB, and
    ImageNet's 1.28 M training images would take 42 GB beside the index's 21 GB. The distances are
    now computed a block of rows at a time; the neighbours and distances are float64's by hand."""
    from alexnet.retrieval import nearest

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(5000, 8, generator=g)
    index = {"features": feats.as_subclass(_Watched), "labels": torch.zeros(5000, dtype=torch.int64),
             "paths": [f"p{i}" for i in range(5000)], "classes": ["a"]}
    query = feats[123] + 0.01
    _Watched.most = 0
    hits = nearest(index, query, k=5)
    assert _Watched.most < feats.numel() / 2  # no float64 copy of all 5000 rows
    by_hand = [math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(row, query))) for row in feats.tolist()]
    order = sorted(range(5000), key=by_hand.__getitem__)[:5]
    assert [h["path"] for h in hits] == [f"p{i}" for i in order] and hits[0]["path"] == "p123"
    assert [h["distance"] for h in hits] == pytest.approx([by_hand[i] for i in order], rel=1e-12)
    assert nearest(index, feats[7], k=1)[0]["distance"] == 0.0  # an indexed vector is at 0 from itself


def test_features_fills_one_tensor_not_a_list_joined_at_the_end(tmp_path, monkeypatch, capsys):
    """build_index kept each batch's fc7 and joined them with torch.cat: every vector twice at the end
    (32 KB an image of 4096 floats; 41 GB for ImageNet's 1.28 M training images). It now fills one
    tensor; the rows are each image's own fc7 in the listed order, an unreadable image's left out."""
    import alexnet
    from alexnet import retrieval

    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=3)
    (folder / "class1" / "img1.jpg").write_bytes(b"not a jpeg")
    model = alexnet.load(tiny_checkpoint(tmp_path / "m.pt"))
    real = retrieval.fc7
    monkeypatch.setattr(retrieval, "fc7", lambda *a, **k: real(*a, **k).as_subclass(_Watched))
    _Watched.most = 0
    index = retrieval.build_index(model, folder, batch_size=2, amp="none")
    assert "skipping unreadable image" in capsys.readouterr().err
    assert _Watched.most <= 2 * 16  # nothing bigger than a batch's vectors made from them
    paths = [str(folder / f"class{c}" / f"img{i}.jpg") for c in range(3) for i in range(3) if (c, i) != (1, 1)]
    assert index["paths"] == paths and index["labels"].tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    ds = ImageFolderDataset(folder, 76, 76)
    at = {p: i for i, (p, _) in enumerate(ds.samples)}
    one = torch.cat([real(model, ds[at[p]][0][None]) for p in paths])  # one image at a time
    torch.testing.assert_close(index["features"], one, rtol=1e-5, atol=1e-5)
    assert index["features"].is_contiguous()


def test_an_index_whose_paths_overflow_the_safetensors_header_is_refused_before_its_features(tmp_path, capsys, monkeypatch):
    """An index's header holds every path and stamp, and safetensors writes no header over 100 MB:
    'features' of ImageNet's 1.28 M training images (about 90 bytes each) computed every fc7 vector
    (hours) and then failed in save_file ('SafetensorError: header too large'). The folder is now
    refused first, in one line; save_index refuses such an index with a DataError too."""
    import alexnet
    from alexnet import retrieval
    from alexnet.errors import DataError

    folder = make_image_folder(tmp_path / "imgs", classes=2, per_class=3)
    ckpt = tiny_checkpoint(tmp_path / "m.pt", classes=2)
    n = 450_000  # 450,000 paths of 230 characters: 104 MB of JSON
    index = {"features": torch.zeros(n, 1), "labels": torch.zeros(n, dtype=torch.int64), "classes": ["a"],
             "paths": [f"/{i:0229d}" for i in range(n)], "stamps": [[1, 1]] * n, "preprocess": alexnet.load(ckpt).preprocess}
    with pytest.raises(DataError, match=r"450,000 images would carry 1\d\d MB of paths and file stamps, over the 100 MB"):
        retrieval.save_index(index, tmp_path / "big.safetensors")
    del index
    assert not (tmp_path / "big.safetensors").exists()

    monkeypatch.setattr(retrieval, "HEADER_LIMIT", 1000, raising=False)  # six paths under tmp_path, and the margin
    monkeypatch.setattr(retrieval, "fc7", lambda *a, **k: pytest.fail("fc7 computed before the refusal"))
    out = tmp_path / "index.safetensors"
    err = cli_fails(capsys, "features", "--checkpoint", str(ckpt), "--data", str(folder), "--out", str(out))
    assert err.startswith(f"alexnet: error: {folder}: an index of its 6 images would carry 0 MB of paths") and "index a part" in err
    assert not out.exists()


def test_retrieve_says_which_neighbours_were_replaced_since_the_index(tmp_path, capsys):
    """A gallery photo replaced by another under the same name after 'alexnet features': retrieve
    listed it at the old photo's distance (and showed the new one in its figure) without a word.
    The distances stand (they are the index's), and one note names the file; a fresh index, the
    independent computation, puts the new photo elsewhere."""
    import shutil

    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=3)
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    index = tmp_path / "index.safetensors"
    assert main(["features", "--checkpoint", str(ckpt), "--data", str(folder), "--out", str(index), "--amp", "none"]) == 0
    query = folder / "class1" / "img2.jpg"
    args = ["retrieve", str(query), "--index", str(index), "--k", "9", "--json", "--amp", "none"]
    before = cli_json(capsys, *args)
    assert capsys.readouterr().err == ""
    far = before[-1]["path"]  # replaced by the query's own photo: then at distance 0 from it, not where the index has it
    shutil.copy(query, far)
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == before  # the index's figures, as before
    assert err.splitlines() == [f"note: 1 of the 9 neighbours' files have changed since {index} was built (first: {far}): their "
                                "distances are of the images indexed then; 'alexnet features' indexes them as they are now"]
    fresh = tmp_path / "fresh.safetensors"
    assert main(["features", "--checkpoint", str(ckpt), "--data", str(folder), "--out", str(fresh), "--amp", "none"]) == 0
    now = {h["path"]: h["distance"] for h in cli_json(capsys, *args[:3], str(fresh), *args[4:])}
    assert now[far] < 1e-3 * before[-1]["distance"]


def test_an_index_holds_every_image_works_from_anywhere_and_knows_its_model(tmp_path, capsys, monkeypatch):
    """Images at the top of the folder are indexed beside the class folders' (no class); the paths
    are absolute, so retrieve finds them from another folder; a model whose fc7 differs from the
    one that built the index is refused in one line, one that differs only in fc8 is not."""
    folder = make_image_folder(tmp_path / "imgs", classes=2, per_class=2)
    (folder / "loose.jpg").write_bytes((folder / "class1" / "img0.jpg").read_bytes())
    ckpt = tiny_checkpoint(tmp_path / "m.pt", classes=2)
    monkeypatch.chdir(tmp_path)
    assert main(["features", "--checkpoint", "m.pt", "--data", "imgs", "--out", "index.safetensors"]) == 0
    monkeypatch.chdir(folder / "class0")
    hits = cli_json(capsys, "retrieve", "../loose.jpg", "--index", "../../index.safetensors", "--k", "5", "--json",
                    "--figure", str(tmp_path / "nn.png"))
    assert len(hits) == 5 and all(Path(h["path"]).is_absolute() and Path(h["path"]).is_file() for h in hits)
    assert {h["path"] for h in hits[:2]} == {str(folder / "loose.jpg"), str(folder / "class1" / "img0.jpg")}
    assert hits[0]["distance"] < 1e-3 * hits[2]["distance"]
    assert {h["label"] for h in hits[:2]} == {None, "class1"}  # the loose image has no class
    figure = np.asarray(Image.open(tmp_path / "nn.png").convert("RGB"))
    assert figure.shape == (340, 6 * 300, 3)  # the query and 5 neighbours in a row
    assert (figure == 255).all(axis=2).mean() < 0.3  # photos fill their cells (default margins: 66 % white)

    other = tiny_checkpoint(tmp_path / "other.pt", classes=2, seed=1)
    err = cli_fails(capsys, "retrieve", "../loose.jpg", "--index", "../../index.safetensors", "--checkpoint", str(other))
    assert err.endswith(f"{other} is not the model that built ../../index.safetensors ({ckpt}): its fc7 space differs, "
                        f"so distances would mean nothing; index the images with {other} ('alexnet features')")
    tuned = torch.load(ckpt, weights_only=True)
    tuned["model"]["fc8.weight"] = torch.randn_like(tuned["model"]["fc8.weight"])
    save_atomic(tuned, tmp_path / "tuned.pt")
    again = cli_json(capsys, "retrieve", "../loose.jpg", "--index", "../../index.safetensors", "--json",
                     "--checkpoint", str(tmp_path / "tuned.pt"))
    assert [h["path"] for h in again] == [h["path"] for h in hits[: len(again)]]


def test_visualize_filters_learnt_draws_what_training_changed(tmp_path, capsys):
    """30 epochs of Imagenette (the photos recipe's He init) leave conv1 at cosine 0.987 with its random
    start, and figure 3 showed that noise. visualize says so, and --learnt draws the weights minus the
    start, drawn again from the run's --seed: here the start is a run of the same seed at lr 1e-12."""
    data = make_image_folder(tmp_path / "imgs", classes=3, per_class=4)
    common = ["--data", str(data), "--batch-size", "3", "--amp", "none", "--workers", "0", "--progress", "off", "--seed", "3",
              "--model-option", "input_size=64", "--model-option", "widths=[16,8,8,8,8]", "--model-option", "fc_width=16"]
    assert main(["train", *common, "--epochs", "1", "--lr", "1e-12", "--out", str(tmp_path / "still")]) == 0
    assert main(["train", *common, "--epochs", "3", "--lr", "0.05", "--out", str(tmp_path / "moved")]) == 0
    capsys.readouterr()
    assert main(["visualize", "filters", str(tmp_path / "still" / "last.pt"), "--out", str(tmp_path / "still.png")]) == 0
    assert "note: conv1 is still mostly its random start (cosine 1.000 with the weights --seed 3 drew; training changed it by 0%)" \
        in capsys.readouterr().err
    assert main(["visualize", "filters", str(tmp_path / "moved" / "last.pt"), "--learnt", "--out", str(tmp_path / "l.png")]) == 0
    first, moved = (load_checkpoint(tmp_path / run / "last.pt")["model"]["conv1.weight"] for run in ("still", "moved"))
    assert (moved - first).abs().max() > 1e-3  # it learnt something to draw
    want = figures.filters_grid(moved - first).astype(np.int16)
    assert np.abs(np.asarray(Image.open(tmp_path / "l.png")).astype(np.int16) - want).max() <= 1
    capsys.readouterr()
    assert main(["train", *common, "--epochs", "1", "--init-from", str(tmp_path / "still" / "last.pt"), "--out", str(tmp_path / "ft")]) == 0
    for checkpoint, why in [
        (tmp_path / "ft" / "last.pt", f"it started from --init-from {tmp_path / 'still' / 'last.pt'}"),
        (tiny_checkpoint(tmp_path / "imported.pt"), "it records no training run (an import or an export)"),
    ]:
        capsys.readouterr()
        assert main(["visualize", "filters", str(checkpoint), "--learnt", "--out", str(tmp_path / "no.png")]) == 2
        assert capsys.readouterr().err == f"alexnet: error: --learnt: {checkpoint}: its first weights cannot be drawn again: {why}\n"
    assert not (tmp_path / "no.png").exists()


def test_confusion_labels_are_whole_or_cut_visibly(tmp_path):
    """confusion.png cut names at 18 characters without a mark: Imagewoof's 'Rhodesian_ridgeback'
    read 'Rhodesian_ridgebac'."""
    from alexnet.figures import plot_confusion, tick_label

    assert tick_label("Rhodesian_ridgeback") == "Rhodesian_ridgeback"
    assert tick_label("Old_English_sheepdog_or_bobtail") == "Old_English_sheepdog_or\u2026"
    path = plot_confusion(torch.tensor([[3, 1, 0], [0, 2, 2], [1, 0, 4]]), ["Rhodesian_ridgeback", "dingo", "beagle"],
                          tmp_path / "confusion.png")
    assert Image.open(path).size[0] > 100


def test_visualize_filters_and_curves(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "m.pt", widths=(96, 8, 8, 8, 8))
    out = tmp_path / "filters.png"
    assert main(["visualize", "filters", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    # As the paper's figure 3: 2 towers of 48 kernels, each 3 rows of 16 tiles of 11*4 px + 2 px
    # gaps, the second tower below the first, 8 px between them.
    assert Image.open(out).size == (16 * 46 + 2, 2 * 3 * 46 + 8 + 2)
    arr = np.asarray(Image.open(out))
    assert arr.shape[2] == 3 and arr.std() > 10
    w = torch.load(ckpt, weights_only=True)["model"]["conv1.weight"].double().numpy()
    for kernel, (y, x) in ((0, (2, 2)), (17, (2 + 46, 2 + 46)), (48, (2 + 3 * 46 + 8, 2)), (95, (2 + 5 * 46 + 8, 2 + 15 * 46))):
        want = (w[kernel] - w[kernel].min()) / (w[kernel].max() - w[kernel].min()) * 255  # stretched on its own
        got = arr[y : y + 44 : 4, x : x + 44 : 4].transpose(2, 0, 1).astype(np.float64)
        assert np.abs(got - want).max() <= 0.5 + 1e-9, kernel
    # A small network's 2 towers of 4 kernels: one row of 4 each, not 4 tiles and 12 blanks.
    small = tiny_checkpoint(tmp_path / "small.pt", widths=(8, 8, 8, 8, 8))
    assert main(["visualize", "filters", str(small), "--out", str(tmp_path / "small.png")]) == 0
    assert Image.open(tmp_path / "small.png").size == (4 * 46 + 2, 2 * 46 + 8 + 2)

    run = tmp_path / "run"
    run.mkdir()
    lines = [
        {"epoch": e, "train_loss": 2.0 / e, "train_top1": 0.2 * e, "val_loss": 2.1 / e, "val_top1_error": 1 - 0.2 * e,
         "val_top5_error": 0.5 / e, "lr": 0.01 / e}
        for e in (1, 2, 3)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main(["visualize", "curves", str(run)]) == 0
    assert Image.open(run / "curves.png").size == (1500, 400)
    # Several runs share one figure, a colour each: the second run's (matplotlib's C1, orange) is
    # drawn only when it is there.
    other = tmp_path / "seed1"
    other.mkdir()
    (other / "metrics.jsonl").write_text("".join(json.dumps({**r, "train_loss": r["train_loss"] + 0.5}) + "\n" for r in lines))
    both = tmp_path / "both.png"
    assert main(["visualize", "curves", str(run), str(other), "--out", str(both)]) == 0
    assert Image.open(both).size == (1500, 400)

    def orange_pixels(path):
        rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
        return int((np.abs(rgb - [255, 127, 14]).sum(axis=2) < 30).sum())

    assert orange_pixels(run / "curves.png") == 0 < orange_pixels(both)
    # A run short of its planned epochs is marked: named "3 of 30 epochs", its last points ringed.
    (other / "config.json").write_text(json.dumps({"train": {"epochs": 3}}))
    assert figures.unfinished(other, lines) == "" == figures.unfinished(run, lines)  # done / plan unknown
    (other / "config.json").write_text(json.dumps({"train": {"epochs": 30}}))
    assert figures.unfinished(other, lines) == "3 of 30 epochs"
    short = tmp_path / "short.png"
    assert main(["visualize", "curves", str(run), str(other), "--out", str(short)]) == 0
    assert orange_pixels(short) > orange_pixels(both) + 50  # the six rings
    assert "no metrics.jsonl" in cli_fails(capsys, "visualize", "curves", str(tmp_path))


@pytest.mark.parametrize(("line", "said"), [
    ("[1, 2]", "[1, 2], not an object"), ("null", "null, not an object"),
    ('{"epoch": 1, "train_top1": "x"}', "train_top1 is 'x', not a number"),
    ('{"epoch": 1, "lr": "cosine"}', "lr is 'cosine', not a number"),
    ('{"epoch": 1, "val_loss": true}', "val_loss is True, not a number"),  # was drawn as 1
])
def test_curves_of_a_metrics_file_that_is_not_a_runs(tmp_path, capsys, line, said):
    """A metrics.jsonl line that is JSON but not an epoch's record (another tool's file, an edit) was
    an internal error, exit 1 ('list' object has no attribute 'get'); now one line naming the file."""
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "val_loss": 2.0}\n' + line + "\n")
    capsys.readouterr()
    assert main(["visualize", "curves", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert err == f"alexnet: error: {tmp_path / 'metrics.jsonl'}: line 2 is not an epoch's record: {said}\n"
    assert not (tmp_path / "c.png").exists()


def test_curves_of_a_run_killed_while_recording(tmp_path, capsys):
    """A run killed while it appended an epoch's record leaves a half line with no newline; the
    curves of the epochs before it are drawn (the half line said 'line 3 is not JSON', exit 2, until
    the run was resumed). A damaged line that is not the last is still refused."""
    done = [{"epoch": e, "train_loss": 1.0 / e, "val_top1_error": 0.5} for e in (1, 2)]
    text = "".join(json.dumps(r) + "\n" for r in done)
    (tmp_path / "metrics.jsonl").write_text(text + '{"epoch": 3, "train_lo')
    assert figures.read_metrics(tmp_path) == done
    assert main(["visualize", "curves", str(tmp_path)]) == 0
    assert Image.open(tmp_path / "curves.png").size == (1500, 400)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "train_lo\n' + text)
    capsys.readouterr()
    assert main(["visualize", "curves", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"alexnet: error: {tmp_path / 'metrics.jsonl'}: line 1 is not JSON\n"


@pytest.mark.parametrize("epochs", [1, 2, 5])
def test_curves_tick_whole_epochs(tmp_path, monkeypatch, epochs):
    """curves.png marks its epoch axes at whole epochs only (not 1.25, 1.5, ...)."""
    import matplotlib.pyplot as plt

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or Path(path))
    records = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_top1_error": 0.5, "lr": 0.01} for e in range(1, epochs + 1)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    figures.plot_curves(tmp_path)
    for ax in drawn[0].axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(t == round(t) for t in ticks), (ax.get_title(), ticks)
    plt.close(drawn[0])


def test_curves_draw_each_panel_from_its_metrics(tmp_path, monkeypatch):
    """curves.png's lines are metrics.jsonl's numbers: losses on the first panel, top-1 and top-5
    errors on the second (the training one as 1 - train_top1), the rate on the third."""
    import matplotlib.pyplot as plt

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or Path(path))
    records = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.5 / e, "train_top1": 0.1 * e, "val_top1_error": 0.9 - 0.15 * e,
                "val_top5_error": 0.6 - 0.1 * e, "lr": 0.01 / e} for e in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    figures.plot_curves(tmp_path)
    panels = [{line.get_label(): line for line in ax.get_lines()} for ax in drawn[0].axes[:3]]
    want = [{"train": [r["train_loss"] for r in records], "validation": [r["val_loss"] for r in records]},
            {"train top-1": [1 - r["train_top1"] for r in records], "val top-1": [r["val_top1_error"] for r in records],
             "val top-5": [r["val_top5_error"] for r in records]},
            {None: [r["lr"] for r in records]}]
    for panel, lines in zip(panels, want):
        if None in lines:  # the rate's panel: one unlabelled line
            assert len(panel) == 1
            panel = {None: next(iter(panel.values()))}
        assert set(panel) == set(lines)
        for label, ys in lines.items():
            assert list(panel[label].get_xdata()) == [1, 2, 3], label
            assert list(panel[label].get_ydata()) == pytest.approx(ys, rel=1e-12), label
    plt.close(drawn[0])


def test_bad_input_one_line(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=1)
    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "text.pt").write_text("hello, not a checkpoint\n")
    import datetime

    torch.save({"model": {}, "when": datetime.datetime(2020, 1, 1)}, tmp_path / "foreign.pt")
    for name in ("random.pt", "text.pt", "foreign.pt"):
        for cmd in (["evaluate", "--data", str(folder)], ["predict", str(folder)], ["export", "--out", str(tmp_path / "x.onnx")]):
            err = cli_fails(capsys, *cmd, "--checkpoint", str(tmp_path / name))
            assert name in err
    ckpt4 = tiny_checkpoint(tmp_path / "four.pt", classes=4)
    (folder / "class2").rename(folder / "otter")  # class0, class1 are among its classes, otter is not
    err = cli_fails(capsys, "evaluate", "--checkpoint", str(ckpt4), "--data", str(folder))
    assert err == f"alexnet: error: {folder} has 3 classes but {ckpt4} predicts 4; 'otter' is not among its classes"
    (folder / "otter").rename(folder / "class2")
    other = tiny_checkpoint(tmp_path / "m.pt")
    err = cli_fails(capsys, "evaluate", "--checkpoint", str(other), "--ensemble", str(ckpt4), "--data", str(folder))
    assert "four.pt" in err
    bad = folder / "class0" / "broken.jpg"
    bad.write_text("not an image")
    err = cli_fails(capsys, "predict", str(bad), "--checkpoint", str(tmp_path / "m.pt"))
    assert "broken.jpg" in err
    err = cli_fails(capsys, "retrieve", str(bad), "--index", str(tmp_path / "text.pt"))
    assert "text.pt" in err


def test_one_channel_checkpoint_on_photos_against_independent_computation(tmp_path, capsys):
    """A Fashion-MNIST-style checkpoint (one channel, 28 px, no resize in its recipe) evaluated on,
    and indexing, a folder of colour photos: each photo becomes its luma at the checkpoint's stored
    size, as `predict` does; before, evaluate and features crashed ("shape '[3]' is invalid")."""
    import alexnet

    rng = np.random.default_rng(4)
    folder = tmp_path / "photos"
    for c in range(3):
        (folder / f"class{c}").mkdir(parents=True)
        for i in range(3):  # lossless 28 px RGB: the reference needs no decoder or resize of ours
            Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(folder / f"class{c}" / f"{i}.png")
    torch.manual_seed(2)
    m = create_model("alexnet_small", num_classes=3, in_chans=1, input_size=28, widths=[8, 8, 8, 8, 8], fc_width=16, dropout=0.0)
    with torch.no_grad():
        m.fc8.weight.mul_(30)
    pre = {"dataset": "fashion_mnist", "resize": None, "size": 28, "train_crop": 28, "test_crop": 28, "input_size": 28,
           "padding": 0, "flip": True, "mean": [73.0], "std": [90.0]}
    ckpt = tmp_path / "fm.pt"
    save_atomic({"model": m.state_dict(), "model_config": m.config.to_dict(), "classes": ["class0", "class1", "class2"],
                 "preprocess": pre}, ckpt)
    got = cli_json(capsys, "evaluate", "--checkpoint", str(ckpt), "--data", str(folder), "--json", "--amp", "none")
    index = tmp_path / "index.safetensors"
    assert main(["features", "--checkpoint", str(ckpt), "--data", str(folder), "--out", str(index), "--amp", "none"]) == 0

    # Independent: PIL's RGB pixels, the ITU-R 601 luma in float64, the model in float64.
    model = alexnet.load(ckpt).double().eval()
    files = sorted(folder.glob("*/*.png"))
    rgb = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])).double()
    luma = (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).round().unsqueeze(1)
    labels = torch.tensor([int(f.parent.name[-1]) for f in files])
    with torch.no_grad():
        x = (luma - 73.0) / 90.0
        logp = torch.log_softmax(model(x), dim=1)
        fc7 = model.forward_fc7(x)
    assert got["images"] == 9
    assert got["top1"] == pytest.approx(float((logp.argmax(1) == labels).double().mean()))
    assert got["loss"] == pytest.approx(float(-logp.gather(1, labels[:, None]).mean()), rel=1e-4)
    saved = alexnet.retrieval.load_index(index)
    order = [saved["paths"].index(str(f)) for f in files]
    torch.testing.assert_close(saved["features"][order].double(), fc7, rtol=1e-4, atol=1e-4)


def test_evaluate_warns_when_the_data_has_other_classes(tmp_path, capsys):
    """Same count, other classes: the score is of unrelated lists, and evaluate says so (a warning);
    the checkpoint's own classes get none."""
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    same = make_image_folder(tmp_path / "same", classes=3, per_class=2)
    other = make_image_folder(tmp_path / "other", classes=3, per_class=2)
    for i, name in enumerate(["cat", "dog", "fox"]):
        (other / f"class{i}").rename(other / name)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(same), "--amp", "none"]) == 0
    assert "warning" not in capsys.readouterr().err
    said = f"the data's classes are not those of {ckpt} (class 0 is 'cat' there, 'class0' in the checkpoint): " \
           "the accuracy counts matching class numbers"
    with pytest.warns(UserWarning) as caught:  # the command prints it as one 'warning: ...' line
        assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(other), "--amp", "none"]) == 0
    assert [str(w.message) for w in caught] == [said]


def test_tensor_data_that_does_not_fit_the_checkpoint_is_one_line(tmp_path, capsys, tiny_fmnist):
    """A photo checkpoint (3 channels, a 76 px recipe) cannot take Fashion-MNIST's 28 px grey images."""
    ckpt = tiny_checkpoint(tmp_path / "m.pt", classes=10)
    err = cli_fails(capsys, "evaluate", "--checkpoint", str(ckpt), "--data", str(tiny_fmnist))
    assert "1-channel 28x28" in err and "3-channel images stored at 76x76, cropped to 67x67 (its recipe is for image_folder data)" in err


def test_predict_features_and_retrieve_honour_amp(tmp_path, capsys):
    """--amp bf16 runs the network in bfloat16: probabilities and fc7 vectors near the float64 ones
    but visibly off them, where --amp none (float32) matches them; --amp fp16 on a CPU is refused in
    one line by predict, features and retrieve, as by evaluate."""
    import alexnet

    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=2)
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    ds = ImageFolderDataset(folder, 76, 76)  # independent: the centre crops, the model in float64
    img = torch.stack([ds[i][0] for i in range(len(ds))]).double()[:, :, 4:71, 4:71]
    x = (img - torch.tensor(PRE["mean"]).double().reshape(3, 1, 1)) / torch.tensor(PRE["std"]).double().reshape(3, 1, 1)
    model = alexnet.load(ckpt).double().eval()
    with torch.no_grad():
        ref_probs, ref_fc7 = torch.softmax(model(x), 1), model.forward_fc7(x)
    paths = [p for p, _ in ds.samples]

    def probs(amp: str) -> torch.Tensor:
        got = cli_json(capsys, "predict", str(folder), "--checkpoint", str(ckpt), "--top", "3", "--json", "--device", "cpu", "--amp", amp)
        assert [r["path"] for r in got] == paths
        return torch.tensor([[t["probability"] for t in sorted(r["top"], key=lambda t: t["index"])] for r in got], dtype=torch.float64)

    def features(amp: str) -> torch.Tensor:
        index = tmp_path / f"{amp}.safetensors"
        args = ["features", "--checkpoint", str(ckpt), "--data", str(folder), "--out", str(index), "--device", "cpu", "--amp", amp]
        assert main(args) == 0
        saved = alexnet.retrieval.load_index(index)
        return saved["features"][[saved["paths"].index(p) for p in paths]].double()

    for got, ref in ((probs("none"), ref_probs), (features("none"), ref_fc7)):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    for got, ref in ((probs("bf16"), ref_probs), (features("bf16"), ref_fc7)):
        err = float((got - ref).abs().max() / ref.abs().max())
        assert 1e-4 < err < 0.03, err  # bf16 keeps 8 significant bits: errors of about 2^-8, not float32's 2^-24

    index = str(tmp_path / "none.safetensors")
    for args in (["predict", paths[0], "--checkpoint", str(ckpt)], ["retrieve", paths[0], "--index", index],
                 ["features", "--checkpoint", str(ckpt), "--data", str(folder), "--out", str(tmp_path / "x.safetensors")]):
        err = cli_fails(capsys, *args, "--device", "cpu", "--amp", "fp16")
        assert err == "alexnet: error: --amp fp16 is for GPUs; use --amp bf16 on a CPU", args
    assert not (tmp_path / "x.safetensors").exists()
    # A query in another precision than the index's: the indexed image is not at 0 from itself, and it says so.
    capsys.readouterr()
    with pytest.warns(UserWarning, match="the index's features were computed in bfloat16 and the query's are in float32: "):
        assert main(["retrieve", paths[0], "--index", str(tmp_path / "bf16.safetensors"), "--device", "cpu", "--amp", "none"]) == 0
    assert float(capsys.readouterr().out.split()[0]) > 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["retrieve", paths[0], "--index", str(tmp_path / "bf16.safetensors"), "--device", "cpu", "--amp", "bf16"]) == 0
    assert float(capsys.readouterr().out.split()[0]) == 0


@pytest.mark.parametrize("side", [120, 400])  # torchvision's JPEG decoder; PIL's reduced-size (draft) decoding
def test_predict_turns_photos_upright_as_their_exif_says(tmp_path, side):
    """A photo stored sideways with an EXIF orientation tag is decoded by predict's (and retrieve's)
    loader as PIL's exif_transpose shows it, upright, as the training loader decodes it (test_orientation)."""
    from PIL import ImageOps

    from alexnet.data.folder import decode_image
    from alexnet.data.presets import Preprocess
    from alexnet.predict import load_image

    pre = Preprocess.from_dict(PRE)
    yy, xx = np.mgrid[0:side * 3 // 4, 0:side]  # smooth, no symmetry: every turn gives another picture
    stored = np.stack([xx * 255 // side, yy * 340 // side, (xx + 2 * yy) * 90 // side], axis=-1).astype(np.uint8)
    for tag in range(1, 9):
        path = tmp_path / f"o{tag}.jpg"
        exif = Image.Exif()
        exif[0x0112] = tag
        Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())
        with Image.open(path) as im:  # independent: PIL's view of the file, upright and as stored, lossless;
            # the pixels alone (Pillow 9.3 writes a converted image's EXIF, orientation and all, into a PNG)
            Image.fromarray(np.asarray(ImageOps.exif_transpose(im).convert("RGB"))).save(tmp_path / f"o{tag}_upright.png")
            Image.fromarray(np.asarray(im.convert("RGB"))).save(tmp_path / f"o{tag}_stored.png")
        got = load_image(path, pre).float()
        assert (got - load_image(tmp_path / f"o{tag}_upright.png", pre).float()).abs().mean() < 1.5, tag
        assert torch.equal(decode_image(str(path), 76, 76), load_image(path, pre))  # the loaders' decoding
        if tag > 1:  # the check can fail: the turn changes the picture
            assert (got - load_image(tmp_path / f"o{tag}_stored.png", pre).float()).abs().mean() > 20, tag


def _big_endian_exif(orientation: int) -> bytes:
    """An EXIF block ("MM", as Nikon and Apple write) whose orientation tag is a LONG, not the spec's SHORT."""
    import struct

    ifd = struct.pack(">HHHII", 1, 0x0112, 4, 1, orientation) + struct.pack(">I", 0)
    return b"Exif\0\0MM" + struct.pack(">HI", 42, 8) + ifd


@pytest.mark.parametrize("side", [120, 400])  # torchvision's JPEG decoder; PIL's reduced-size (draft) decoding
@pytest.mark.parametrize("tagged", ["big-endian LONG", "XMP"])
def test_predict_turns_photos_upright_as_pil_reads_their_orientation(tmp_path, side, tagged):
    """An orientation tag that PIL reads and torchvision's decoder did not (a big-endian EXIF tag stored
    as LONG; XMP's tiff:Orientation, with no EXIF) turns the photo at every size: it turned only photos
    large enough for PIL's reduced-size decoding, and a 120 px one stayed sideways (mean difference 87)."""
    from PIL import ImageOps

    from alexnet.data.presets import Preprocess
    from alexnet.predict import load_image

    yy, xx = np.mgrid[0:side * 3 // 4, 0:side]  # smooth, no symmetry: every turn gives another picture
    stored = np.stack([xx * 255 // side, yy * 340 // side, (xx + 2 * yy) * 90 // side], axis=-1).astype(np.uint8)
    for tag in (3, 6, 8):
        path = tmp_path / f"o{tag}.jpg"
        if tagged == "XMP":
            xmp = (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                   f'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="{tag}"/></rdf:RDF></x:xmpmeta>')
            Image.fromarray(stored).save(path, quality=95, xmp=xmp.encode())
        else:
            Image.fromarray(stored).save(path, quality=95, exif=_big_endian_exif(tag))
        with Image.open(path) as im:  # independent: PIL's view of the file, upright, lossless
            ImageOps.exif_transpose(im).convert("RGB").save(tmp_path / f"o{tag}_upright.png")
        pre = Preprocess.from_dict(PRE)
        diff = (load_image(path, pre).float() - load_image(tmp_path / f"o{tag}_upright.png", pre).float()).abs().mean()
        assert diff < 1.5, (tag, float(diff))


def test_a_sideways_photo_indexed_is_found_by_itself(tmp_path, capsys):
    """features turns photos upright as retrieve's query does: a photo with an EXIF orientation tag
    is at distance 0 from its own index entry, as any other."""
    folder = make_image_folder(tmp_path / "imgs", classes=2, per_class=3, size=(96, 72))
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = folder / "class0" / "sideways.jpg"
    Image.open(folder / "class0" / "img1.jpg").save(sideways, quality=95, exif=exif.tobytes())
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    index = tmp_path / "index.safetensors"
    assert main(["features", "--checkpoint", str(ckpt), "--data", str(folder), "--out", str(index), "--amp", "none"]) == 0
    hits = cli_json(capsys, "retrieve", str(sideways), "--index", str(index), "--json", "--amp", "none")
    assert hits[0]["path"] == str(sideways) and hits[0]["distance"] < 1e-3 * hits[1]["distance"], hits[:2]


def test_an_older_checkpoint_says_it_cannot_tell_its_training_folder_moved(tmp_path, capsys):
    """A checkpoint from before checkpoints listed the images training held out (6e9ad8d), or trained
    on a pack prepared before packs listed their files, evaluated on its training folder moved or
    copied (no val/) scored all of it, the nine tenths it trained on among them, without a word (an
    old release's run on 32 photos: 32 scored, where its own folder scores the 3 held out). It
    cannot tell that folder from another, and now says so; a checkpoint that can tell is not warned about."""
    folder = make_image_folder(tmp_path / "moved", classes=3, per_class=4)
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    base = torch.load(ckpt, weights_only=True)
    gone = tmp_path / "photos"  # where it trained: moved since

    def warned(**entries) -> list[str]:
        save_atomic({**base, "train_config": {"data": str(gone), "seed": 0}, **entries}, ckpt)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            got = cli_json(capsys, "evaluate", "--checkpoint", str(ckpt), "--data", str(folder), "--json", "--amp", "none")
        assert got["images"] == 12
        return [str(w.message) for w in seen if "cannot tell" in str(w.message)]

    assert warned() == [f"{ckpt} cannot tell whether {folder} is the data it trained on, moved or copied (it was written "
                        "before checkpoints listed the images training held out): if it is, every image is scored, the ones "
                        f"it trained on among them (the folder it recorded, {gone}, is not there)"]
    assert "(its pack was prepared before packs listed their files)" in warned(held_out_of={"images": 12})[0]
    assert warned(held_out_of={"images": 12, "digest": "0123456789abcdef"}) == []  # it can tell: not its folder
    assert warned(folders=["class0", "class1", "class2"]) == []  # of a release that lists them: it held none out


def _as_older_index(src: Path, dst: Path, drop: tuple[str, ...]) -> Path:
    """``src``, a features index, written again without the metadata keys ``drop`` (an older release's file)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(dst), metadata={k: v for k, v in meta.items() if k not in drop})
    return dst


def test_an_older_releases_index_says_what_it_cannot_tell(tmp_path, capsys):
    """An index of 'alexnet features' from before it kept its model's digest (and took --amp) holds
    float32 features: a bfloat16 query (--amp auto on a CPU with bf16) put the indexed image at 0.16
    from itself without a word; it now names both precisions, and says the model is not checked.
    One from between the digest and the recorded precision says its precision is unknown."""
    folder = make_image_folder(tmp_path / "imgs", classes=2, per_class=2)
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    new = tmp_path / "new.safetensors"
    assert main(["features", "--checkpoint", str(ckpt), "--data", str(folder), "--out", str(new), "--amp", "none"]) == 0
    oldest = _as_older_index(new, tmp_path / "oldest.pt", ("fingerprint", "precision", "stamps", "versions"))
    query = str(sorted((folder / "class0").iterdir())[0])
    capsys.readouterr()
    with pytest.warns(UserWarning) as seen:
        assert main(["retrieve", query, "--index", str(oldest), "--device", "cpu", "--amp", "bf16"]) == 0
    said = [str(w.message) for w in seen]
    assert any(m.startswith("the index's features were computed in float32 and the query's are in bfloat16") for m in said), said
    assert any(m.startswith(f"{oldest} was written by an earlier alexnet, which kept no digest") for m in said), said
    assert float(capsys.readouterr().out.split()[0]) > 1e-4
    with pytest.warns(UserWarning) as seen:  # in the index's precision: at 0 from itself, only the digest is said
        assert main(["retrieve", query, "--index", str(oldest), "--device", "cpu", "--amp", "none"]) == 0
    assert [str(w.message).split(",")[0] for w in seen] == [f"{oldest} was written by an earlier alexnet"]
    assert float(capsys.readouterr().out.split()[0]) < 1e-5
    between = _as_older_index(new, tmp_path / "between.safetensors", ("precision", "stamps", "versions"))
    with pytest.warns(UserWarning, match="does not record the precision its features were computed in: if it is not the query.s, bfloat16"):
        assert main(["retrieve", query, "--index", str(between), "--device", "cpu", "--amp", "bf16"]) == 0


def test_prediction_figure_keeps_every_label_inside_and_has_no_blank_bands(tmp_path, monkeypatch):
    """Class names are written whole where they fit in the cell and cut with an ellipsis where not,
    every text inside the figure (the left column's too); a tall figure of many images has no blank
    band at its top or bottom; the bars are the top classes, at most 5."""
    names = ["Rhodesian ridgeback", "Old English sheepdog, bobtail", "golden retriever", "beagle", "dingo", "Samoyed",
             "American Staffordshire terrier, Staffordshire terrier, American pit bull terrier, pit bull terrier"]

    def result(i: int, k: int, label: str | None = None) -> dict:
        top = [{"class": names[(i + j) % 7], "index": j, "probability": 0.5 / (j + 1)} for j in range(k)]
        return {"path": f"/photos/IMG_{i:04d}.jpg", "label": label, "top": top}

    seen = {}
    save = figures._save

    def keep(fig, path):  # what was drawn, measured by matplotlib's renderer, before the figure is saved
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        texts = [t for ax in fig.axes for t in (ax.title, ax.xaxis.label, *ax.get_xticklabels(), *ax.get_yticklabels(), *ax.texts)]
        seen["texts"] = [(t.get_text(), t.get_window_extent(r)) for t in texts if t.get_visible() and t.get_text()]
        seen["bars"] = [len(ax.patches) for ax in fig.axes if ax.patches]
        return save(fig, path)

    monkeypatch.setattr(figures, "_save", keep)
    images = [torch.full((3, 76, 76), 90, dtype=torch.uint8)] * 3
    figures.plot_predictions(images, [result(0, 7), result(1, 3, "Samoyed"), result(6, 5, names[6])], tmp_path / "three.png")
    assert Image.open(tmp_path / "three.png").size == (900, 400) and seen["bars"] == [5, 3, 5]
    for text, box in seen["texts"]:
        assert box.x0 >= 0 and box.x1 <= 900 and box.y0 >= 0 and box.y1 <= 400, (text, box)
    shown = {text for text, _ in seen["texts"]}
    assert {"Rhodesian ridgeback", "Old English sheepdog, bobtail", "true: Samoyed", "IMG_0000.jpg"} <= shown
    cut = [t for t in shown if t.startswith("American Staffordshire terrier") or t.startswith("true: American")]
    assert len(cut) == 2 and all(t.endswith("\u2026") and len(t) > 30 for t in cut), cut

    figures.plot_predictions(images * 11, [result(i, 5) for i in range(33)], tmp_path / "tall.png")
    ink = np.asarray(Image.open(tmp_path / "tall.png").convert("L")) < 250
    assert ink.shape == (9 * 400, 4 * 300)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    assert rows[0] < 30 and rows[-1] > ink.shape[0] - 60 and cols[0] < 30 and cols[-1] > ink.shape[1] - 30, (rows[[0, -1]], cols[[0, -1]])


def test_evaluate_matches_the_datas_classes_to_the_models_by_name(tmp_path, capsys):
    """Breeds in folders that sort otherwise than the checkpoint's classes were scored by class number
    (a wrong figure with a warning), and a subset of them (Imagewoof's 10 synsets against ImageNet's
    1000) was refused ('has 10 classes but ... predicts 1000'), as was any Python evaluate of it
    scored wrongly. Now labels are matched by name; the reference is predict's top class by name."""
    import alexnet
    from alexnet.data.loaders import load_eval_data
    from alexnet.errors import CheckpointError
    from alexnet.evaluate import evaluate
    from alexnet.predict import predict

    ckpt = torch.load(tiny_checkpoint(tmp_path / "m.pt", classes=4, seed=1), weights_only=True)
    ckpt["classes"] = ["zebra", "apple", "mango", "kiwi"]
    save_atomic(ckpt, tmp_path / "m.pt")
    model = alexnet.load(tmp_path / "m.pt")
    data = make_image_folder(tmp_path / "data", classes=3, per_class=6)
    for i, name in enumerate(["zebra", "apple", "mango"]):  # sorted: apple, mango, zebra; no kiwi
        (data / f"class{i}").rename(data / name)
    by_name = predict(model, data, top=1)
    expected = sum(r["top"][0]["class"] == Path(r["path"]).parent.name for r in by_name) / len(by_name)
    assert expected == pytest.approx(11 / 18)  # a figure that a wrong mapping would change

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 'counts matching class numbers' warning: the names matched
        stats = cli_json(capsys, "evaluate", "--checkpoint", str(tmp_path / "m.pt"), "--data", str(data), "--amp", "none",
                         "--json", "--out", str(tmp_path / "ev"))
    assert stats["top1"] == pytest.approx(expected) and stats["images"] == 18
    rows = (tmp_path / "ev" / "confusion.csv").read_text().splitlines()
    assert rows[0] == "true \\ predicted,apple,mango,zebra,(another class)"  # kiwi is the fourth output
    assert [r.split(",")[0] for r in rows[1:]] == ["apple", "mango", "zebra"]
    assert sum(int(v) for r in rows[1:] for v in r.split(",")[1:]) == 18
    # The Python API: the loader knows its classes
    loader, classes, _, _ = load_eval_data(data, model.preprocess, batch_size=5)
    assert evaluate(model, loader)["top1"] == pytest.approx(expected)
    assert evaluate(model, loader, classes=list(classes))["label_map"] == [1, 2, 0]
    # A class the model does not know, with another count of classes: one line naming it
    (data / "zebra").rename(data / "yak")
    loader, classes, _, source = load_eval_data(data, model.preprocess)
    with pytest.raises(CheckpointError, match=f"{source} has 3 classes but m.pt predicts 4; 'yak' is not among its classes"):
        evaluate(model, loader, names=(source, "m.pt"))


def test_a_feature_index_given_as_a_checkpoint_says_what_it_is(tmp_path, capsys):
    """predict --checkpoint index.safetensors said "no 'model_config'; build the model yourself"."""
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=1)
    assert main(["features", "--checkpoint", str(ckpt), "--data", str(folder), "--out", str(tmp_path / "idx.safetensors")]) == 0
    err = cli_fails(capsys, "predict", str(folder), "--checkpoint", str(tmp_path / "idx.safetensors"))
    assert err == (f"alexnet: error: {tmp_path / 'idx.safetensors'}: a feature index ('alexnet features'), not weights: give it "
                   f"to retrieve --index; the model that built it is {ckpt}")


def test_scoring_a_model_in_training_leaves_it_training(tmp_path):
    """predict, evaluate, build_index, retrieve and layer_table run the network without dropout (the
    same answers twice, where dropout would draw new ones) and hand the model back in the mode each of
    its modules was in: fine-tuning after a look at the scores keeps its dropout."""
    import alexnet
    from alexnet.data.loaders import load_eval_data
    from alexnet.evaluate import evaluate
    from alexnet.predict import predict
    from alexnet.retrieval import build_index, retrieve
    from alexnet.summary import layer_table

    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=2)
    model = alexnet.load(tiny_checkpoint(tmp_path / "m.pt", dropout=0.5))
    model.train()
    model.conv1.eval()  # a module the user keeps in eval mode stays so
    modes = {name: m.training for name, m in model.named_modules()}
    assert sum(modes.values()) > 3 and not modes["conv1"]
    image = str(make_image_folder(tmp_path / "one", classes=1, per_class=1) / "class0")

    def scores():
        loader = load_eval_data(str(folder), model.preprocess, batch_size=4)[0]
        index = build_index(model, str(folder), show_progress=False)
        return (predict(model, str(folder), top=3, show_progress=False), evaluate(model, loader, show_progress=False)["loss"],
                index["features"], retrieve(model, index, next(Path(image).iterdir()), k=2))

    first = scores()
    layer_table(model)
    assert {name: m.training for name, m in model.named_modules()} == modes
    second = scores()
    assert first[0] == second[0] and first[1] == second[1] and first[3] == second[3]
    assert torch.equal(first[2], second[2])


def test_class_names_match_across_unicode_spellings(tmp_path, capsys):
    """macOS spells a folder "été" with combining accents (NFD), Linux with one character each (NFC):
    a checkpoint trained on one was scored on the other by class number, with a warning, its labels
    swapped (the two spellings sort on either side of "f"); predict found no true class, and a resume
    was refused. Names now compare in one spelling; the reference is predict's top class by folder."""
    from types import SimpleNamespace

    import alexnet
    from alexnet.predict import predict
    from alexnet.resume import check_classes

    nfd, nfc = "e\u0301te\u0301", "\u00e9t\u00e9"
    ckpt = torch.load(tiny_checkpoint(tmp_path / "m.pt", classes=2, seed=1), weights_only=True)
    ckpt["classes"] = [nfd, "f"]  # as training on a Mac named them
    save_atomic(ckpt, tmp_path / "m.pt")
    model = alexnet.load(tmp_path / "m.pt")
    assert model.classes == [nfc, "f"]
    for spelling in (nfc, nfd):
        data = make_image_folder(tmp_path / f"data-{len(spelling)}", classes=2, per_class=6)
        (data / "class0").rename(data / spelling)
        (data / "class1").rename(data / "f")
        results = predict(model, data, top=1)
        assert all(r["label"] == (nfc if spelling in r["path"] else "f") for r in results)
        expected = sum(r["top"][0]["class"] == r["label"] for r in results) / len(results)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no 'counts matching class numbers' warning: the names matched
            stats = cli_json(capsys, "evaluate", "--checkpoint", str(tmp_path / "m.pt"), "--data", str(data),
                             "--amp", "none", "--json")
        assert stats["top1"] == pytest.approx(expected) and 0 < expected < 1, spelling
    check_classes([nfd, "f"], SimpleNamespace(classes=[nfc, "f"], source="data"), "run")  # a run resumed on Linux
    with pytest.raises(alexnet.DataError, match="the same names in another order"):
        check_classes([nfd, "f"], SimpleNamespace(classes=["f", nfc], source="data"), "run")


def test_python_api_wrong_arguments_are_named(tmp_path):
    """Each was met deep inside: load_models("x.pt") read each character as a path ('/ is a folder'),
    an empty loader said every image was unreadable, a label past the last class was torch's 'index 12
    is out of bounds', alexnet.load(None) pathlib's TypeError, load_eval_data(DIR, None) an
    AttributeError, and amp=torch.float16 ran on a CPU where amp="fp16" is refused."""
    import alexnet
    from alexnet.data.loaders import load_eval_data
    from alexnet.errors import ConfigError, DataError
    from alexnet.evaluate import evaluate, load_models
    from alexnet.predict import predict

    path = tiny_checkpoint(tmp_path / "m.pt")
    (model,) = load_models(str(path))
    assert model.classes == ["class0", "class1", "class2"]
    with pytest.raises(ValueError, match="no checkpoint given"):
        load_models([])
    with pytest.raises(DataError, match="the loader gave no batch"):
        evaluate(model, [], show_progress=False)
    images = torch.zeros(2, 3, 76, 76, dtype=torch.uint8)
    for bad in (3, -1):
        with pytest.raises(DataError, match=f"label {bad} is not one of the data's 3 classes"):
            evaluate(model, [(images, torch.tensor([0, bad]))], show_progress=False)
    result = evaluate(model, [(images, torch.tensor([0, 2]))], show_progress=False)  # labels in range: scored
    assert result["images"] == 2
    with pytest.raises(TypeError, match="a checkpoint is given by its path .*not NoneType"):
        alexnet.load(None)
    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=1)
    with pytest.raises(TypeError, match="load_eval_data: preprocess must be .*not NoneType"):
        load_eval_data(str(folder), None)
    with pytest.raises(ConfigError, match="amp torch.float16 is for GPUs"):
        predict(model, str(folder), amp=torch.float16, show_progress=False)


def test_a_pdf_or_svg_figure_is_the_same_bytes_each_time(tmp_path):
    """matplotlib dates a PDF (CreationDate) and an SVG (dc:date) and gives an SVG's clip paths
    random ids: the same figure (predict --figure p.svg, visualize curves --out c.pdf) differed from
    one run to the next. PNG and JPEG already were the same bytes."""
    confusion = torch.tensor([[3, 1], [0, 4]])
    for suffix in (".pdf", ".svg", ".png"):
        files = [tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"]
        for f in files:
            figures.plot_confusion(confusion, ["cat", "dog"], f)
        data = files[0].read_bytes()
        assert data == files[1].read_bytes(), suffix
        assert b"CreationDate" not in data and b"<dc:date>" not in data, suffix


def test_grey_images_are_shown_on_the_0_255_scale_not_stretched(tmp_path):
    """A one-channel model's images (Fashion-MNIST checkpoints shown photos) were drawn with
    matplotlib's per-image autoscale: a uniform grey tile came out black, a dim photo bright. Each
    tile's pixels must be the image's own grey values (RGB tiles always were)."""
    grey = torch.full((1, 28, 28), 69, dtype=torch.uint8)  # a 1x1 photo of (200, 10, 30): luma 69
    ramp = torch.arange(100, 156, 2, dtype=torch.uint8).repeat(28, 1)[None]  # a dim, low-contrast image
    result = {"path": "/p/x.jpg", "label": None, "top": [{"class": "a", "index": 0, "probability": 1.0}]}
    figures.plot_predictions([grey, ramp], [result, result], tmp_path / "pred.png")
    figures.plot_retrieval(grey, [(ramp, {"path": "/p/y.jpg", "distance": 1.0, "label": None})], tmp_path / "nn.png")
    pred = np.asarray(Image.open(tmp_path / "pred.png").convert("RGB")).astype(int)
    nn = np.asarray(Image.open(tmp_path / "nn.png").convert("RGB")).astype(int)
    # the centres of the tiles (prediction cells 300 px wide, image rows 24-220; retrieval cells 300 px)
    assert (np.abs(pred[100:140, 130:170] - 69) <= 1).all(), pred[120, 150]
    assert (np.abs(nn[150:230, 120:180] - 69) <= 1).all(), nn[190, 150]
    for row in (pred[122, 360:540], nn[190, 330:570]):  # inside the ramp's tile: its own values, 100 to 154
        assert row.min() >= 99 and row.max() <= 155 and row.max() - row.min() >= 40, (row.min(), row.max())


def test_features_of_a_data_sets_root_is_refused_not_labelled_by_split(tmp_path, capsys):
    """'features --data DIR' on the DIR that 'train --data' takes (train/ and val/ of class folders)
    indexed every photo under the class 'train' or 'val': retrieve then labelled neighbours by split.
    It is refused in one line naming the split to give, and nothing is written; the split indexes
    its photos under their own classes."""
    root = tmp_path / "data"
    make_image_folder(root / "train", classes=2, per_class=2)
    make_image_folder(root / "val", classes=2, per_class=1)
    ckpt = tiny_checkpoint(tmp_path / "m.pt", classes=2)
    index = tmp_path / "index.safetensors"
    err = cli_fails(capsys, "features", "--checkpoint", str(ckpt), "--data", str(root), "--out", str(index))
    assert err == (f"alexnet: error: {root}: holds split folders (train/, val/), not class folders: index one split, "
                   f"e.g. --data {root / 'val'}"), err
    assert not index.exists()
    assert main(["features", "--checkpoint", str(ckpt), "--data", str(root / "val"), "--out", str(index)]) == 0
    from alexnet.retrieval import load_index

    idx = load_index(index)
    assert idx["classes"] == ["class0", "class1"] and idx["labels"].tolist() == [0, 1]


def test_prediction_figure_of_a_file_name_that_is_not_utf8(tmp_path, capsys):
    """A photo named in Latin-1 bytes ('caf\\xe9.jpg' from an old archive) stopped 'predict --figure'
    with an internal error (matplotlib cannot draw lone surrogates), after the whole prediction and
    before any result was printed. The figure is written, its title the name with the byte escaped."""
    folder = make_image_folder(tmp_path / "imgs", classes=1, per_class=1)
    name = os.fsdecode(b"caf\xe9.jpg")
    (folder / name).write_bytes((folder / "class0" / "img0.jpg").read_bytes())
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    fig = tmp_path / "pred.png"
    results = cli_json(capsys, "predict", str(folder / name), "--checkpoint", str(ckpt), "--json", "--figure", str(fig))
    assert [r["path"] for r in results] == [str(folder / name)]
    assert Image.open(fig).size == (300, 400)


def test_figures_draw_dollar_signs_in_names_as_text(tmp_path, capsys):
    """matplotlib reads text between two '$' as TeX: a photo named 'a$^$.png' stopped 'predict
    --figure' with an internal error (a mathtext parse error), and a class folder named so broke
    the retrieval figure. Names are drawn as they are written."""
    folder = tmp_path / "imgs"
    make_image_folder(folder, classes=1, per_class=1)
    (folder / "class0").rename(folder / "x$^$")
    photo = folder / "x$^$" / "img0.jpg"
    (folder / "a$^$.jpg").write_bytes(photo.read_bytes())
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    fig = tmp_path / "pred.png"
    cli_json(capsys, "predict", str(folder / "a$^$.jpg"), "--checkpoint", str(ckpt), "--json", "--figure", str(fig))
    assert Image.open(fig).size == (300, 400)
    index = tmp_path / "index.safetensors"
    assert main(["features", "--checkpoint", str(ckpt), "--data", str(folder), "--out", str(index)]) == 0
    hits = cli_json(capsys, "retrieve", str(photo), "--index", str(index), "--json", "--figure", str(tmp_path / "nn.png"))
    assert hits[0]["label"] == "x$^$" and Image.open(tmp_path / "nn.png").size == (900, 340)



def test_every_figure_draws_names_letter_for_letter(tmp_path, capsysbinary):  # paths printed as bytes, as ls does
    """Names drawn in any figure (confusion ticks, curves' legends and titles, not only predict's and
    retrieve's) are text: a class or run folder named 'x$^$' or in Latin-1 bytes stopped
    'evaluate --out' and 'visualize curves' with an internal error (a mathtext parse error, or
    matplotlib's TypeError on a lone surrogate)."""
    from matplotlib.text import Text

    from alexnet.figures import plain, plot_confusion

    latin = os.fsdecode(b"caf\xe9")
    for name, drawn in (("a$^$.jpg", "a$^$.jpg"), ("cost $5 - $10", "cost $5 - $10"), (latin, "caf\\xe9"), ("x\\y", "x\\y")):
        assert Text()._preprocess_math(plain(name)) == (drawn, False), name  # how matplotlib reads it: no TeX
    assert plot_confusion(torch.tensor([[2, 1], [0, 3]]), ["x$^$", "cost $5 - $10"], tmp_path / "c.png").is_file()
    record = {"epoch": 1, "train_loss": 2.0, "val_loss": 2.1, "train_top1": 0.2, "val_top1_error": 0.8, "val_top5_error": 0.4,
              "lr": 0.01}
    runs = [tmp_path / "run$^$", tmp_path / (latin + "-run")]
    for run in runs:
        run.mkdir()
        (run / "metrics.jsonl").write_text(json.dumps(record) + "\n")
        (run / "config.json").write_text(json.dumps({"train": {"epochs": 3}}))  # unfinished: its name is the title
        assert main(["visualize", "curves", str(run)]) == 0
    assert main(["visualize", "curves", *map(str, runs), "--out", str(tmp_path / "both.png")]) == 0
    assert Image.open(tmp_path / "both.png").size == Image.open(runs[0] / "curves.png").size


def test_characters_the_font_lacks_are_said_in_one_warning(tmp_path, monkeypatch):
    """Class names in Japanese: matplotlib's default font (DejaVu Sans) has no CJK characters and warned
    once per character ('Glyph 26085 (\\N{CJK UNIFIED IDEOGRAPH-65E5}) missing from font(s) DejaVu Sans.'),
    a line each on stderr (3 for '日本 犬', dozens for a data set's classes); now one line names them all.
    Other warnings of a figure (too many images to draw) are said as before."""
    names = ["日本 犬", "犬本日"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figures.plot_confusion(torch.tensor([[2, 1], [0, 3]]), names, tmp_path / "c.png")
    said = [str(w.message) for w in caught]
    if not said:
        pytest.skip("matplotlib's font here has CJK characters: nothing to say")
    assert len(said) == 1 and said[0].startswith("the figure's font (") and "lacks 日本犬, drawn as empty boxes" in said[0], said
    # a warning that is no glyph's still reaches the caller, once
    monkeypatch.setattr(figures, "MOST_PREDICTIONS_DRAWN", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figures.plot_predictions([torch.zeros(3, 8, 8, dtype=torch.uint8)] * 2,
                                 [{"path": "a.jpg", "top": [{"class": "犬", "probability": 1.0}]}] * 2, tmp_path / "p.png")
    said = sorted(str(w.message) for w in caught)
    assert len(said) == 2 and said[0].endswith("the figure shows the first 1 of the 2 images"), said
    assert "lacks 犬, drawn as empty boxes" in said[1], said


def test_a_font_list_without_matplotlibs_own_fonts_is_named_in_one_line(tmp_path):
    """A matplotlib font list (~/.cache/matplotlib/fontlist-v*.json) made without matplotlib's own
    fonts (by another install of the same version, or while this one was being installed) made every
    curves.png (its log axis is drawn as maths) print 21 lines 'findfont: Font family ['STIXGeneral']
    not found. Falling back to DejaVu Sans.', on every train. Now one line names the file to delete."""
    import matplotlib

    mpl = tmp_path / "mpl"
    env = cli_env(MPLCONFIGDIR=str(mpl))
    subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], env=env, check=True, timeout=300)
    [cache] = mpl.glob("fontlist-v*.json")
    fonts = json.loads(cache.read_text())
    own = Path(matplotlib.get_data_path()).resolve()
    bundled = [f for f in fonts["ttflist"] if own in Path(own, f["fname"]).resolve().parents]  # relative: matplotlib's
    assert len(bundled) >= 10, "matplotlib's own fonts are not in its font list here"
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e, "val_top1_error": 0.5,
                                                           "lr": 0.01 / 10 ** e}) + "\n" for e in (1, 2, 3)))

    def curves() -> str:
        done = subprocess.run([sys.executable, "-m", "alexnet", "visualize", "curves", str(run)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0 and (run / "curves.png").exists(), done.stderr
        return done.stderr

    assert curves() == ""
    whole = cache.read_text()
    (mpl / "matplotlibrc").write_text("font.family: No Such Font\n")  # a family not installed: said as such, once
    assert curves().splitlines() == ["warning: matplotlib has no font No Such Font: the figure draws it in DejaVu Sans"]
    (mpl / "matplotlibrc").unlink()
    assert cache.read_text() == whole
    fonts["ttflist"] = [f for f in fonts["ttflist"] if f not in bundled]
    fonts["afmlist"] = [f for f in fonts["afmlist"] if own not in Path(own, f["fname"]).resolve().parents]
    cache.write_text(json.dumps(fonts))
    said = curves().splitlines()
    assert len(said) == 1 and said[0].startswith(f"warning: matplotlib's font list {cache} holds none of its own fonts"), said
    assert said[0].endswith("in DejaVu Sans; delete that file and matplotlib lists them again") and "STIXGeneral" in said[0], said


def test_figures_of_many_images_show_the_first_and_say_so(tmp_path):
    """Agg draws at most 65,535 pixels a side: 'predict DIR --figure' on 700 photos (175 rows of 400
    pixels) or 'retrieve --k 250 --figure' (a row of 300-pixel tiles) ended in an internal error after
    all the work. Each figure shows the first ones, and a warning names it and says how many."""
    from alexnet.figures import plot_predictions, plot_retrieval

    n = 101
    images = [torch.full((3, 8, 8), i, dtype=torch.uint8) for i in range(n)]
    results = [{"path": f"x{i}.jpg", "label": None, "top": [{"class": "a", "probability": 1.0}]} for i in range(n)]
    with pytest.warns(UserWarning, match=r"p\.png: the figure shows the first 100 of the 101 images"):
        plot_predictions(images, results, tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").size == (4 * 300, 25 * 400)  # 100 cells of 300 x 400, in rows of 4
    neighbours = [(images[i % n], {"label": "a", "distance": float(i)}) for i in range(250)]
    with pytest.warns(UserWarning, match=r"nn\.png: the figure shows the first 20 of the 250 neighbours"):
        plot_retrieval(images[0], neighbours, tmp_path / "nn.png")
    assert Image.open(tmp_path / "nn.png").size == (21 * 300, 340)  # the query and 20 tiles of 300 x 340


@pytest.mark.parametrize("ten_crop", [False, True], ids=["centre", "ten-crop"])
def test_packed_images_smaller_than_a_recipes_crop_are_one_line(tmp_path, capsys, ten_crop):
    """A recipe without a stored size (an older checkpoint's) takes packed images of any side, but
    not one smaller than its 67 px test crop: 40 px images have no centre crop or ten crops."""
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    blob = torch.load(ckpt, weights_only=True)
    blob["preprocess"] = dict(PRE, size=None, resize=None)
    save_atomic(blob, ckpt)
    photos = make_image_folder(tmp_path / "photos", classes=3, per_class=2)
    assert main(["prepare", "--data", str(photos), "--out", str(tmp_path / "pack"), "--size", "40", "--workers", "0"]) == 0
    err = cli_fails(capsys, "evaluate", "--checkpoint", str(ckpt), "--data", str(tmp_path / "pack"), "--amp", "none",
                    *(["--ten-crop"] if ten_crop else []))
    assert "3-channel 40x40, but the checkpoint takes 3-channel images of at least 67x67" in err
    assert main(["prepare", "--data", str(photos), "--out", str(tmp_path / "pack70"), "--size", "70", "--workers", "0"]) == 0
    got = cli_json(capsys, "evaluate", "--checkpoint", str(ckpt), "--data", str(tmp_path / "pack70"), "--amp", "none", "--json",
                   *(["--ten-crop"] if ten_crop else []))
    assert got["images"] == 6  # a side the crop fits in is scored


def test_an_ensemble_member_that_trained_on_the_scored_images_is_named(tmp_path, capsys):
    """A folder without val/: evaluate scores the images the first checkpoint held out (seed 0). A
    member trained on the same folder with seed 1 learnt some of them (its held-out images differ),
    and says so; members held out the same images, or trained elsewhere, do not."""
    from alexnet.data.loaders import held_out

    photos = make_image_folder(tmp_path / "photos", classes=3, per_class=10)
    assert held_out(30, 0)[1] != held_out(30, 1)[1]  # the two seeds hold out other images
    ckpts = []
    for name, data, seed in (("a", photos, 0), ("b", photos, 0), ("c", tmp_path / "elsewhere", 5), ("d", photos, 1)):
        path = tiny_checkpoint(tmp_path / f"{name}.pt")
        blob = torch.load(path, weights_only=True)
        blob["train_config"] = {"data": str(data), "seed": seed}
        save_atomic(blob, path)
        ckpts.append(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same held-out seed, other data: nothing to say
        cli_json(capsys, "evaluate", "--checkpoint", ckpts[0], "--ensemble", ckpts[1], ckpts[2], "--amp", "none", "--json")
    with pytest.warns(UserWarning) as caught:
        got = cli_json(capsys, "evaluate", "--checkpoint", ckpts[0], "--ensemble", *ckpts[1:], "--amp", "none", "--json")
    assert got["images"] == 3
    said = [str(w.message) for w in caught if "trained on" in str(w.message)]
    assert said == [f"{ckpts[3]} trained on {photos} holding out the images of seed 1: the images scored (those held out with "
                    "seed 0) include ones it trained on, so the figures are optimistic; give --data a folder none of the "
                    "models trained on"]
    with pytest.warns(UserWarning, match=r"d\.pt trained on .* the images scored \(all of its images\)"):
        cli_json(capsys, "evaluate", "--checkpoint", ckpts[2], "--ensemble", ckpts[3], "--data", str(photos), "--amp", "none", "--json")


def test_fashion_mnist_members_of_other_seeds_are_not_said_to_train_on_the_test_set(tmp_path, capsys, tiny_fmnist):
    """Fashion-MNIST is scored on its test set, which no seed trains on: no warning for an ensemble."""
    from alexnet.data.fashion_mnist import CLASSES

    recipe = {"dataset": "fashion_mnist", "mean": [72.9], "std": [90.0], "size": 28, "resize": None, "train_crop": 28,
              "test_crop": 28, "input_size": 28, "padding": 0, "flip": True}
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = create_model("alexnet_small", num_classes=10, widths=(8, 8, 8, 8, 8), fc_width=16, dropout=0.0)
        path = tmp_path / f"fm{seed}.pt"
        save_atomic({"model": m.state_dict(), "model_config": m.config.to_dict(), "classes": list(CLASSES), "preprocess": recipe,
                     "train_config": {"data": str(tiny_fmnist), "seed": seed}}, path)
        paths.append(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = cli_json(capsys, "evaluate", "--checkpoint", paths[0], "--ensemble", paths[1], "--amp", "none", "--json")
    assert got["images"] == 40


def test_evaluate_out_failing_half_way_keeps_the_earlier_four_files_together(tmp_path):
    """evaluate --out writes per_class.csv, confusion.png, confusion.csv and evaluate.json: a full disk
    at the figure (here past a 4 KiB RLIMIT_FSIZE: the csv fits, the png does not) left this
    evaluation's per_class.csv beside an earlier evaluation's evaluate.json, which named another
    checkpoint. Now the earlier four stay byte for byte, and the error names the file in --out."""
    import errno
    import resource

    from alexnet.cli.use import _write_evaluation

    out = tmp_path / "ev"
    classes = ["a", "b"]
    _write_evaluation(out, {"checkpoint": "old.pt"}, torch.tensor([[3, 1], [0, 4]]), classes, classes)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limit[1]))
    try:
        with pytest.raises(OSError) as caught:
            _write_evaluation(out, {"checkpoint": "new.pt"}, torch.tensor([[1, 3], [2, 2]]), classes, classes)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
    assert (caught.value.errno, caught.value.filename) == (errno.EFBIG, str(out / "confusion.png"))
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


def test_evaluate_out_ctrl_c_while_moving_keeps_the_four_files_together(tmp_path, monkeypatch, ctrl_c_raises):
    """The four files of evaluate --out are moved from the hidden folder one by one: a Ctrl-C (or
    SIGTERM) after the first move stopped there, leaving this evaluation's per_class.csv beside an
    earlier one's evaluate.json. Now the moves end first; then the command stops, with all four new."""
    import signal

    from alexnet.cli.use import _write_evaluation

    out = tmp_path / "ev"
    classes = ["a", "b"]
    _write_evaluation(out, {"checkpoint": "old.pt"}, torch.tensor([[3, 1], [0, 4]]), classes, classes)
    replace, moved = os.replace, []

    def replace_then_ctrl_c(src, dst):
        replace(src, dst)
        if Path(src).parent.name.startswith(".evaluate-") and Path(dst).parent == out:  # a move, not a write
            moved.append(Path(dst).name)
            if len(moved) == 1:
                signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "replace", replace_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        _write_evaluation(out, {"checkpoint": "new.pt"}, torch.tensor([[1, 3], [2, 2]]), classes, classes)
    monkeypatch.undo()
    assert moved == ["per_class.csv", "confusion.png", "confusion.csv", "evaluate.json"]
    assert json.loads((out / "evaluate.json").read_text())["checkpoint"] == "new.pt"
    assert sorted(f.name for f in out.iterdir()) == sorted(moved)  # and no hidden folder left


def imagenet_like(tmp_path: Path, bias: dict[int, float]) -> Path:
    """A 1000-class tiny checkpoint named as torchvision's ImageNet weights, whose logits are ``bias``
    (fc8's weights are zero): its ranking of the 1000 classes is known by hand for every image."""
    from torchvision.models import AlexNet_Weights

    ckpt = torch.load(tiny_checkpoint(tmp_path / "inet.pt", classes=1000), weights_only=True)
    ckpt["classes"] = list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])
    ckpt["model"]["fc8.weight"].zero_()
    ckpt["model"]["fc8.bias"].zero_()
    for i, b in bias.items():
        ckpt["model"]["fc8.bias"][i] = b
    save_atomic(ckpt, tmp_path / "inet.pt")
    return tmp_path / "inet.pt"


def test_an_ensemble_of_models_whose_images_are_prepared_differently_says_how(tmp_path, capsys):
    """'its images are prepared differently from A's; cannot ensemble them' did not say how: the
    stored size (a run at another input size) or the kind of data (a CIFAR model among photos)."""
    a = tiny_checkpoint(tmp_path / "a.pt")
    b = torch.load(tiny_checkpoint(tmp_path / "b.pt"), weights_only=True)
    b["preprocess"] = PRE | {"resize": 88, "size": 88}
    save_atomic(b, tmp_path / "b.pt")
    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=1)
    err = cli_fails(capsys, "evaluate", "--checkpoint", str(a), "--ensemble", str(tmp_path / "b.pt"), "--data", str(folder))
    assert err == (f"alexnet: error: {tmp_path / 'b.pt'}: its images are prepared differently from {a}'s (shorter side "
                   "resized to 88 against 76; images stored at 88 against 76); cannot ensemble them")


def test_a_data_class_named_twice_among_the_models_says_so(tmp_path, capsys):
    """A model whose class list names two outputs 'crane' (synset_words.txt names ImageNet's bird and
    machine cranes alike) refused data with a class 'crane' as 'has 2 classes but ... predicts 1000',
    with no reason: every data class is among the model's. Now the line names the class and outputs."""
    ckpt = imagenet_like(tmp_path, {})
    state = torch.load(ckpt, weights_only=True)
    state["classes"][134] = "crane"  # as synset_words.txt's first names: 134 and 517 both 'crane'
    save_atomic(state, ckpt)
    data = make_image_folder(tmp_path / "data", classes=2, per_class=1)
    (data / "class0").rename(data / "crane")
    (data / "class1").rename(data / "tench")
    err = cli_fails(capsys, "evaluate", "--checkpoint", str(ckpt), "--data", str(data))
    assert err == (f"alexnet: error: {data} has 2 classes but {ckpt} predicts 1000; 'crane' names its outputs 134, 517, "
                   "and which one the data's is cannot be told by name")


def test_a_subset_of_imagenet_synsets_named_by_a_classes_tsv_is_scored_against_the_1000_classes(tmp_path, capsys):
    """The README's way to score a few ILSVRC synsets against torchvision's weights: a classes.tsv
    giving torchvision's names. The model ranks 134 (crane bird) > 517 (crane) > 0 (tench) > 638
    (maillot) > the rest > 639 (maillot, tank suit), so by hand the two crane-bird images are top-1
    hits and the crane and the tench top-5 hits: 2/5 and 4/5. synset_words.txt's names (both
    cranes 'crane') are refused, naming the class given twice."""
    from alexnet.predict import predict

    ckpt = imagenet_like(tmp_path, {134: 10.0, 517: 9.0, 0: 8.0, 638: 7.0, 639: -1.0})
    data = make_image_folder(tmp_path / "data", classes=5, per_class=1)
    for c, wnid in enumerate(["n02012849", "n03126707", "n01440764", "n03710721", "n02012849"]):
        (data / wnid).mkdir(exist_ok=True)
        (data / f"class{c}" / "img0.jpg").rename(data / wnid / f"img{c}.jpg")
        (data / f"class{c}").rmdir()
    names = {"n01440764": "tench", "n02012849": "crane bird", "n03126707": "crane", "n03710721": "maillot tank suit"}
    (data / "classes.tsv").write_text("".join(f"{w}\t{n}\n" for w, n in names.items()))
    stats = cli_json(capsys, "evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--amp", "none", "--json")
    assert (stats["top1"], stats["top5"], stats["images"]) == (2 / 5, 4 / 5, 5)
    import alexnet

    truth = {Path(r["path"]).name: r["label"] for r in predict(alexnet.load(ckpt), data)}
    assert truth == {"img0.jpg": "crane bird", "img4.jpg": "crane bird", "img1.jpg": "crane", "img2.jpg": "tench",
                     "img3.jpg": "maillot tank suit"}
    (data / "classes.tsv").write_text("n01440764\ttench\nn02012849\tcrane\nn03126707\tcrane\nn03710721\tmaillot\n")
    err = cli_fails(capsys, "evaluate", "--checkpoint", str(ckpt), "--data", str(data))
    assert err.endswith("predicts 1000; 'crane' names 2 of the data's classes"), err


@pytest.mark.skipif(__import__("platform").machine() != "x86_64" or not Path("/proc/cpuinfo").exists(),
                    reason="x86 CPU flags as Linux lists them")
def test_amp_auto_is_bf16_only_where_the_cpu_computes_in_bf16(monkeypatch):
    """oneDNN's _is_mkldnn_bf16_supported says yes on plain AVX-512, where it emulates bf16: on an Ice Lake
    Xeon (no AVX512-BF16, no AMX) --amp auto trained in bf16 at 0.42x its float32 speed. auto now follows
    the CPU's bf16 instructions, read here from /proc/cpuinfo; with oneDNN saying yes and the CPU
    without them, it is float32."""
    import alexnet.runtime
    from alexnet.runtime import cpu_supports_bf16, resolve_amp

    flags = next(set(line.split(":", 1)[1].split()) for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("flags"))
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert cpu_supports_bf16() is native
    assert resolve_amp("auto", torch.device("cpu")) == (torch.bfloat16 if native else None)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    monkeypatch.setattr(alexnet.runtime, "_cpu_flags", lambda: {"avx512f", "avx512bw"})
    assert not cpu_supports_bf16() and resolve_amp("auto", torch.device("cpu")) is None


def test_evaluate_says_which_precision_ran(tmp_path, capsys, monkeypatch):
    """--amp auto runs in bf16 on a CPU with AVX512-BF16 and in float32 on one without: the console's
    first line and --json's "precision" say which ran (neither did)."""
    import alexnet.runtime

    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=1)
    ckpt = str(tiny_checkpoint(tmp_path / "m.pt"))
    for bf16_cpu, amp, ran in ((True, "auto", "bfloat16"), (False, "auto", "float32"), (False, "bf16", "bfloat16"),
                               (True, "none", "float32")):
        monkeypatch.setattr(alexnet.runtime, "cpu_supports_bf16", lambda bf16_cpu=bf16_cpu: bf16_cpu)
        args = ["evaluate", "--checkpoint", ckpt, "--data", str(folder), "--device", "cpu", "--amp", amp, "--workers", "0"]
        assert cli_json(capsys, *args, "--json")["precision"] == ran, (bf16_cpu, amp)
        assert main(args) == 0
        assert capsys.readouterr().out.splitlines()[0].endswith(f"3 images (centre crop, {ran})"), (bf16_cpu, amp)


def test_evaluate_lists_a_moved_training_folder_once(tmp_path, capsys, monkeypatch):
    """evaluate --data of a checkpoint's training folder moved listed the folder three times (25.8 s of
    start on 50,000 images): whether the checkpoint trained on it, again for the ensemble warnings,
    then its images to score. It is listed once now, and scores what it scored then."""
    import shutil

    import alexnet.data.folder as folder_module

    data = make_image_folder(tmp_path / "imgs", classes=3, per_class=10)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--epochs", "1", "--batch-size", "9", "--seed", "3", "--out", str(run),
                 "--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32", "--amp", "none",
                 "--threads", "1", "--workers", "0"]) == 0
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    moved = shutil.copytree(data, tmp_path / "moved")
    shutil.rmtree(data)
    calls = []
    real = folder_module.list_images
    monkeypatch.setattr(folder_module, "list_images", lambda root, *a, **k: calls.append(Path(root)) or real(root, *a, **k))
    got = cli_json(capsys, "evaluate", "--checkpoint", str(run / "last.pt"), "--data", str(moved), "--json", "--amp", "none",
                   "--workers", "0")
    assert calls == [moved]
    assert got["images"] == last["val_images"] == 3 and "held out, seed 3" in got["data"]
    assert got["top1"] == pytest.approx(last["val_top1"]) and got["top5"] == pytest.approx(last["val_top5"])


def test_evaluate_of_a_split_folder_tells_train_classes_without_listing_its_images(tmp_path, monkeypatch):
    """evaluate on ROOT with train/ and val/ listed every training image (4 s at 1.28 M) only to learn
    the class folders. They are told from train/'s folder names now; names from classes.tsv, the
    class order, an empty training class folder refused as before: all as when train/ was listed."""
    import alexnet
    import alexnet.data.folder as folder_module
    from alexnet.data.loaders import load_eval_data
    from alexnet.errors import DataError

    root = tmp_path / "root"
    make_image_folder(root / "train", classes=3, per_class=4)
    make_image_folder(root / "val", classes=3, per_class=2)
    (root / "train" / "class1" / "deeper").mkdir()  # images only in a sub-folder still make a class
    for f in (root / "train" / "class1").glob("*.jpg"):
        f.rename(root / "train" / "class1" / "deeper" / f.name)
    (root / "classes.tsv").write_text("class0\tzero\nclass1\tone\nclass2\ttwo\n")
    pre = alexnet.load(tiny_checkpoint(tmp_path / "m.pt")).preprocess
    listed = []
    real = folder_module._image_files
    monkeypatch.setattr(folder_module, "_image_files", lambda f, *a, **k: listed.append(Path(f)) or real(f, *a, **k))
    loader, classes, n, source = load_eval_data(root, pre, batch_size=4)
    assert classes == ["zero", "one", "two"] and loader.folders == ["class0", "class1", "class2"] and n == 6
    assert source == str(root / "val") and n == len(list((root / "val").rglob("*.jpg")))
    assert [p for p in listed if "train" in p.parts] == [root / "train" / "class1"]  # no image directly in it: looked into
    (root / "train" / "class2" / "notes.txt").write_text("x")
    for f in (root / "train" / "class2").glob("*.jpg"):
        f.unlink()
    with pytest.raises(DataError) as e:
        load_eval_data(root, pre, batch_size=4)
    assert str(e.value) == f"{root / 'train' / 'class2'}: class folder has no images it reads (1 file of other kinds: 1 .txt; " \
                           "it reads " + " ".join(folder_module.IMAGE_EXTENSIONS) + ")"


def _json_help(command: str) -> str:
    """The --json help of ``command``, as 'alexnet COMMAND --help' prints it."""
    from alexnet.cli.options import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return next(a.help for a in sub._actions if a.dest == "json")


def test_json_fields_are_the_ones_help_names_with_json_types(tmp_path, capsys):
    """Scripts read evaluate/predict/retrieve --json by field name: '--help' said only 'print one
    JSON object' or 'a JSON list'; it now names every field, and each is a number, string or null."""
    import re

    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=2)
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    index = tmp_path / "i.safetensors"
    assert main(["features", "--checkpoint", str(ckpt), "--data", str(folder), "--out", str(index)]) == 0
    query = str(folder / "class1" / "img0.jpg")
    ev = cli_json(capsys, "evaluate", "--checkpoint", str(ckpt), "--data", str(folder), "--json")
    pr = cli_json(capsys, "predict", query, "--checkpoint", str(ckpt), "--json", "--top", "2")
    rt = cli_json(capsys, "retrieve", query, "--index", str(index), "--json", "--k", "2")
    for command, keys in (("evaluate", set(ev)), ("predict", set(pr[0]) | set(pr[0]["top"][0])), ("retrieve", set(rt[0]))):
        named = set(re.findall(r"[a-z][a-z0-9_]*", _json_help(command)))
        assert keys <= named, (command, keys - named)
    assert all(isinstance(ev[k], float) for k in ("top1", "top5", "top1_error", "top5_error", "loss"))
    assert isinstance(ev["images"], int) and isinstance(ev["precision"], str) and isinstance(ev["models"], list)
    assert isinstance(pr[0]["top"][0]["probability"], float) and isinstance(pr[0]["top"][0]["index"], int)
    assert isinstance(rt[0]["distance"], float) and rt[0]["label"] == "class1"


def test_a_warning_during_a_progress_bar_starts_its_own_line(tmp_path, capsys):
    """An unreadable image met while evaluate's bar was drawn (--progress on, a terminal) was printed
    at the end of the bar's line: '... 9.44batch/s]warning: skipping ...'. It is now written above
    the bar (tqdm.write: the bar cleared, the line, the bar redrawn); --json's stdout stays one document."""
    import re

    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=2)
    (folder / "class2" / "img1.jpg").write_bytes(b"not a jpeg")
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(folder), "--json", "--progress", "on",
                 "--batch-size", "1", "--workers", "0"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["images"] == 5
    lines = re.split(r"[\r\n]", err)
    said = [line for line in lines if "warning: skipping unreadable image" in line]
    assert len(said) == 1 and said[0].startswith("warning: "), err


def test_evaluate_reads_the_device_once_a_batch_beyond_its_label_check(tmp_path):
    """alexnet evaluate waited for the device twice a batch on a GPU: the loss read (score) and a
    finiteness count of every model's probabilities (297d57f). Non-finite outputs are now told by the
    loss it reads anyway, so the device is read once a batch; the label check reads CPU labels."""
    from test_train import _HostReads

    import alexnet
    from alexnet.data.loaders import load_eval_data
    from alexnet.evaluate import evaluate

    model = alexnet.load(tiny_checkpoint(tmp_path / "m.pt"))
    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=3)
    loader, *_ = load_eval_data(folder, model.preprocess, 2)
    mode = _HostReads()
    with mode:
        evaluate(model, loader, "cpu", "none")
    import inspect

    import alexnet.evaluate as evaluate_module

    src, first = inspect.getsourcelines(evaluate_module._check_labels)  # reads the CPU labels
    cpu = {f"{evaluate_module.__file__}:{n}" for n in range(first, first + len(src))}
    device_reads = [w for w in mode.where if w not in cpu and f"{os.sep}data{os.sep}" not in w]
    assert len(device_reads) == len(loader), collections.Counter(mode.where)


def test_an_ensemble_averages_the_members_probabilities_not_their_logits(tmp_path, capsys):
    """Two different members against an independent computation: the mean of their softmax outputs
    (SPEC section 3, the paper's section 4), centre crop in float64, image by image. The geometric
    mean (softmax of the averaged log-probabilities, i.e. of averaged logits) gives another loss."""
    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=3)
    a, b = tiny_checkpoint(tmp_path / "a.pt"), tiny_checkpoint(tmp_path / "b.pt", seed=5)
    got = cli_json(capsys, "evaluate", "--checkpoint", str(a), "--ensemble", str(b), "--data", str(folder), "--json",
                   "--progress", "off", "--amp", "none")
    import alexnet

    models, (mean, std) = [alexnet.load(p).double() for p in (a, b)], pre_float64()
    nll = geometric = 0.0
    c1, o = 0, (76 - 67) // 2
    ds = ImageFolderDataset(folder, 76, 76)
    for image, label, _ in map(ds.__getitem__, range(len(ds))):
        x = ((image[:, o : o + 67, o : o + 67].double() - mean) / std).unsqueeze(0)
        with torch.no_grad():
            logits = [m(x)[0] for m in models]
        p = sum(torch.softmax(z, 0) for z in logits) / 2
        nll -= math.log(float(p[label]))
        c1 += int(p.argmax()) == label
        geometric -= float(torch.log_softmax(sum(torch.log_softmax(z, 0) for z in logits) / 2, 0)[label])
    assert got["loss"] == pytest.approx(nll / 9, rel=1e-4) and got["top1"] == pytest.approx(c1 / 9)
    assert abs(geometric - nll) / 9 > 1e-3  # the two averages are told apart here


def test_top5_counts_a_label_ranked_fifth_but_not_sixth():
    """score's counts against ranks written by hand, seven classes: labels ranked 1st, 5th, 6th and 7th
    give one top-1 and two top-5 hits; the loss is the sum of the labels' negative log-probabilities."""
    from alexnet.evaluate import score

    probs = torch.tensor([[0.05, 0.30, 0.08, 0.20, 0.10, 0.15, 0.12]] * 4, dtype=torch.float64)
    labels = torch.tensor([1, 4, 2, 0])  # ranks 1, 5, 6, 7
    nll, top1, top5, predicted = score(probs.log(), labels)
    assert (top1, top5) == (1, 2) and predicted.tolist() == [1] * 4
    assert nll == pytest.approx(-math.log(0.30 * 0.10 * 0.08 * 0.05), rel=1e-12)


def test_ten_crops_average_the_softmax_of_each_view():
    """model_log_probs with ten crops against the mean of the ten views' softmax outputs (SPEC section
    3), views cut by hand and scored in float64, on a network whose views disagree: the softmax of
    the averaged logits is other probabilities. (The ten-crop evaluation test's network scores the
    views of its images alike to 1e-5, so it cannot tell the two apart.)"""
    import copy

    from alexnet.data.presets import Preprocess
    from alexnet.predict import model_log_probs

    torch.manual_seed(0)
    m = create_model("alexnet_paper", num_classes=3, widths=(8, 8, 8, 8, 8), fc_width=16, input_size=67, dropout=0.0,
                     init="kaiming").eval()
    with torch.no_grad():
        m.fc8.weight.mul_(300)  # logits of a few units that differ from view to view
    images = torch.randint(0, 256, (2, 3, 76, 76), dtype=torch.uint8)
    got = model_log_probs(m, images, Preprocess.from_dict(PRE), ten_crop=True).double().exp()
    m64 = copy.deepcopy(m).double()
    mean, std = pre_float64()
    for image, p in zip(images, got):
        views = []
        for top, left in ((0, 0), (0, 9), (9, 0), (9, 9), (4, 4)):  # 76 - 67 = 9; the centre rounded down
            crop = (image[:, top : top + 67, left : left + 67].double() - mean) / std
            views += [crop, crop.flip(-1)]
        with torch.no_grad():
            logits = m64(torch.stack(views))
        want = torch.softmax(logits, 1).mean(0)
        torch.testing.assert_close(p, want, rtol=1e-4, atol=1e-5)
        assert (torch.softmax(logits.mean(0), 0) - want).abs().max() > 1e-2


def test_per_class_csv_leaves_a_class_without_images_empty(tmp_path):
    """evaluate --out wrote 'nan' as the top-1 of a class the data has no image of (a checkpoint's
    class missing from the folder scored): a spreadsheet takes it as text. The cell is now empty;
    the other rows' figures as computed by hand."""
    import csv

    from alexnet.evaluate import per_class_accuracy, write_per_class_csv

    confusion = torch.tensor([[2, 1, 0], [0, 0, 0], [1, 0, 3]])
    write_per_class_csv(per_class_accuracy(confusion, ["a", "b", "c"]), tmp_path / "per_class.csv")
    with (tmp_path / "per_class.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["class"], r["images"], r["top1"]) for r in rows] == [("a", "3", repr(2 / 3)), ("b", "0", ""), ("c", "4", "0.75")]
    assert "nan" not in (tmp_path / "per_class.csv").read_text()


def test_a_workers_warning_during_a_progress_bar_starts_its_own_line(tmp_path):
    """With --workers 1, an unreadable image's warning (said in the worker, which does not draw the
    bar) was appended to the bar's line: '...| 1/8 [00:00<00:01,  4.98batch/s]warning: skipping ...',
    and so were the warnings.warn of the data path. The worker now blanks the bar's line first: as a
    terminal shows stderr (each line from its last carriage return), the warning starts its line."""
    import subprocess
    import sys

    from conftest import cli_env, run_cli

    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=3)
    (folder / "class2" / "img1.jpg").write_bytes(b"not a jpeg")
    (folder / "class1" / "img1.jpg").write_bytes(b"not a jpeg either")
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    r = run_cli("evaluate", "--checkpoint", str(ckpt), "--data", str(folder), "--json", "--progress", "on",
                "--batch-size", "1", "--workers", "1", "--threads", "1")
    assert r.returncode == 0 and json.loads(r.stdout)["images"] == 7, r.stderr
    shown = [line.rsplit("\r", 1)[-1] for line in r.stderr.split("\n")]
    said = [line for line in shown if "skipping unreadable image" in line]
    assert len(said) == 2 and all(line.startswith("warning: skipping unreadable image ") for line in said), r.stderr
    # a warnings.warn in a worker (PIL's on a corrupt EXIF block): the workers' start installs show_warning
    script = """
import multiprocessing, warnings
from alexnet.cli import _warning_line
from alexnet.data.sources import _BarsToldStart
from alexnet.runtime import drawn_bars_blank, progress_bar
def work(start):
    start(0)
    warnings.warn("a worker's warning")
warnings.formatwarning = _warning_line
bar = progress_bar(8, "evaluate", enabled=True, unit="batch")
bar.update(1)
start = _BarsToldStart(drawn_bars_blank(), None)  # what sources.start_workers gives every loader's workers
child = multiprocessing.get_context("fork").Process(target=work, args=(start,))
child.start(); child.join()
bar.close()
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=cli_env(), timeout=120)
    shown = [line.rsplit("\r", 1)[-1] for line in r.stderr.split("\n")]
    assert "warning: a worker's warning" in shown, r.stderr


@pytest.mark.parametrize("method", ["spawn"])  # forkserver: the same start, checked by hand (helper 75)
def test_a_spawned_workers_warning_during_a_progress_bar_starts_its_own_line(tmp_path, method):
    """Under spawn (macOS's, Windows') or forkserver (Python 3.14's on Linux) a worker has no copy of
    its parent's bars: its 'warning: skipping unreadable image ...' and its warnings.warn were still
    appended to the bar's line. The parent now tells its workers, as they start, what blanks that line;
    with --progress off they write no carriage return."""
    import subprocess
    import sys

    from conftest import cli_env

    folder = make_image_folder(tmp_path / "imgs", classes=2, per_class=2)
    (folder / "class1" / "img1.jpg").write_bytes(b"not a jpeg")
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    driver = tmp_path / "driver.py"  # as a user's script sets the start method, then runs the command
    driver.write_text(f"""
import multiprocessing, sys, warnings
from alexnet.cli import main
from alexnet.data.folder import collate
from alexnet.data.loaders import _batches
from alexnet.runtime import progress

class Warns:
    def __len__(self):
        return 2
    def __getitem__(self, i):
        warnings.warn("a worker's warning")

if __name__ == "__main__":
    multiprocessing.set_start_method({method!r})
    if sys.argv[1] == "warn":
        for _ in progress(_batches(Warns(), [0, 1], 1, False, False, 0, 0, 1, 1, False), total=2, enabled=True):
            pass
    else:
        sys.exit(main(sys.argv[1:]))
""")
    evaluate = [sys.executable, str(driver), "evaluate", "--checkpoint", str(ckpt), "--data", str(folder), "--json",
                "--batch-size", "1", "--workers", "2", "--threads", "1", "--progress"]
    for args in (evaluate + ["on"], [sys.executable, str(driver), "warn"]):
        r = subprocess.run(args, capture_output=True, text=True, env=cli_env(), timeout=300)
        assert r.returncode == 0, r.stderr
        shown = [line.rsplit("\r", 1)[-1] for line in r.stderr.split("\n")]
        said = [line for line in shown if "skipping unreadable image" in line or "UserWarning: a worker's warning" in line]
        assert said and all(line.startswith(("warning: skipping unreadable image ", str(driver))) for line in said), r.stderr
    r = subprocess.run(evaluate + ["off"], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert r.returncode == 0 and "\r" not in r.stderr and "warning: skipping unreadable image" in r.stderr, r.stderr


def test_a_spawned_features_workers_warning_starts_its_own_line(tmp_path):
    """features, prepare and the mean-image pass make DataLoaders of their own, whose workers did not
    print their warnings.warn as a loader's do: under fork the command's formatwarning, inherited,
    started a line of its own, but a spawned worker's (PIL's 'Corrupt EXIF data', features decoding
    photos upright) was appended to the bar's line: '...?batch/s]/.../TiffImagePlugin.py:982: UserWarning'."""
    import io
    import struct
    import subprocess
    import sys

    from conftest import cli_env
    from PIL import Image

    folder = make_image_folder(tmp_path / "imgs", classes=2, per_class=2)
    encoded = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(encoded, "JPEG")
    exif = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + bytes(10)  # an IFD of 65535 entries in 12 bytes
    jpeg = encoded.getvalue()
    (folder / "class0" / "exif.jpg").write_bytes(jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + jpeg[2:])
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    driver = tmp_path / "driver.py"
    driver.write_text("import multiprocessing, sys\nfrom alexnet.cli import main\nif __name__ == '__main__':\n"
                      "    multiprocessing.set_start_method('spawn')\n    sys.exit(main(sys.argv[1:]))\n")
    r = subprocess.run([sys.executable, str(driver), "features", "--checkpoint", str(ckpt), "--data", str(folder), "--out",
                        str(tmp_path / "f.safetensors"), "--workers", "1", "--threads", "1", "--progress", "on"],
                       capture_output=True, text=True, env=cli_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    shown = [line.rsplit("\r", 1)[-1] for line in r.stderr.split("\n")]
    said = [line for line in shown if "Corrupt EXIF data" in line]
    assert said and all(line.startswith(("warning: ", "/")) for line in said), r.stderr


def test_retrieve_auto_queries_in_the_index_precision(tmp_path, capsys):
    """An index built in float32 (--amp none, or on a GPU) queried with the default --amp auto on a CPU
    with bf16 computed the query in bf16: the indexed image sat off itself, with a warning telling the
    user to pass --amp. auto now follows the index's precision; an explicit --amp is still obeyed."""
    import alexnet.runtime

    folder = make_image_folder(tmp_path / "imgs", classes=2, per_class=2)
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    index = str(tmp_path / "f32.safetensors")
    assert main(["features", "--checkpoint", str(ckpt), "--data", str(folder), "--out", index, "--amp", "none"]) == 0
    query = str(sorted((folder / "class0").iterdir())[0])
    capsys.readouterr()
    with mock.patch.object(alexnet.runtime, "cpu_supports_bf16", return_value=True):  # auto is bf16 here
        assert alexnet.runtime.resolve_amp("auto", torch.device("cpu")) == torch.bfloat16
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert main(["retrieve", query, "--index", index, "--device", "cpu"]) == 0
        assert float(capsys.readouterr().out.split()[0]) < 1e-6
        with pytest.warns(UserWarning, match="computed in float32 and the query's are in bfloat16"):
            assert main(["retrieve", query, "--index", index, "--device", "cpu", "--amp", "bf16"]) == 0
    assert float(capsys.readouterr().out.split()[0]) > 1e-4


def test_a_warning_of_the_main_process_during_a_progress_bar_starts_its_own_line(tmp_path):
    """With --workers 0 the images are decoded under the bar: PIL's warning on a camera JPEG whose
    EXIF block is corrupt was appended to the bar's line ('...| 0/9 [00:00<?, ?batch/s]warning:
    Corrupt EXIF data. ...'). It starts a line of its own, as a worker's does."""
    import struct

    from conftest import run_cli

    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=3)
    jpeg = (folder / "class1" / "img1.jpg").read_bytes()
    # an APP1 Exif block whose one IFD entry points past its end, as a damaged camera file's does
    exif = b"Exif\x00\x00II*\x00\x08\x00\x00\x00" + struct.pack("<H", 5) + b"\x12\x01\x03\x00\x01\x00\x00\x00\xff\xff\xff\x7f"
    (folder / "class1" / "img1.jpg").write_bytes(jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + jpeg[2:])
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    r = run_cli("evaluate", "--checkpoint", str(ckpt), "--data", str(folder), "--json", "--progress", "on",
                "--batch-size", "1", "--workers", "0", "--threads", "1")
    assert r.returncode == 0 and json.loads(r.stdout)["images"] == 9, r.stderr
    shown = [line.rsplit("\r", 1)[-1] for line in r.stderr.split("\n")]  # as a terminal shows them
    assert [line for line in shown if "Corrupt EXIF" in line][0].startswith("warning: Corrupt EXIF data"), r.stderr


@pytest.mark.parametrize("ten_crop", [False, True], ids=["centre", "ten-crop"])
def test_the_loss_of_a_confidently_wrong_network_is_not_cut_off(tmp_path, capsys, ten_crop):
    """evaluate took the log of probabilities clamped at 1e-12, so an image whose true class the
    network rules out (probability under 1e-12: a confident mistake of a long-trained network) added
    27.6 to the loss whatever its score, and the loss came out below training's val_loss (log_softmax
    of the same logits). Against float64: -log of the views' mean softmax, from the logits."""
    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=3)
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    state = torch.load(ckpt, weights_only=True)
    state["model"]["fc8.weight"] *= 400  # logits hundreds apart
    save_atomic(state, ckpt)
    args = ["--ten-crop"] if ten_crop else []
    got = cli_json(capsys, "evaluate", "--checkpoint", str(ckpt), "--data", str(folder), "--json", "--amp", "none", *args)
    import alexnet

    model = alexnet.load(ckpt).double()
    ds = ImageFolderDataset(folder, 76, 76)
    mean, std = pre_float64()
    nll = []
    for image, label, _ in (ds[i] for i in range(len(ds))):
        s, n = 67, 76
        corners = ((0, 0), (0, n - s), (n - s, 0), (n - s, n - s)) if ten_crop else ()
        crops = [image[:, t : t + s, left : left + s].double() for t, left in (*corners, ((n - s) // 2, (n - s) // 2))]
        crops = [v for c in crops for v in ((c, torch.flip(c, dims=[2])) if ten_crop else (c,))]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.stack([(c - mean) / std for c in crops])), dim=1)
        nll.append(-float(torch.logsumexp(logp[:, label], 0) - math.log(len(crops))))
    assert max(nll) > 60  # some image's true class has a probability far under 1e-12
    assert got["loss"] == pytest.approx(sum(nll) / len(nll), rel=1e-4)


def test_errors_are_counted_not_one_less_the_accuracy():
    """top1_error was 1 - 88/500 = 0.8240000000000001 in --json and metrics.jsonl; it is the
    wrong images over all of them, the float nearest the decimal a reader expects."""
    from alexnet.evaluate import summarize

    got = summarize(1000.0, 88, 290, 500)
    assert (got["top1"], got["top1_error"], got["top5"], got["top5_error"]) == (0.176, 0.824, 0.58, 0.42)
    assert repr(got["top1_error"]) == "0.824" and got["loss"] == 2.0 and got["images"] == 500
