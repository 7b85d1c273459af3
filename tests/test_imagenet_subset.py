"""A folder of a subset of ImageNet's synsets ("ImageNet-100") named by torchvision's categories from
the user's own devkit meta.mat or Kaggle LOC_synset_mapping.txt beside it.

No real WNID list is written here: the mappings are 1000 made-up WNIDs holding the 20 real ones of
alexnet.data.imagenette.SYNSETS at their true ImageNet indexes, so that a class's expected index is
known by construction, not computed by the code under test."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder

import alexnet
from alexnet.cli import main
from alexnet.data.folder import find_classes
from alexnet.data.imagenette import SYNSETS
from alexnet.errors import DataError
from alexnet.predict import predict


def fake_wnids() -> list[str]:
    """1000 sorted, different WNIDs: the 20 real ones of SYNSETS at their ImageNet index, made-up
    ones spaced evenly between them."""
    known = sorted((i, int(w[1:])) for w, (i, _) in SYNSETS.items())
    anchors = [(-1, 1_000_000), *known, (1000, 99_999_999)]
    out = []
    for (i0, n0), (i1, n1) in zip(anchors, anchors[1:]):
        gap = i1 - i0 - 1
        out += [f"n{n0 + (n1 - n0) * k // (gap + 1):08d}" for k in range(1, gap + 1)]
        out += [f"n{n1:08d}"] if i1 < 1000 else []
    assert len(out) == 1000 and out == sorted(set(out))
    assert all(out[i] == w for w, (i, _) in SYNSETS.items())
    return out


WNIDS = fake_wnids()
MADE_UP = 300  # a made-up synset's index: it is none of Imagenette's, so only the mapping names it


def categories() -> list[str]:
    from torchvision.models import AlexNet_Weights

    return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


def write_mapping(path: Path, wnids: list[str] = WNIDS) -> Path:
    """Kaggle's LOC_synset_mapping.txt layout: "WNID words" per line (in shuffled order: it is sorted),
    Windows line ends, words with a line separator of Unicode's (U+2028, which is no new line)."""
    order = np.random.default_rng(0).permutation(len(wnids))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(f"{wnids[i]} made-up words {i}, \u2028more\r\n" for i in order).encode("utf-8"))
    return path


def write_meta(path: Path, wnids: list[str] = WNIDS) -> Path:
    """A devkit meta.mat: ILSVRC2012_IDs 1-1000 in an order other than the WNIDs' (as the real one),
    plus a non-leaf synset with ID 1001."""
    scipy_io = pytest.importorskip("scipy.io", reason="the devkit's meta.mat is read with scipy")
    ids = np.random.default_rng(1).permutation(1000) + 1  # ids[i]: the ILSVRC2012_ID of wnids[i]
    rows = [(int(ids[i]), w, "made up") for i, w in enumerate(wnids)] + [(1001, "n00000001", "made-up parent")]
    synsets = np.array(rows, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy_io.savemat(str(path), {"synsets": synsets})
    return path


def subset(root: Path, indexes: list[int], per_class: int = 2) -> Path:
    """train/ and val/ of class folders named by the WNIDs at ``indexes``."""
    for split in ("train", "val"):
        make_image_folder(root / split, classes=len(indexes), per_class=per_class)
        for c, i in enumerate(indexes):
            (root / split / f"class{c}").rename(root / split / WNIDS[i])
    return root


@pytest.mark.parametrize("where", ["LOC_synset_mapping.txt", "../../../LOC_synset_mapping.txt", "meta.mat",
                                   "ILSVRC2012_devkit_t12/data/meta.mat"])


def test_a_subset_is_named_by_the_rank_of_its_synsets_in_the_users_own_file(tmp_path, where):
    indexes = [SYNSETS["n02086240"][0], MADE_UP, SYNSETS["n03888257"][0]]  # 155 (Shih-Tzu), 300, 701 (parachute)
    data = subset(tmp_path / "CHALLENGE" / "ILSVRC" / "Data" / "CLS-LOC", indexes)
    assert find_classes(data / "train")[1] == [WNIDS[i] for i in indexes]  # no file: the folder names
    file = (data / where).resolve()
    (write_meta if file.name == "meta.mat" else write_mapping)(file)
    expected = [categories()[i] for i in indexes]
    assert expected[0] == SYNSETS["n02086240"][1] and expected[2] == SYNSETS["n03888257"][1]
    for folder in (data / "train", data / "val"):
        assert find_classes(folder) == ([WNIDS[i] for i in indexes], expected)


def test_the_order_is_classes_tsv_then_the_mapping_then_imagenette(tmp_path):
    data = subset(tmp_path / "d", [0, MADE_UP])  # n01440764 (tench) and a made-up synset
    assert find_classes(data / "train")[1] == [WNIDS[0], WNIDS[MADE_UP]]
    # A mapping where tench's WNID ranks last: it names tench's folder by index 999, not Imagenette's 0.
    write_mapping(data / "LOC_synset_mapping.txt", [f"n{n:08d}" for n in range(999)] + [WNIDS[0]])
    shutil.rmtree(data / "train" / WNIDS[MADE_UP])
    assert find_classes(data / "train")[1] == [categories()[999]]
    (data / "classes.tsv").write_text(f"{WNIDS[0]}\tmy tench\n", encoding="utf-8")
    assert find_classes(data / "train")[1] == ["my tench"]
    # Folders that are not all WNIDs read no mapping, a damaged one included.
    (data / "classes.tsv").unlink()
    (data / "LOC_synset_mapping.txt").write_text("junk\n", encoding="utf-8")
    (data / "val" / "cats").mkdir()
    assert find_classes(data / "val")[1] == ["cats", WNIDS[0], WNIDS[MADE_UP]]


@pytest.mark.parametrize("damage, said", [
    (lambda p: p.write_text("".join(f"{w} x\n" for w in WNIDS[:999])), r"999 synsets, not 1000"),
    (lambda p: p.write_text("".join(f"{w} x\n" for w in [*WNIDS[:999], "tench"])), r"'tench' is no WNID"),
    (lambda p: p.write_bytes(b"\x00\x01" * 5000), r"1 synsets, not 1000"),  # binary junk: one long word
    (lambda p: p.write_text("".join(f"{w} x\n" for w in [*WNIDS[:999], WNIDS[0]])), r"1 WNID\(s\) named twice"),
    (lambda p: p.with_name("meta.mat").write_bytes(b"MATLAB 5.0 junk" * 20), r"not an ILSVRC devkit meta.mat"),
    (lambda p: write_meta(p.with_name("meta.mat"), [*WNIDS[:999], "n1"]), r"ILSVRC2012_IDs 1-1000: 'n1' is no WNID"),
])


def test_a_damaged_mapping_is_one_line_naming_it(tmp_path, capsys, damage, said):
    data = subset(tmp_path / "d", [MADE_UP, MADE_UP + 1])
    damage(data / "LOC_synset_mapping.txt")
    file = data / ("meta.mat" if (data / "meta.mat").exists() else "LOC_synset_mapping.txt")
    with pytest.raises(DataError, match=rf"^{file}: .*{said}"):
        find_classes(data / "train")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--workers", "0", "--progress", "off"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"alexnet: error: {file}: ") and "\n" not in err and not (tmp_path / "run").exists()


def test_a_meta_mat_of_a_subset_is_passed_over_with_a_warning(tmp_path):
    """A meta.mat without all of the IDs 1-1000 (as one made for a subset, which labels a flat val/)
    cannot rank the synsets: the folders keep their names, or Kaggle's file beside it names them."""
    data = subset(tmp_path / "d", [MADE_UP, MADE_UP + 1])
    write_meta(data / "meta.mat", WNIDS[:999])
    with pytest.warns(UserWarning, match=r"meta.mat: has 999 of the ILSVRC2012_IDs 1-1000, not all"):
        assert find_classes(data / "train")[1] == [WNIDS[MADE_UP], WNIDS[MADE_UP + 1]]
    write_mapping(data / "LOC_synset_mapping.txt")  # said once a process: not again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert find_classes(data / "train")[1] == [categories()[MADE_UP], categories()[MADE_UP + 1]]


def test_a_damaged_meta_mat_is_said_once_a_run(tmp_path):
    """train/ and val/ both read the meta.mat, and each image's decode resets Python's once-only
    registry: the warning was printed twice a run."""
    data = subset(tmp_path / "d", [MADE_UP, MADE_UP + 1])
    write_meta(data / "meta.mat", WNIDS[:999])
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--threads", "1",
                     "--workers", "0", "--progress", "off", "--model-option", "input_size=64"]) == 0
    assert [str(w.message).count("has 999 of the ILSVRC2012_IDs") for w in said].count(1) == 1


def test_a_meta_mat_without_scipy_is_passed_over_with_a_warning(tmp_path, monkeypatch):
    import importlib.util

    data = subset(tmp_path / "d", [MADE_UP, MADE_UP + 1])
    (data / "meta.mat").write_bytes(b"not read")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real(name, *a))
    with pytest.warns(UserWarning, match=r"meta.mat: reading the devkit's meta.mat needs scipy"):
        assert find_classes(data / "train")[1] == [WNIDS[MADE_UP], WNIDS[MADE_UP + 1]]
    write_mapping(data / "LOC_synset_mapping.txt")  # Kaggle's file is read instead, and the warning not said again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert find_classes(data / "train")[1] == [categories()[MADE_UP], categories()[MADE_UP + 1]]


TINY = ["--model", "alexnet_small", "--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32"]
QUIET = ["--workers", "0", "--progress", "off"]


def _top1(capsys, checkpoint: Path, data: Path) -> float:
    """``alexnet evaluate --json``'s top-1, with no warning that the classes are matched by number."""
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--json", *QUIET]) == 0
    out, err = capsys.readouterr()
    said = [str(w.message) for w in seen] + [err]
    assert not any("not those of" in line for line in said), said
    return json.loads(out)["top1"]


def test_a_run_trained_before_its_folders_were_named_still_resumes_evaluates_and_fine_tunes(tmp_path, capsys):
    """A run trained on an ImageNet subset before a mapping beside it named the folders saved their
    WNIDs: --resume refused the data ('its classes are not those ... trained on'), evaluate warned that
    it counted matching class numbers, and --init-from started fc8 afresh ('none of them is among the
    file's'). The figures with the mapping must be those without it."""
    indexes = [MADE_UP, MADE_UP + 1, MADE_UP + 2]
    data = subset(tmp_path / "d", indexes, per_class=4)
    wnids, names = [WNIDS[i] for i in indexes], [categories()[i] for i in indexes]
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", "--batch-size", "4", "--amp", "none",
                 *TINY, *QUIET]) == 0
    shutil.copy(run / "last.pt", tmp_path / "old.pt")
    assert torch.load(tmp_path / "old.pt", weights_only=False)["classes"] == wnids
    before = _top1(capsys, tmp_path / "old.pt", data)

    write_mapping(data / "LOC_synset_mapping.txt")
    assert find_classes(data / "train")[1] == names
    assert _top1(capsys, tmp_path / "old.pt", data) == before
    (result,) = predict(alexnet.load(tmp_path / "old.pt"), data / "val" / wnids[1] / "img0.jpg")
    assert result["label"] == wnids[1]
    assert main(["train", "--resume", str(run), "--epochs", "2", *QUIET]) == 0, capsys.readouterr().err
    assert torch.load(run / "last.pt", weights_only=False)["classes"] == wnids  # the run keeps its own names

    assert main(["train", "--data", str(data), "--out", str(tmp_path / "ft"), "--init-from", str(tmp_path / "old.pt"),
                 "--epochs", "1", "--batch-size", "4", "--amp", "none", "--freeze", "classifier", *QUIET]) == 0
    assert "re-initialised" not in capsys.readouterr().out
    tuned, old = (torch.load(p, weights_only=False)["model"] for p in (tmp_path / "ft" / "last.pt", tmp_path / "old.pt"))
    assert torch.equal(tuned["fc8.weight"], old["fc8.weight"]) and torch.equal(tuned["fc8.bias"], old["fc8.bias"])


def test_a_subset_scored_against_and_fine_tuned_from_torchvision_weights(tmp_path, capsys):
    """End to end: three Imagewoof synsets and a made-up one beside a Kaggle mapping, scored by a
    torchvision-format 1000-class .pth (fc8's rows of their indexes made class centroids, so that
    the right index is needed to score) against torchvision's own alexnet() in float64, and
    fine-tuned from it keeping exactly the rows of their indexes."""
    import torchvision

    from alexnet.data.folder import decode_image

    indexes = [SYNSETS["n02086240"][0], SYNSETS["n02088364"][0], SYNSETS["n02115641"][0], MADE_UP]  # 155, 162, 273, 300
    data = subset(tmp_path / "d", indexes, per_class=3)
    write_mapping(data / "LOC_synset_mapping.txt")
    files = [(f, c) for c, i in enumerate(indexes) for f in sorted((data / "val" / WNIDS[i]).iterdir())]
    # torchvision's ImageNet normalisation, by hand; the centre 224 of the shorter side resized to 256
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(3, 1, 1) * 255
    x = torch.stack([(decode_image(str(f), 256, 256)[:, 16:240, 16:240].double() - mean) / std for f, _ in files])
    torch.manual_seed(0)
    tv = torchvision.models.alexnet().eval()
    with torch.no_grad():
        fc7 = tv.double().classifier[:6](torch.flatten(tv.avgpool(tv.features(x)), 1))
        for c, i in enumerate(indexes):
            centroid = fc7[[k for k, (_, label) in enumerate(files) if label == c]].mean(0)
            tv.classifier[6].weight[i] = (centroid - fc7.mean(0)) / (centroid - fc7.mean(0)).norm() * 20
            tv.classifier[6].bias[i] = 10.0
    torch.save(tv.float().state_dict(), tmp_path / "tv.pth")
    with torch.no_grad():
        logits = tv.double()(x)
    top2 = logits.topk(2, dim=1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 1e-3  # no near tie that float32 could turn
    right = sum(int(logits[k].argmax()) == indexes[c] for k, (_, c) in enumerate(files))
    assert 0 < right  # by the true indexes: the folders' positions (0-3) would score none
    assert _top1(capsys, tmp_path / "tv.pth", data) == pytest.approx(right / len(files), abs=1e-9)
    # Each image's prediction too: confusion.csv's rows (true class) and columns (predicted), by name.
    assert main(["evaluate", "--checkpoint", str(tmp_path / "tv.pth"), "--data", str(data), "--out", str(tmp_path / "ev"),
                 *QUIET]) == 0
    expected = [[0] * (len(indexes) + 1) for _ in indexes]
    for k, (_, c) in enumerate(files):
        j = int(logits[k].argmax())
        expected[c][indexes.index(j) if j in indexes else -1] += 1
    names = [categories()[i] for i in indexes]
    rows = [line.split(",") for line in (tmp_path / "ev" / "confusion.csv").read_text().splitlines()]
    assert rows[0][1:] == [*names, "(another class)"] and [r[0] for r in rows[1:]] == names
    assert [[int(v) for v in r[1:]] for r in rows[1:]] == expected
    # predict names the true class of a photo in a synset folder as training does, by the same code
    k = next(k for k, (_, c) in enumerate(files) if c == 3)
    (result,) = predict(alexnet.load(tmp_path / "tv.pth"), files[k][0], top=1)
    assert result["label"] == categories()[MADE_UP] and result["top"][0]["index"] == int(logits[k].argmax())

    assert main(["train", "--data", str(data), "--out", str(tmp_path / "ft"), "--init-from", str(tmp_path / "tv.pth"),
                 "--epochs", "1", "--batch-size", "4", "--amp", "none", "--freeze", "classifier", *QUIET]) == 0
    assert "fc8: 4 of 4 classes keep their rows" in capsys.readouterr().out
    tuned, theirs = torch.load(tmp_path / "ft" / "last.pt", weights_only=False)["model"], torch.load(tmp_path / "tv.pth")
    assert torch.equal(tuned["fc8.weight"], theirs["classifier.6.weight"][indexes])
    assert torch.equal(tuned["fc8.bias"], theirs["classifier.6.bias"][indexes])


def test_the_1000_synsets_are_named_without_reading_the_devkit(tmp_path, monkeypatch):
    """All 1000 synset folders are torchvision's classes in sorted order whatever file lies beside
    them: a devkit meta.mat there was read anyway, and without scipy every command warned that it
    could not be. Names as the 1000-folder rule gives them (torchvision's categories), no warning."""
    import importlib.util

    from alexnet.data.folder import read_class_names

    (tmp_path / "train").mkdir()
    (tmp_path / "meta.mat").write_bytes(b"not read")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real(name, *a))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_class_names(tmp_path / "train", WNIDS) == categories()


def test_predict_says_in_one_line_that_a_damaged_mapping_leaves_the_true_class_unmarked(tmp_path, capsys):
    """train and evaluate refuse a damaged LOC_synset_mapping.txt beside the data; predict passed it
    over without a word, and the photos of the data's own folders lost their true class silently."""
    indexes = [MADE_UP, MADE_UP + 1]
    data = subset(tmp_path / "d", indexes)
    mapping = write_mapping(data / "LOC_synset_mapping.txt")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4",
                 "--amp", "none", *TINY, *QUIET]) == 0
    photo = data / "val" / WNIDS[indexes[1]] / "img0.jpg"
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(tmp_path / "run" / "last.pt"), str(photo), "--json", *QUIET]) == 0
    assert json.loads(capsys.readouterr().out)[0]["label"] == categories()[indexes[1]]
    mapping.write_text("".join(f"{w} x\n" for w in WNIDS[:999]), encoding="utf-8")  # a line lost
    from alexnet.predict import _sibling_classes

    _sibling_classes.cache_clear()  # the folder was read, intact, by the call above
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["predict", "--checkpoint", str(tmp_path / "run" / "last.pt"), str(photo), "--json", *QUIET]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)[0]["label"] is None
    lines = [str(w.message) for w in seen] + err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{mapping}: not the 1000 ILSVRC-2012 synsets"), lines
    assert "999 synsets, not 1000" in lines[0] and "not marked" in lines[0] and "\n" not in lines[0]


def test_a_run_named_by_a_mapping_resumes_on_its_folders_without_it(tmp_path, capsys):
    """A run trained while a Kaggle mapping named its synset folders saved the names: resumed on the
    same folders without the file (the data copied to a local disk without the mapping three folders
    above it) it was refused ('ladybug ... gone; n0... new'), though every output is the same folder's."""
    indexes = [MADE_UP, MADE_UP + 1, MADE_UP + 2]
    data = subset(tmp_path / "d", indexes, per_class=4)
    mapping = write_mapping(data / "LOC_synset_mapping.txt")
    names = [categories()[i] for i in indexes]
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", "--batch-size", "4", "--amp", "none",
                 *TINY, *QUIET]) == 0
    assert torch.load(run / "last.pt", weights_only=False)["classes"] == names
    mapping.unlink()
    assert find_classes(data / "train")[1] == [WNIDS[i] for i in indexes]  # the folders' own names now
    assert main(["train", "--resume", str(run), "--epochs", "2", *QUIET]) == 0, capsys.readouterr().err
    ckpt = torch.load(run / "last.pt", weights_only=False)
    assert ckpt["classes"] == names and ckpt["position"]["epoch"] == 2  # the run keeps its own names
    # Other folders are still other classes: one renamed is refused, in one line.
    (data / "train" / WNIDS[indexes[2]]).rename(data / "train" / "n09999999")
    (data / "val" / WNIDS[indexes[2]]).rename(data / "val" / "n09999999")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "3", *QUIET]) == 2
    err = capsys.readouterr().err.strip()
    assert "its classes are not those" in err and "\n" not in err


def test_a_run_named_by_a_classes_tsv_still_refuses_other_names_of_its_folders(tmp_path, capsys):
    """The recorded folders resume a run whose names no file gives now; a classes.tsv that names the
    same folders otherwise may mean other classes, and is still refused."""
    data = subset(tmp_path / "d", [MADE_UP, MADE_UP + 1])
    (data / "classes.tsv").write_text(f"{WNIDS[MADE_UP]}\tcat\n{WNIDS[MADE_UP + 1]}\tdog\n", encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", "--batch-size", "4", "--amp", "none",
                 *TINY, *QUIET]) == 0
    (data / "classes.tsv").write_text(f"{WNIDS[MADE_UP]}\tcar\n{WNIDS[MADE_UP + 1]}\tbus\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2", *QUIET]) == 2
    err = capsys.readouterr().err.strip()
    assert "its classes are not those" in err and "cat, dog gone; car, bus new" in err and "\n" not in err


def test_an_ensemble_of_a_run_trained_before_the_mapping_and_one_after(tmp_path, capsys):
    """Two runs on the same synset folders, one saved before a Kaggle mapping beside them named them
    (its classes: the WNIDs), one after (torchvision's names): evaluate scored each alone, but refused
    them together ('predicts other classes ... cannot ensemble them'). The ensemble's loss must be that
    of the two models' probabilities averaged by hand, in float64."""
    indexes = [MADE_UP, MADE_UP + 1, MADE_UP + 2]
    data = subset(tmp_path / "d", indexes, per_class=3)
    train = ["--data", str(data), "--epochs", "1", "--batch-size", "4", "--amp", "none", *TINY, *QUIET]
    assert main(["train", *train, "--out", str(tmp_path / "a"), "--seed", "1"]) == 0
    write_mapping(data / "LOC_synset_mapping.txt")
    assert main(["train", *train, "--out", str(tmp_path / "b"), "--seed", "2"]) == 0
    a, b = (str(tmp_path / r / "last.pt") for r in "ab")
    assert torch.load(a, weights_only=False)["classes"] == [WNIDS[i] for i in indexes]
    assert torch.load(b, weights_only=False)["classes"] == [categories()[i] for i in indexes]
    files = [(f, c) for c, i in enumerate(indexes) for f in sorted((data / "val" / WNIDS[i]).iterdir())]
    probs = []
    for ckpt in (a, b):  # each model alone, its probabilities by its own class order (both the folders')
        results = predict(alexnet.load(ckpt), [f for f, _ in files], top=3)
        probs.append([{t["index"]: t["probability"] for t in r["top"]} for r in results])
    expected = -np.mean([np.log((probs[0][k][c] + probs[1][k][c]) / 2) for k, (_, c) in enumerate(files)], dtype=np.float64)
    alone = [-np.mean([np.log(p[k][c]) for k, (_, c) in enumerate(files)]) for p in probs]
    assert min(abs(x - expected) for x in alone) > 2e-5  # the loss of either model alone is told apart
    for first, other in ((a, b), (b, a)):
        capsys.readouterr()
        assert main(["evaluate", "--checkpoint", first, "--ensemble", other, "--data", str(data), "--json", "--amp", "none",
                     "--no-channels-last", *QUIET]) == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(expected, abs=1e-6)


def test_config_json_records_where_the_class_names_came_from(tmp_path, capsys):
    """A run's class names may come from a file folders above its data (Kaggle's mapping three up), a
    classes.tsv, or the folders: config.json named none of them, so a run whose names differ from
    another's (or from the data's today) could not be told why."""
    indexes = [MADE_UP, MADE_UP + 1]
    root = tmp_path / "CHALLENGE" / "ILSVRC" / "Data" / "CLS-LOC"
    data = subset(root, indexes)
    train = ["--data", str(data), "--epochs", "1", "--batch-size", "4", "--amp", "none", *TINY, *QUIET]

    def recorded(run: str) -> tuple[list[str], str | None]:
        assert main(["train", *train, "--out", str(tmp_path / run)]) == 0, capsys.readouterr().err
        record = json.loads((tmp_path / run / "config.json").read_text())["data"]
        return record["classes"], record.get("class_names_from")

    assert recorded("folders") == ([WNIDS[i] for i in indexes], "the class folder names")
    mapping = write_mapping(tmp_path / "CHALLENGE" / "LOC_synset_mapping.txt")
    assert recorded("mapping") == ([categories()[i] for i in indexes], f"{mapping} (by torchvision's ImageNet-1k categories)")
    (data / "classes.tsv").write_text(f"{WNIDS[indexes[0]]}\tmine\n", encoding="utf-8")
    assert recorded("tsv") == (["mine", WNIDS[indexes[1]]], str(data / "classes.tsv"))
    # A resume that keeps the run's names (its mapping gone since) keeps their source too.
    mapping.unlink()
    (data / "classes.tsv").unlink()
    assert main(["train", "--resume", str(tmp_path / "mapping"), "--epochs", "2", *QUIET]) == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "mapping" / "config.json").read_text())
    assert record["train"]["epochs"] == 2 and record["data"]["class_names_from"].startswith(f"{mapping} ")


def test_synset_folders_that_the_mapping_does_not_all_list_are_said_once(tmp_path, capsys):
    """An ImageNet-21k synset among ImageNet-1k ones: the mapping beside them cannot name them all, and
    all of them kept their WNIDs without a word (as if no file had been found), which also left
    --init-from torchvision's weights no class to keep its fc8 row by."""
    data = subset(tmp_path / "d", [MADE_UP, MADE_UP + 1, MADE_UP + 2])
    for split in ("train", "val"):
        (data / split / WNIDS[MADE_UP + 2]).rename(data / split / "n09999999")  # none of the mapping's (made up)
    folders = [WNIDS[MADE_UP], WNIDS[MADE_UP + 1], "n09999999"]
    mapping = write_mapping(data / "LOC_synset_mapping.txt")
    assert "n09999999" not in WNIDS
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4",
                     "--amp", "none", *TINY, *QUIET]) == 0
    said = [str(w.message) for w in seen if "synset folders" in str(w.message)]
    assert said == [f"{mapping}: lists 2 of the 3 synset folders ('n09999999' is none of its 1000 ILSVRC-2012 synsets), "
                    "so the classes keep their folder names; a classes.tsv names them otherwise"], said
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["classes"] == folders
    # All of them listed (or no file at all): nothing to say.
    for split in ("train", "val"):
        shutil.rmtree(data / split / "n09999999")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert find_classes(data / "train")[1] == [categories()[MADE_UP], categories()[MADE_UP + 1]]


def test_a_run_named_by_a_mapping_is_scored_on_some_of_its_folders_without_it(tmp_path, capsys):
    """A run whose synset folders a mapping named, scored on two of its three folders copied without
    the mapping: evaluate refused ('has 2 classes but ... predicts 3; 'n0...' is not among its
    classes'), though its checkpoint says which folder each output is. The loss must be that of the
    model's probabilities of each image's own folder's output, by hand in float64."""
    indexes = [MADE_UP, MADE_UP + 1, MADE_UP + 2]
    data = subset(tmp_path / "d", indexes, per_class=3)
    write_mapping(data / "LOC_synset_mapping.txt")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4",
                 "--amp", "none", *TINY, *QUIET]) == 0
    ckpt = tmp_path / "run" / "last.pt"
    assert torch.load(ckpt, weights_only=False)["classes"] == [categories()[i] for i in indexes]
    some = tmp_path / "some"  # folders 0 and 2 of the run's, outputs 0 and 2 (its folders are sorted WNIDs)
    for k in (0, 2):
        shutil.copytree(data / "val" / WNIDS[indexes[k]], some / WNIDS[indexes[k]])
    files = [(f, k) for k in (0, 2) for f in sorted((some / WNIDS[indexes[k]]).iterdir())]
    results = predict(alexnet.load(ckpt), [f for f, _ in files], top=3)
    probs = [{t["index"]: t["probability"] for t in r["top"]} for r in results]
    expected = -np.mean([np.log(p[k]) for p, (_, k) in zip(probs, files)], dtype=np.float64)
    top1 = np.mean([max(p, key=p.get) == k for p, (_, k) in zip(probs, files)])
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(some), "--json", "--amp", "none", "--no-channels-last",
                 *QUIET]) == 0, capsys.readouterr().err
    got = json.loads(capsys.readouterr().out)
    assert got["loss"] == pytest.approx(expected, abs=1e-6) and got["top1"] == pytest.approx(top1, abs=1e-12)
    assert got["images"] == len(files) == 6


def test_a_run_named_by_a_mapping_fine_tunes_on_its_folders_without_it(tmp_path, capsys):
    """--init-from a run whose synset folders a mapping named, on those folders without the file:
    'fc8 re-initialised for 3 classes (none of them is among the file's)', though its checkpoint says
    which folder each output is. With fc8 frozen, its rows must be the file's, exactly."""
    indexes = [MADE_UP, MADE_UP + 1, MADE_UP + 2]
    data = subset(tmp_path / "d", indexes)
    mapping = write_mapping(data / "LOC_synset_mapping.txt")
    train = ["--data", str(data), "--epochs", "1", "--batch-size", "4", "--amp", "none", *QUIET]
    assert main(["train", *train, "--out", str(tmp_path / "run"), *TINY]) == 0
    mapping.unlink()
    capsys.readouterr()
    assert main(["train", *train, "--out", str(tmp_path / "ft"), "--init-from", str(tmp_path / "run" / "last.pt"),
                 "--freeze", "classifier"]) == 0
    assert "re-initialised" not in capsys.readouterr().out
    tuned, old = (torch.load(tmp_path / r / "last.pt", weights_only=False) for r in ("ft", "run"))
    assert tuned["classes"] == [WNIDS[i] for i in indexes] and old["classes"] == [categories()[i] for i in indexes]
    assert torch.equal(tuned["model"]["fc8.weight"], old["model"]["fc8.weight"])
    assert torch.equal(tuned["model"]["fc8.bias"], old["model"]["fc8.bias"])


def test_a_classes_tsv_naming_a_runs_folders_otherwise_is_not_matched_by_folder(tmp_path, capsys):
    """evaluate and --init-from match a run's class by its recorded folder only where the data names
    that folder by itself: another name from a classes.tsv may be another class (as before: a warning
    that the accuracy counts matching class numbers, fc8 afresh)."""
    data = subset(tmp_path / "d", [MADE_UP, MADE_UP + 1])
    (data / "classes.tsv").write_text(f"{WNIDS[MADE_UP]}\tcat\n{WNIDS[MADE_UP + 1]}\tdog\n", encoding="utf-8")
    train = ["--data", str(data), "--epochs", "1", "--batch-size", "4", "--amp", "none", *QUIET]
    assert main(["train", *train, "--out", str(tmp_path / "run"), *TINY]) == 0
    (data / "classes.tsv").write_text(f"{WNIDS[MADE_UP]}\tcar\n{WNIDS[MADE_UP + 1]}\tbus\n", encoding="utf-8")
    capsys.readouterr()
    with pytest.warns(UserWarning, match=r"class 0 is 'car' there, 'cat' in the checkpoint"):
        assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--data", str(data), *QUIET]) == 0
    assert main(["train", *train, "--out", str(tmp_path / "ft"), "--init-from", str(tmp_path / "run" / "last.pt")]) == 0
    assert "fc8 re-initialised for 2 classes" in capsys.readouterr().out


def test_an_export_keeps_the_class_folders_evaluate_matches(tmp_path, capsys):
    """A run named by a mapping, exported (safetensors + .json): the export lost the checkpoint's
    class folders, so evaluate of it on two of the synset folders copied without the mapping was
    refused where the .pt was scored. The export's scores must be the .pt's, by hand in float64."""
    indexes = [MADE_UP, MADE_UP + 1, MADE_UP + 2]
    data = subset(tmp_path / "d", indexes, per_class=2)
    write_mapping(data / "LOC_synset_mapping.txt")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4",
                 "--amp", "none", "--threads", "1", *TINY, *QUIET]) == 0
    out = tmp_path / "m.safetensors"
    assert main(["export", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--out", str(out)]) == 0
    folders = [WNIDS[i] for i in indexes]
    assert json.loads(out.with_suffix(".json").read_text())["folders"] == folders
    assert alexnet.load(out).folders == folders and alexnet.load(out).classes == [categories()[i] for i in indexes]
    some = tmp_path / "some"
    for k in (0, 2):
        shutil.copytree(data / "val" / folders[k], some / folders[k])
    files = [(f, k) for k in (0, 2) for f in sorted((some / folders[k]).iterdir())]
    probs = [{t["index"]: t["probability"] for t in r["top"]} for r in predict(alexnet.load(out), [f for f, _ in files], top=3)]
    expected = -np.mean([np.log(p[k]) for p, (_, k) in zip(probs, files)], dtype=np.float64)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(some), "--json", "--amp", "none",
                 "--no-channels-last", *QUIET]) == 0, capsys.readouterr().err
    got = json.loads(capsys.readouterr().out)
    assert got["images"] == 4 and got["loss"] == pytest.approx(expected, abs=1e-6)


def test_predict_marks_the_true_class_of_synset_folders_copied_without_the_mapping(tmp_path, capsys):
    """A run named by a mapping, predicting its val/ copied without the mapping: each image's true
    class was None, though the checkpoint says which folder each output trained on. Expected by
    construction: folder WNIDS[i] is torchvision's class i."""
    indexes = [MADE_UP, MADE_UP + 1]
    data = subset(tmp_path / "d", indexes)
    write_mapping(data / "LOC_synset_mapping.txt")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--threads", "1",
                 *TINY, *QUIET]) == 0
    shutil.copytree(data / "val", tmp_path / "some")
    (tmp_path / "some" / "other").mkdir()  # a folder the model never trained on marks nothing
    shutil.copy(next((data / "val" / WNIDS[MADE_UP]).iterdir()), tmp_path / "some" / "other" / "x.jpg")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "some"), "--checkpoint", str(tmp_path / "run" / "last.pt"), "--json", *QUIET]) == 0
    got = {Path(r["path"]).parent.name: r["label"] for r in json.loads(capsys.readouterr().out)}
    assert got == {WNIDS[i]: categories()[i] for i in indexes} | {"other": None}


def test_an_ensemble_of_a_run_named_by_a_mapping_and_one_named_by_wnids_without_the_mapping(tmp_path, capsys):
    """One run trained before a mapping named the synset folders (classes: WNIDs), one after (torchvision's
    names), scored together on the folders copied without the mapping: refused in both orders ('predicts
    other classes'). The loss must be that of the two models' probabilities averaged, in float64."""
    indexes = [MADE_UP, MADE_UP + 1, MADE_UP + 2]
    data = subset(tmp_path / "d", indexes)
    runs = {}
    for name, seed in (("wnid", "1"), ("named", "0")):
        if name == "named":
            write_mapping(data / "LOC_synset_mapping.txt")
        assert main(["train", "--data", str(data), "--out", str(tmp_path / name), "--epochs", "1", "--seed", seed,
                     "--amp", "none", "--threads", "1", *TINY, *QUIET]) == 0
        runs[name] = tmp_path / name / "last.pt"
    assert alexnet.load(runs["wnid"]).classes == [WNIDS[i] for i in indexes] != alexnet.load(runs["named"]).classes
    shutil.copytree(data / "val", tmp_path / "some")
    files = [(f, k) for k, i in enumerate(indexes) for f in sorted((tmp_path / "some" / WNIDS[i]).iterdir())]
    probs = [[{t["index"]: t["probability"] for t in r["top"]} for r in predict(alexnet.load(p), [f for f, _ in files], top=3)]
             for p in runs.values()]
    mean = [{c: (a[c] + b[c]) / 2 for c in range(3)} for a, b in zip(*probs)]
    expected = -np.mean([np.log(p[k]) for p, (_, k) in zip(mean, files)], dtype=np.float64)
    top1 = np.mean([max(p, key=p.get) == k for p, (_, k) in zip(mean, files)])
    for first, other in (("named", "wnid"), ("wnid", "named")):
        capsys.readouterr()
        assert main(["evaluate", "--checkpoint", str(runs[first]), "--ensemble", str(runs[other]), "--data",
                     str(tmp_path / "some"), "--json", "--amp", "none", "--no-channels-last", *QUIET]) == 0, capsys.readouterr().err
        got = json.loads(capsys.readouterr().out)
        assert got["images"] == 6 and got["loss"] == pytest.approx(expected, abs=1e-6), first
        assert got["top1"] == pytest.approx(top1, abs=1e-12), first
