"""Hostile and broken input (issue 11, item 5): each case ends with one line on stderr naming the
file or argument and a non-zero exit, never a traceback, an "internal error", a hang or code run."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, cli_env, fail_checkpoint_write, make_fmnist, make_image_folder, make_tiny_fmnist, run_cli, run_cli_with_memory
from test_evaluate import tiny_checkpoint

from alexnet.checkpoint import MAX_PARAMETERS, save_atomic
from alexnet.cli import main
from alexnet.data.cifar import load_cifar
from alexnet.data.folder import _image_files, read_image_bytes
from alexnet.errors import ConfigError, TrainingError
from alexnet.model import AlexNet, AlexNetConfig, count_parameters, list_models, model_config

QUICK = ["--epochs", "1", "--batch-size", "8", "--workers", "0", "--amp", "none", "--device", "cpu", "--progress", "off"]


@pytest.fixture(autouse=True)
def _plain_malloc(monkeypatch):
    monkeypatch.setenv("ALEXNET_MALLOC", "system")  # in-process commands leave this process's malloc alone


def fails(capsys, *args: str) -> str:
    """Run ``alexnet ARGS`` in-process: it must exit non-zero with exactly one line on stderr (returned)."""
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as e:  # argparse's errors
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code not in (0, None), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "internal error" not in err, err
    return err


# -- 1. CIFAR batches are unpickled without running code --------------------------------------------
def _cifar_folder(root: Path, batch=None) -> Path:
    """cifar-10-batches-py as Python 3 would pickle it (bytes keys and names, protocol 2)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        real = {b"batch_label": b"training batch", b"labels": [0, 1, 2, 1],
                b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"filenames": [b"a.png"] * 4}
        (folder / name).write_bytes(pickle.dumps(real, protocol=2))
    meta = {b"label_names": [b"airplane", b"automobile", b"bird"], b"num_cases_per_batch": 4, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def test_cifar_batch_in_the_real_format_still_loads(tmp_path):
    _cifar_folder(tmp_path)
    x, y, names = load_cifar(tmp_path, "train")
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8 and y.tolist() == [0, 1, 2, 1] * 5
    assert names == ["airplane", "automobile", "bird"]


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar_batch_that_would_run_code_is_refused(tmp_path, capsys):
    folder = _cifar_folder(tmp_path / "data")
    marker = tmp_path / "pwned"
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": _RunsCode(marker), b"labels": [0]}, protocol=2))
    err = fails(capsys, "train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), *QUICK)
    assert "data_batch_1" in err and "refused to unpickle" in err and "system" in err
    assert not marker.exists()


class _BigBytes:
    def __reduce__(self):
        return (bytes, (10**12,))  # a terabyte allocation, not code: refused all the same


def test_unpickler_builds_empty_bytes_but_not_a_bytes_bomb():
    import io

    from alexnet.unpickle import load_plain

    plain = {b"filenames": [b""], b"data": np.zeros((0, 3072), np.uint8)}  # an empty batch, as Python 3 pickles it
    back = load_plain(io.BytesIO(pickle.dumps(plain, protocol=2)))
    assert back[b"filenames"] == [b""] and back[b"data"].shape == (0, 3072)
    with pytest.raises(pickle.UnpicklingError, match="bytes"):
        load_plain(io.BytesIO(pickle.dumps(_BigBytes(), protocol=2)))


# -- 2. Only regular files, of a bounded size, are read from data folders ---------------------------
def _folder_with_traps(root: Path) -> Path:
    make_image_folder(root, classes=3, per_class=3)
    os.mkfifo(root / "class0" / "x.jpg")  # open() blocks until a writer comes: never
    (root / "class1" / "zero.jpg").symlink_to("/dev/zero")  # reads forever
    (root / "class2" / "link.jpg").symlink_to(root / "class2" / "img0.jpg")  # fine: a regular file
    return root


def test_listing_skips_fifos_and_devices_but_keeps_links_to_files(tmp_path):
    root = _folder_with_traps(tmp_path / "imgs")
    names = [Path(f).name for f in _image_files(root)]
    assert "x.jpg" not in names and "zero.jpg" not in names and "link.jpg" in names and len(names) == 10
    with pytest.raises(ValueError, match="not a regular file"):  # opened non-blocking: no hang
        read_image_bytes(root / "class0" / "x.jpg")


def test_a_link_to_a_photo_that_is_gone_is_reported_not_left_out_silently(tmp_path, capsys):
    """Photos linked in from a drive since unmounted: the links were left out of the listing without a
    word (a class of nothing but such links was 'class folder has no images', beside 8 files in ls).
    Each is now an unreadable image: a warning, a line in bad_files.txt, and the run goes on."""
    root = make_image_folder(tmp_path / "imgs", classes=2, per_class=4)
    (root / "class1" / "gone.jpg").symlink_to(tmp_path / "unmounted" / "gone.jpg")
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "run"), *TINY, *QUICK]) == 0
    gone = str(root / "class1" / "gone.jpg")
    assert f"warning: skipping unreadable image {gone}: FileNotFoundError" in capsys.readouterr().err
    assert (tmp_path / "run" / "bad_files.txt").read_text().startswith(f"{gone}\tFileNotFoundError")


def test_linked_folders_are_entered_once_as_training_enters_them(tmp_path):
    """A subset made of links to class folders: predict and features found no images in it, while
    train and evaluate took it (torchvision's ImageFolder follows links too); a link back to an
    ancestor is entered once, not forever."""
    from alexnet.data.folder import find_classes, list_images
    from alexnet.predict import image_paths

    make_image_folder(tmp_path / "all", classes=3, per_class=2)
    subset = tmp_path / "subset"
    subset.mkdir()
    for c in ("class0", "class2"):
        (subset / c).symlink_to(tmp_path / "all" / c, target_is_directory=True)
    (subset / "class0" / "deeper").mkdir()
    (subset / "class0" / "deeper" / "up").symlink_to(tmp_path / "all" / "class0", target_is_directory=True)  # a loop
    (subset / "class2" / "broken").symlink_to(tmp_path / "nowhere", target_is_directory=True)
    trained_on = [Path(f).relative_to(subset) for f, _ in list_images(subset, find_classes(subset)[0])]
    predicted = [p.relative_to(subset) for p in image_paths(subset)]
    assert predicted == trained_on == [Path(c, f"img{i}.jpg") for c in ("class0", "class2") for i in range(2)]
    # Links to folders that hold a class folder, as named or where it really is: they filed every
    # other class's images under this one (class0's under class2). Not followed, each said once.
    (subset / "class2" / "data").symlink_to(subset, target_is_directory=True)
    (subset / "class0" / "deeper" / "all").symlink_to(tmp_path / "all", target_is_directory=True)
    with pytest.warns(UserWarning) as said:
        assert list_images(subset, find_classes(subset)[0]) == [(str(subset / f), int(f.parts[0] == "class2")) for f in trained_on]
    assert sorted(str(w.message) for w in said) == [
        f"{subset / 'class0' / 'deeper' / 'all'}: a link to {tmp_path / 'all'}, which holds the folder {subset / 'class0'}; not followed",
        f"{subset / 'class2' / 'data'}: a link to {subset}, which holds the folder {subset / 'class2'}; not followed"]


def test_hidden_files_are_not_listed_by_any_command(tmp_path):
    """macOS writes "._NAME" metadata beside each photo copied to a FAT or network drive: every one
    was a warning and a bad_files.txt line, in train, evaluate, predict, features and prepare."""
    from alexnet.data.folder import find_classes, list_images, top_level_images
    from alexnet.predict import image_paths
    from alexnet.retrieval import _index_samples

    root = make_image_folder(tmp_path / "imgs", classes=2, per_class=2)
    for c in ("class0", "class1"):
        (root / c / "._img0.jpg").write_bytes(b"\x00\x05\x16\x07" + b"\0" * 80)  # AppleDouble's magic
        shutil.copy(root / c / "img0.jpg", root / c / ".hidden.jpg")  # readable, but hidden
    shutil.copy(root / "class0" / "img0.jpg", root / "._top.jpg")
    expect = [Path(c, f"img{i}.jpg") for c in ("class0", "class1") for i in range(2)]
    assert [Path(f).relative_to(root) for f, _ in list_images(root, find_classes(root)[0])] == expect
    assert [p.relative_to(root) for p in image_paths(root)] == expect
    assert [Path(f).relative_to(root) for f, _ in _index_samples(root)[0]] == expect
    assert top_level_images(root) == []


def _macos_zip_metadata(root: Path) -> None:
    """What unpacking a zip made on macOS adds: __MACOSX/ of "._" files mirroring the tree."""
    for c in ("class0", "class1"):
        (root / "__MACOSX" / c).mkdir(parents=True)
        (root / "__MACOSX" / c / "._img0.jpg").write_bytes(b"\x00\x05\x16\x07" + b"\0" * 80)
    (root / "__MACOSX" / "._class0").write_bytes(b"\x00\x05\x16\x07")


def test_a_macos_zips_metadata_folder_is_no_class(tmp_path):
    """__MACOSX/ (at the data root and in train/ and val/) was a class: train stopped with
    '__MACOSX: class folder has no images', and predict, prepare and features saw a third class."""
    from alexnet.data.folder import find_classes
    from alexnet.data.packed import prepare
    from alexnet.predict import _sibling_classes
    from alexnet.retrieval import _index_samples

    flat = make_image_folder(tmp_path / "flat", classes=2, per_class=4)
    _macos_zip_metadata(flat)
    assert find_classes(flat) == (["class0", "class1"], ["class0", "class1"])
    assert _sibling_classes(str(flat))[0] == ["class0", "class1"]
    assert sorted({label for _, label in _index_samples(flat)[0]}) == [0, 1]
    assert prepare(flat, tmp_path / "packed", size=40)["classes"] == ["class0", "class1"]
    split = tmp_path / "split"
    for name in ("train", "val"):
        make_image_folder(split / name, classes=2, per_class=4)
        _macos_zip_metadata(split / name)
    _macos_zip_metadata(split)
    r = run_cli("train", "--data", str(split), "--out", str(tmp_path / "run"), *TINY, *QUICK, "--model-option", "input_size=64")
    assert r.returncode == 0, r.stderr
    assert "2 classes" in r.stdout and "__MACOSX" not in r.stdout + r.stderr


def test_a_synology_nas_thumbnail_folder_is_no_class_and_no_photos(tmp_path):
    """A photo folder copied off a Synology NAS (rsync, a USB backup) has an @eaDir in every folder,
    with JPEG thumbnails of each photo: at the top it was a class ('@eaDir: class folder has no images'
    stopped train and prepare), in a class folder its thumbnails were trained and indexed as more photos."""
    from alexnet.data.folder import find_classes, list_images
    from alexnet.predict import image_paths
    from alexnet.retrieval import _index_samples

    root = make_image_folder(tmp_path / "flat", classes=2, per_class=2)
    for folder in (root, root / "class0", root / "class1"):
        for img in [p.name for p in folder.glob("*.jpg")] or ["class0"]:
            (folder / "@eaDir" / img).mkdir(parents=True)
            shutil.copy(root / "class0" / "img0.jpg", folder / "@eaDir" / img / "SYNOPHOTO_THUMB_M.jpg")
    photos = sorted(str(p) for p in root.glob("class*/img*.jpg"))
    assert find_classes(root) == (["class0", "class1"], ["class0", "class1"])
    assert [f for f, _ in list_images(root, ["class0", "class1"])] == photos
    assert sorted(map(str, image_paths(root))) == photos
    assert sorted(f for f, _ in _index_samples(root)[0]) == photos


def test_file_names_that_are_not_utf8_are_kept_as_their_bytes(tmp_path):
    """A Latin-1 archive unpacked on Linux: train failed writing bad_files.txt, prepare its file list,
    and predict printing under a UTF-8 locale (whose stdout is strict); the figures could not draw
    the class name. Paths are now written and printed as their bytes, class names as \\xNN."""
    root = make_image_folder(tmp_path / "imgs", classes=2, per_class=4)
    os.rename(root / "class1", os.fsencode(root) + b"/c\xe9")  # the folder name in Latin-1
    os.rename(os.fsencode(root) + b"/class0/img0.jpg", os.fsencode(root) + b"/class0/caf\xe9.jpg")
    Path(os.fsdecode(os.fsencode(root) + b"/class0/bad\xe9.jpg")).write_bytes(b"junk")
    env = cli_env(PYTHONIOENCODING="utf-8:strict")

    def cli(*args: str) -> bytes:
        r = subprocess.run([sys.executable, "-m", "alexnet", *args], capture_output=True, env=env, timeout=300)
        assert r.returncode == 0 and b"Traceback" not in r.stderr and b"internal error" not in r.stderr, r.stderr.decode(errors="replace")
        return r.stdout

    cli("train", "--data", str(root), "--out", str(tmp_path / "run"), *TINY, *QUICK)
    assert b"/class0/bad\xe9.jpg\tUnidentifiedImageError" in (tmp_path / "run" / "bad_files.txt").read_bytes()
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True, map_location="cpu")
    assert ckpt["classes"] == ["class0", "c\\xe9"], ckpt["classes"]
    out = cli("predict", str(root), "--checkpoint", str(tmp_path / "run" / "last.pt"), "--figure", str(tmp_path / "p.png"))
    assert b"/class0/caf\xe9.jpg  (true: class0)" in out and b"c\\xe9" in out
    cli("prepare", "--data", str(root), "--out", str(tmp_path / "packed"), "--size", "40")
    assert b"/class0/caf\xe9.jpg\n" in (tmp_path / "packed" / "train-files.txt").read_bytes()


@pytest.mark.parametrize("locale", [{"PYTHONIOENCODING": "latin-1"}, {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}])
def test_names_that_the_locale_cannot_encode_are_printed_escaped(tmp_path, locale):
    """Under a locale that is not UTF-8 (LANG=en_US.ISO-8859-1; LC_ALL=C with PYTHONUTF8=0; Windows's
    cp1252 when the output is redirected) predict of a photo in a class folder named 日本 stopped with
    'internal error: UnicodeEncodeError' and printed nothing. A character the locale lacks is now
    printed as \\uXXXX; a path's bytes that the locale cannot decode, as those bytes (as before)."""
    root = make_image_folder(tmp_path / "imgs", classes=2, per_class=1)
    os.rename(root / "class1", root / "日本 犬")
    ckpt = torch.load(tiny_checkpoint(tmp_path / "m.pt", classes=2), weights_only=True)
    save_atomic({**ckpt, "classes": ["class0", "日本 犬"]}, tmp_path / "m.pt")
    r = subprocess.run([sys.executable, "-m", "alexnet", "predict", str(root), "--checkpoint", str(tmp_path / "m.pt"),
                        "--device", "cpu"], capture_output=True, env=cli_env(**locale), timeout=300)
    assert r.returncode == 0 and not r.stderr, r.stderr.decode(errors="replace")
    folder = "日本 犬".encode() if "LC_ALL" in locale else b"\\u65e5\\u672c \\u72ac"  # bytes the C locale could not decode
    assert b"/" + folder + b"/img0.jpg  (true: \\u65e5\\u672c \\u72ac)" in r.stdout, r.stdout.decode(errors="replace")


def test_names_with_escape_sequences_reach_the_terminal_escaped(tmp_path, capsys):
    """Class and file names are printed by predict, retrieve, warnings and errors: ESC[2J in one
    cleared the user's terminal, ESC]0;...BEL retitled it, a newline started a line of its own."""
    red, two = "\x1b[31mred\x1b[0m", "two\nlines"
    ckpt = torch.load(tiny_checkpoint(tmp_path / "c.pt", classes=2), weights_only=True)
    ckpt["classes"] = [red, two]
    save_atomic(ckpt, tmp_path / "c.pt")
    data = make_image_folder(tmp_path / "imgs", classes=2, per_class=1)
    (data / "class0").rename(data / red)
    (data / red / "\x1b]0;pwned\x07.jpg").write_bytes(b"not a jpeg")
    assert main(["predict", "--checkpoint", str(tmp_path / "c.pt"), str(data / red / "img0.jpg"),
                 str(data / red / "\x1b]0;pwned\x07.jpg"), "--progress", "off", "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err and "\x07" not in err and "two\n" not in out
    assert "\\x1b[31mred\\x1b[0m/img0.jpg  (true: \\x1b[31mred\\x1b[0m)" in out and "two\\x0alines" in out
    assert "warning: skipping" in err and "\\x1b]0;pwned\\x07.jpg: cannot read" in err
    err = fails(capsys, "evaluate", "--checkpoint", str(tmp_path / "\x1b[2Jgone.pt"))
    assert "\x1b" not in err and "\\x1b[2Jgone.pt" in err


def test_image_bytes_are_capped(tmp_path, monkeypatch):
    import alexnet.data.folder as folder

    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 2000)
    monkeypatch.setattr(folder, "MAX_IMAGE_BYTES", 1000)
    with pytest.raises(ValueError, match="the limit for one image"):
        read_image_bytes(big)


@pytest.mark.parametrize("command", ["train", "prepare", "evaluate"])
def test_fifo_and_dev_zero_in_a_data_folder_do_not_hang(tmp_path, command):
    root = _folder_with_traps(tmp_path / "imgs")
    args = {
        "train": ["train", "--data", str(root), "--out", str(tmp_path / "run"), *TINY, *QUICK],
        "prepare": ["prepare", "--data", str(root), "--out", str(tmp_path / "packed"), "--size", "32"],
        "evaluate": ["evaluate", "--checkpoint", str(tiny_checkpoint(tmp_path / "m.pt")), "--data", str(root)],
    }[command]
    r = run_cli(*args, timeout=240)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr


def test_an_output_folder_inside_the_images_it_reads_is_refused(tmp_path, capsys):
    """A run or packed folder inside a CLASS/IMAGE tree would be read as a class (or its figures as
    images of one) by this run or the next; beside train/ and val/ it is not read, and is allowed."""
    flat = make_image_folder(tmp_path / "flat")
    for out in (flat / "run", flat / "class0" / "run"):
        err = fails(capsys, "train", "--data", str(flat), "--out", str(out), *TINY, *QUICK)
        assert f"--out {out} is inside --data" in err and not out.exists()
    err = fails(capsys, "prepare", "--data", str(flat), "--out", str(flat / "packed"), "--size", "32")
    assert "is inside --data" in err and not (flat / "packed").exists()
    (tmp_path / "file").write_text("x")
    assert "--out: not a folder" in fails(capsys, "prepare", "--data", str(flat), "--out", str(tmp_path / "file"))
    under = tmp_path / "file" / "packed"  # it said 'Not a directory (...)', exit 1, naming no option
    assert fails(capsys, "prepare", "--data", str(flat), "--out", str(under)) == (
        f"alexnet: error: --out {under}: cannot write there: {tmp_path / 'file'} is a file, not a folder")
    split = tmp_path / "split"
    make_image_folder(split / "train"), make_image_folder(split / "val")
    assert main(["prepare", "--data", str(split), "--out", str(split / "packed"), "--size", "32", "--progress", "off"]) == 0


def test_a_planted_link_as_the_list_of_unreadable_images_is_not_followed(tmp_path, capsys):
    """bad_files.txt is appended to, and --out accepts a folder holding only it: a link there
    (planted, or copied with a run folder) had the unreadable image's line appended to its target."""
    data = make_image_folder(tmp_path / "imgs", classes=2, per_class=4)
    (data / "class0" / "broken.jpg").write_bytes(b"not a jpeg")
    victim = tmp_path / "bashrc"
    victim.write_text("mine\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "bad_files.txt").symlink_to(victim)
    err = fails(capsys, "train", "--data", str(data), "--out", str(tmp_path / "run"), *TINY, *QUICK, "--threads", "1")
    assert err == f"alexnet: error: {tmp_path / 'run' / 'bad_files.txt'}: a symbolic link, not a list of unreadable images: " \
                  "not followed (remove it)"
    assert victim.read_text() == "mine\n"


def test_a_run_folder_given_as_a_checkpoint_names_its_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    assert fails(capsys, "evaluate", "--checkpoint", str(run)) == f"alexnet: error: {run} is a folder, not a checkpoint file"
    tiny_checkpoint(run / "best.pt"), tiny_checkpoint(run / "last.pt")
    for command in (["evaluate", "--checkpoint", str(run)], ["predict", str(run), "--checkpoint", str(run)]):
        err = fails(capsys, *command)
        assert err.endswith(f"{run} is a folder: give one of its checkpoints, {run / 'best.pt'} or {run / 'last.pt'}"), err


# -- 3. predict: a decompression bomb is one bad file among good ones -------------------------------
def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height pixels (PIL refuses or warns before decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def test_predict_skips_a_decompression_bomb_and_predicts_the_rest(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "imgs", classes=3, per_class=1)
    bomb = _png_claiming(folder / "class0" / "bomb.png", 10_000, 10_000)  # 1e8 pixels: PIL only warns
    (folder / "class1" / "junk.jpg").write_bytes(b"not an image")
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    capsys.readouterr()
    assert main(["predict", str(folder), "--checkpoint", str(ckpt), "--json"]) == 0
    out, err = capsys.readouterr()
    assert sorted(Path(r["path"]).name for r in json.loads(out)) == ["img0.jpg"] * 3
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "internal error" not in err, err
    assert str(bomb) in lines[0] and "DecompressionBomb" in lines[0] and "junk.jpg" in lines[1]


def test_predict_with_no_readable_image_fails_with_one_line(tmp_path, capsys):
    bomb = _png_claiming(tmp_path / "bomb.png", 10_000, 10_000)
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    assert str(bomb) in fails(capsys, "predict", str(bomb), "--checkpoint", str(ckpt))
    (tmp_path / "junk.jpg").write_bytes(b"junk")
    err = fails(capsys, "predict", str(bomb), str(tmp_path / "junk.jpg"), "--checkpoint", str(ckpt))
    assert "none of the 2 images" in err and str(bomb) in err


# -- 4. A full disk while writing a checkpoint -------------------------------------------------------
def _full_disk(obj, f, *args, **kwargs):
    f.write(b"partial")
    raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")


def test_checkpoint_write_failing_with_runtime_error_keeps_the_previous(tmp_path, monkeypatch):
    from alexnet.train import _save

    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.ones(3)}}, path)
    monkeypatch.setattr(torch, "save", _full_disk)
    with pytest.raises(TrainingError, match="could not write .*last.pt.*the file there before is untouched"):
        _save({"model": {"w": torch.zeros(3)}}, path)
    # A first save has no file before it to leave untouched (helper 43 saw the claim made of nothing).
    with pytest.raises(TrainingError) as first:
        _save({"model": {"w": torch.zeros(3)}}, tmp_path / "best.pt")
    assert "untouched" not in str(first.value) and "could not write" in str(first.value)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_train_on_a_full_disk_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    data = make_tiny_fmnist(tmp_path / "fmnist")
    monkeypatch.setattr(torch, "save", _full_disk)
    err = fails(capsys, "train", "--data", str(data), "--out", str(tmp_path / "run"), *TINY, *QUICK)
    # best.pt is written first at an epoch's end (a kill between the two writes then loses nothing)
    assert re.search(r"could not write \S*(best|last)\.pt", err) and "RuntimeError" not in err


# -- 5. Training options: type and range, no NaN or inf ----------------------------------------------
@pytest.mark.parametrize(
    "args, named",
    [
        (["--lr", "nan"], "--lr"),
        (["--lr", "inf"], "--lr"),
        (["--weight-decay", "nan"], "--weight-decay"),
        (["--momentum", "-5"], "--momentum"),
        (["--dropout", "nan"], "--dropout"),
        (["--dist-timeout", "inf"], "--dist-timeout"),
        (["--lr-mult", "fc8=nan"], "--lr-mult fc8"),
    ],
)
def test_bad_numbers_on_the_command_line(tmp_path, capsys, args, named):
    assert named in fails(capsys, "train", "--out", str(tmp_path / "run"), *args)


@pytest.mark.parametrize(
    "line, named",
    [
        ('lr = "fast"', "lr"),
        ("momentum = nan", "momentum"),
        ("weight_decay = -inf", "weight_decay"),
        ("epochs = 2.5", "epochs"),
        ('nesterov = "yes"', "nesterov"),
        ('schedule = "sometimes"', "schedule"),
        ("model_options = 5", "model_options"),
        ('freeze = "features"', "freeze"),
    ],
)
def test_bad_values_in_a_config_file(tmp_path, capsys, line, named):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(line + "\n")
    # named as written in the file, not as the flag the user did not type
    assert f"--config {cfg}: {named} must be" in fails(capsys, "train", "--config", str(cfg), "--out", str(tmp_path / "run"))


# -- 6. Model options: type and range -------------------------------------------------------------------
@pytest.mark.parametrize(
    "option, named",
    [("lrn=maybe", "lrn"), ("widths=7", "widths"), ("lrn_size=0", "lrn_size"), ("widths=[8,8,8,8]", "widths"),
     ("pools=[1,1,0]", "pools"), ("init_bias=nan", "init_bias"), ("lrn_k=0", "lrn_k"), ("activation=gelu", "activation"),
     ("fc_width=2.5", "fc_width")],
)
def test_bad_model_options(tmp_path, capsys, option, named):
    data = make_tiny_fmnist(tmp_path / "fmnist")
    err = fails(capsys, "train", "--data", str(data), "--out", str(tmp_path / "run"), "--model-option", option, *QUICK)
    assert f"model option {named} " in err


def test_model_config_checks_and_parameter_count():
    with pytest.raises(ConfigError, match="model option lrn must be true or false"):
        AlexNetConfig(lrn="maybe")
    cfg = AlexNetConfig(widths=[8, 8, 8, 8, 8], init_bias=1, num_classes=np.int64(3))
    assert cfg.widths == (8, 8, 8, 8, 8) and type(cfg.init_bias) is float and type(cfg.num_classes) is int
    for name in list_models():  # counted from the config alone, as the built network has them
        assert model_config(name).num_parameters() == count_parameters(AlexNet(model_config(name)))


# -- 7. A checkpoint's model_config is bounded before anything is allocated --------------------------
def _huge_checkpoint(path: Path) -> Path:
    config = model_config("alexnet_paper", widths=(8, 8, 8, 8, 8), fc_width=16, num_classes=3).to_dict()
    config["fc_width"] = 2_000_000  # fc7 alone: 4e12 weights
    save_atomic({"model": {"fc8.bias": torch.zeros(3)}, "model_config": config, "classes": ["a", "b", "c"]}, path)
    return path


def test_checkpoint_asking_for_a_huge_model_is_refused(tmp_path, capsys):
    big = _huge_checkpoint(tmp_path / "big.pt")
    assert AlexNetConfig(fc_width=2_000_000).num_parameters() > MAX_PARAMETERS
    image = make_image_folder(tmp_path / "imgs", classes=1, per_class=1) / "class0" / "img0.jpg"
    err = fails(capsys, "predict", str(image), "--checkpoint", str(big))
    assert str(big) in err and "parameters" in err
    data = make_tiny_fmnist(tmp_path / "fmnist")
    err = fails(capsys, "train", "--data", str(data), "--init-from", str(big), "--out", str(tmp_path / "run"), *QUICK)
    assert f"--init-from {big}" in err and "parameters" in err


def test_resume_from_a_checkpoint_asking_for_a_huge_model_is_refused(tmp_path, capsys):
    last = tmp_path / "run" / "last.pt"
    save_atomic({"model": {}, "train_config": {"model": "alexnet_paper", "model_options": {"fc_width": 2_000_000}}}, last)
    err = fails(capsys, "train", "--resume", str(tmp_path / "run"))
    assert str(last) in err and "parameters" in err
    save_atomic({"model": {}, "train_config": {"model": "alexnet_paper", "lr": "fast"}}, last)
    assert str(last) in fails(capsys, "train", "--resume", str(tmp_path / "run"))


def test_checkpoint_with_nan_weights_is_refused_by_every_command(tmp_path, capsys):
    """NaN or inf weights (a damaged file, a bad conversion) are refused where they are loaded, naming
    the file and the tensor; they gave NaN scores (evaluate: chance, predict: class 0) or a NaN loss
    at the first step blamed on the learning rate."""
    path = tiny_checkpoint(tmp_path / "nan.pt", classes=10)
    ckpt = torch.load(path, weights_only=False)
    ckpt["model"]["conv2.weight"][0, 0, 0, 0] = float("nan")
    ckpt["model"]["fc8.bias"][1] = float("inf")  # conv2: 8 kernels of 4 channels (two towers), 5x5: 800 values
    save_atomic(ckpt, path)
    images = make_image_folder(tmp_path / "imgs", classes=10, per_class=4)
    runs = {"evaluate": ["evaluate", "--checkpoint", str(path), "--data", str(images)],
            "predict": ["predict", str(images / "class0" / "img0.jpg"), "--checkpoint", str(path)],
            "export": ["export", "--checkpoint", str(path), "--out", str(tmp_path / "m.safetensors")],
            "train": ["train", "--data", str(images), "--init-from", str(path), "--out", str(tmp_path / "run"), *QUICK]}
    for command, args in runs.items():
        err = fails(capsys, *args)
        assert str(path) in err and "conv2.weight (1 of 800 values), fc8.bias (1 of 10 values)" in err, (command, err)
    assert not (tmp_path / "run").exists() and not (tmp_path / "m.safetensors").exists()
    # A bare state dict (torchvision's names): the refusal names the file's tensors, before any fitting.
    torch.save({"features.0.weight": torch.zeros(4, 3, 11, 11), "classifier.1.bias": torch.tensor([0.0, float("nan")])},
               tmp_path / "tv.pth")
    err = fails(capsys, "train", "--data", str(images), "--init-from", str(tmp_path / "tv.pth"), "--out", str(tmp_path / "run"), *QUICK)
    assert err.endswith("tv.pth: weights hold NaN or inf: classifier.1.bias (1 of 2 values); refused"), err


def test_checkpoint_whose_recipe_and_network_disagree_on_channels_is_refused(tmp_path, capsys):
    """A 1-channel network with a 3-channel (RGB) recipe: evaluate said "internal error: RuntimeError:
    Given groups=1, weight of size [8, 1, 11, 11], expected input[10, 3, 67, 67] to have 1 channels"."""
    path = tiny_checkpoint(tmp_path / "mixed.pt", classes=2, in_chans=1)
    images = make_image_folder(tmp_path / "imgs", classes=2, per_class=1)
    err = fails(capsys, "evaluate", "--checkpoint", str(path), "--data", str(images))
    assert str(path) in err and "preprocess is for 3-channel images but its network takes 1-channel" in err


DAMAGES = {  # how a checkpoint is damaged -> what the one line must say (a helper's sweep of ~2,400 cases)
    "classes an int": (lambda c: c.update(classes=10), "classes must be a list of names"),
    "classes None": (lambda c: c.update(classes=[None] * 10), "classes must be a list of names"),
    "state dict int key": (lambda c: c["model"].update({5: c["model"].pop("fc8.bias")}), "named tensors with data (entry 5)"),
    "meta tensor": (lambda c: c["model"].update({"fc8.bias": torch.empty(10, device="meta")}), "(entry 'fc8.bias')"),
    "sparse tensor": (lambda c: c["model"].update({"fc8.weight": c["model"]["fc8.weight"].to_sparse()}), "fc8.weight"),
    "lrn_size 1e9": (lambda c: c["model_config"].update(lrn_size=10**9), "lrn_size must be at most 17"),
    "std 1e-300": (lambda c: c["preprocess"].update(std=[1e-300] * 3), "preprocess std must be 3 numbers >= 1e-6"),
    "pca a list": (lambda c: c["preprocess"].update(pca=[1, 2, 3]), "preprocess pca must be null or a table"),
    "test_crop over size": (lambda c: c["preprocess"].update(test_crop=200), "test_crop must be at most the stored size (76)"),
    "mean image without size": (lambda c: c["preprocess"].update(size=None, mean_image=torch.zeros(3, 20, 20)),
                                "mean image but gives no stored image size"),
    "input_size the network cannot take": (lambda c: c["preprocess"].update(input_size=8), "feeds 8-px inputs"),
    "input_size of another fc6": (lambda c: c["preprocess"].update(input_size=40), "feeds 40-px inputs"),
    # These loaded at exit 0: a prediction named no class; weights and a mean image were cast to
    # float32 without a word; a format of no alexnet's was taken.
    "an empty class name": (lambda c: c["classes"].__setitem__(1, ""), "its class 1 has an empty name"),
    "integer weights": (lambda c: c["model"].update({"fc8.bias": c["model"]["fc8.bias"].long()}), "fc8.bias is int64"),
    "complex weights": (lambda c: c["model"].update({"fc8.bias": c["model"]["fc8.bias"].to(torch.complex64)}), "fc8.bias is complex64"),
    "bool mean image": (lambda c: c["preprocess"].update(mean_image=torch.ones(3, 76, 76, dtype=torch.bool)), "mean image holds bool"),
    "unknown format": (lambda c: c.update(format="zzz"), "its format is 'zzz', not alexnet-checkpoint-1"),
    "newer format": (lambda c: c.update(format="alexnet-checkpoint-7"), "written by a newer alexnet"),
    # Said "no 'model' or 'state_dict' weights (its keys: 'model', ...)" (helper 77's audit).
    "weights not a dict": (lambda c: c.update(model=[1]), "not an alexnet checkpoint: its 'model' is a list, not a state dict"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_inconsistent_checkpoints_are_one_line(tmp_path, capsys, damage):
    """Each said "internal error: ..." (TypeError, AttributeError, MemoryError of the C kernel, a
    matmul of the wrong shapes, a crop outside the image) in some command, or two lines."""
    change, said = DAMAGES[damage]
    path = tiny_checkpoint(tmp_path / "ok.pt", classes=10)
    ckpt = torch.load(path, weights_only=False)
    ckpt["preprocess"]["mean_image"] = torch.full((3, 76, 76), 100.0)  # a recipe with a mean image
    change(ckpt)
    torch.save(ckpt, tmp_path / "bad.pt")
    images = make_image_folder(tmp_path / "imgs", classes=10, per_class=1)
    for args in (["evaluate", "--data", str(images)], ["predict", str(images / "class0" / "img0.jpg")], ["summary"]):
        err = fails(capsys, *args, "--checkpoint", str(tmp_path / "bad.pt"))
        assert "bad.pt" in err and said in err, (args[0], err)


def test_checkpoint_with_a_flipped_bit_is_refused(tmp_path, capsys):
    """torch.load does not check the archive's CRC-32s: one flipped bit in a weight loaded as
    another network at exit 0. Every command that reads the file now refuses it in one line."""
    import zipfile

    path = tiny_checkpoint(tmp_path / "ok.pt", classes=3)
    with zipfile.ZipFile(path) as z:
        record = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", raw, record.header_offset + 26)  # torch pads the local extra field
    start = record.header_offset + 30 + name_len + extra_len
    raw[start + 2] ^= 0x08  # inside conv1.weight's first float: still finite
    flipped = tmp_path / "flipped.pt"
    flipped.write_bytes(raw)
    assert torch.isfinite(torch.load(flipped, weights_only=True)["model"]["conv1.weight"]).all()  # what loaded before
    images = make_image_folder(tmp_path / "imgs", classes=3, per_class=1)
    for args in (["evaluate", "--data", str(images), "--checkpoint", str(flipped)], ["summary", "--checkpoint", str(flipped)],
                 ["predict", str(images / "class0" / "img0.jpg"), "--checkpoint", str(flipped)],
                 ["train", "--data", str(images), "--init-from", str(flipped), "--out", str(tmp_path / "run"), *QUICK]):
        err = fails(capsys, *args)
        assert f"{flipped}: damaged: its record data/0 fails its checksum" in err, (args[0], err)


def test_checkpoint_without_a_recipe_is_named_by_the_commands_that_need_one(tmp_path, capsys):
    """predict, features and retrieve said "the model has no preprocessing recipe (a network from
    create_model knows no data)", not which file; now as evaluate: the file, and what it lacks."""
    path = tiny_checkpoint(tmp_path / "ok.pt", classes=3)
    images = make_image_folder(tmp_path / "imgs", classes=3, per_class=1)
    assert main(["features", "--checkpoint", str(path), "--data", str(images), "--out", str(tmp_path / "i.safetensors")]) == 0
    ckpt = torch.load(path, weights_only=False)
    del ckpt["preprocess"]
    bare = tmp_path / "bare.pt"
    torch.save(ckpt, bare)
    image = str(images / "class0" / "img0.jpg")
    for args in (["predict", image], ["features", "--data", str(images), "--out", str(tmp_path / "j.safetensors")],
                 ["retrieve", image, "--index", str(tmp_path / "i.safetensors")], ["evaluate", "--data", str(images)]):
        err = fails(capsys, *args, "--checkpoint", str(bare))
        assert err.endswith(f"{bare}: no 'preprocess' recipe; it was not written by 'alexnet train' or 'alexnet import' "
                            "(a .safetensors export keeps it in its metadata)"), (args[0], err)
    assert main(["summary", "--checkpoint", str(bare)]) == 0  # what needs no images still works


def test_resume_of_a_damaged_last_checkpoint_is_one_line(tmp_path, capsys):
    """NaN weights in last.pt trained on into "non-finite loss (nan) at epoch 2" (no file named); a
    missing tensor gave a two-line error (load_state_dict's own lines); both now one line naming
    --resume, and config.json is left as it was."""
    data = make_tiny_fmnist(tmp_path / "fmnist")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--model", "alexnet_small", *TINY, *QUICK]) == 0
    config = (run / "config.json").read_bytes()
    good = torch.load(run / "last.pt", weights_only=False)
    for damage, said in ((lambda m: m["fc8.bias"].fill_(float("nan")), "weights hold NaN or inf: fc8.bias"),
                         (lambda m: m.pop("fc8.bias"), "not a full training checkpoint (Missing key(s)")):
        ckpt = {**good, "model": dict(good["model"])}
        ckpt["model"]["fc8.bias"] = ckpt["model"]["fc8.bias"].clone()
        damage(ckpt["model"])
        save_atomic(ckpt, run / "last.pt")
        err = fails(capsys, "train", "--resume", str(run), "--epochs", "2")
        assert f"--resume {run}" in err and said in err, err
        assert (run / "config.json").read_bytes() == config


def _set(path: tuple, value) -> callable:
    """A damage: ``value`` at ``path`` inside the checkpoint dict."""
    def damage(ckpt: dict) -> None:
        node = ckpt
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return damage


# What each damaged part of last.pt said before (trainstate.py): most an "internal error" (exit 1)
# after config.json had been rewritten, the rest trained on at exit 0.
TRAINING_STATE_DAMAGES = {
    "rng missing": (_set(("rng",), None), "rng is None, not a table"),  # KeyError: 'rng'
    "torch rng short": (_set(("rng", "torch"), torch.zeros(3, dtype=torch.uint8)), "rng is not a state its generators take"),
    "numpy rng float": (_set(("rng", "numpy"), torch.zeros(624)), "rng numpy is a float32 tensor of shape [624], not an int64"),  # exit 0
    "rng_ranks": (_set(("rng_ranks",), [5]), "rng_ranks[0] is 5"),
    "health": (_set(("health",), 5), "health is 5, not a table"),
    "health losses": (_set(("health", "losses"), ["a"]), "health losses is ['a']"),
    "history string": (_set(("history",), "abc"), "history is 'abc'"),  # also rewrote metrics.jsonl
    "history record": (_set(("history",), [{}]), "history record 1 has no number for epoch, elapsed_seconds"),
    "epoch string": (_set(("position", "epoch"), "1"), "position epoch is '1'"),
    "epoch None": (_set(("position", "epoch"), None), "position epoch is None"),  # the --epochs check's TypeError
    "epoch -1": (_set(("position", "epoch"), -1), "position epoch is -1"),  # exit 0
    "batch beyond": (_set(("position", "batch"), 10**6), "position batch 1000000 is beyond the 8 batches"),  # exit 0
    "best NaN": (_set(("best_val_top1",), float("nan")), "best_val_top1 is nan"),  # exit 0
    "momentum string": (_set(("optimizer", "param_groups", 0, "momentum"), "x"), "param group 0's momentum is 'x', not a finite number"),
    "momentum NaN": (lambda c: c["optimizer"]["state"][0]["momentum_buffer"].fill_(float("nan")),
                     "momentum_buffer of parameter 0 holds NaN"),
    "optimizer None": (_set(("optimizer",), None), "optimizer is not a table of state and param_groups"),
    "plateau": (_set(("plateau",), 5), "plateau is 5, not a table"),
    "plateau scale": (_set(("plateau", "scale"), -1.0), "plateau scale is -1.0"),  # diverged at exit 2, no file named
    "scaler": (_set(("scaler",), 5), "scaler is 5, not a table"),  # exit 0
    "preprocess": (_set(("preprocess",), 5), "the preprocessing recipe is 5, not a table"),
    "format": (_set(("format",), "zzz"), "its format is 'zzz', not alexnet-checkpoint-1"),  # exit 0
    "newer format": (_set(("format",), "alexnet-checkpoint-2"), "written by a newer alexnet"),
    "integer weights": (lambda c: c["model"].__setitem__("fc8.bias", c["model"]["fc8.bias"].long()), "fc8.bias is int64"),  # exit 0
    "freeze": (_set(("train_config", "freeze"), ["conv9"]), "bad training configuration: --freeze: unknown layer 'conv9'"),
}


def test_resume_of_a_damaged_training_state_is_one_line_and_writes_nothing(tmp_path, capsys):
    """Each part of a last.pt's training state damaged in turn: one line naming the file and the
    part, exit 2, and config.json and metrics.jsonl as they were."""
    import copy

    data = make_tiny_fmnist(tmp_path / "fmnist")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--model", "alexnet_small", *TINY, *QUICK]) == 0
    good = torch.load(run / "last.pt", weights_only=False)
    files = {name: (run / name).read_bytes() for name in ("config.json", "metrics.jsonl")}
    for case, (damage, said) in TRAINING_STATE_DAMAGES.items():
        ckpt = copy.deepcopy(good)
        damage(ckpt)
        save_atomic(ckpt, run / "last.pt")
        err = fails(capsys, "train", "--resume", str(run), "--epochs", "2")
        assert str(run / "last.pt") in err and said in err, (case, err)
        assert {name: (run / name).read_bytes() for name in files} == files, case
    # A momentum buffer of another shape crashed the fused SGD (SIGSEGV): in a process of its own.
    ckpt = copy.deepcopy(good)
    ckpt["optimizer"]["state"][0]["momentum_buffer"] = torch.zeros(3)
    save_atomic(ckpt, run / "last.pt")
    done = run_cli("train", "--resume", str(run), "--epochs", "2", "--progress", "off")
    said = "momentum_buffer of parameter 0 is a float32 tensor of shape [3], but the parameter is"
    assert done.returncode == 2 and said in done.stderr, done
    save_atomic(good, run / "last.pt")  # and the good one still resumes
    assert main(["train", "--resume", str(run), "--epochs", "2", "--progress", "off"]) == 0


def test_resume_on_a_machine_without_the_saved_device_says_how_to_go_on(tmp_path, capsys):
    """A run saved with --amp fp16 (a GPU's) or --device cuda, resumed on a CPU machine, said only
    "--amp fp16 is for GPUs" or "--device cuda: no CUDA device": not that the setting was the run's,
    nor that another one continues it."""
    from conftest import cuda_available

    data = make_tiny_fmnist(tmp_path / "fmnist")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--model", "alexnet_small", *TINY, *QUICK]) == 0
    ckpt = torch.load(run / "last.pt", weights_only=False)
    ckpt["train_config"].update(amp="fp16")  # the device stays cpu: fp16 is refused there on every machine
    save_atomic(ckpt, run / "last.pt")
    err = fails(capsys, "train", "--resume", str(run), "--epochs", "2")
    assert err.endswith(f"--resume {run}: --amp fp16 is for GPUs; use --amp bf16 on a CPU (the run's saved --amp; "
                        "another --amp continues it here)"), err
    assert "the run's saved" not in fails(capsys, "train", "--resume", str(run), "--epochs", "2", "--amp", "fp16")  # typed
    if not cuda_available():
        ckpt["train_config"].update(amp="none", device="cuda")
        save_atomic(ckpt, run / "last.pt")
        err = fails(capsys, "train", "--resume", str(run), "--epochs", "2")
        assert "no CUDA device is available on this machine (the run's saved --device; --device cpu continues it here)" in err
    ckpt["train_config"].update(amp="none", device="cpu")
    save_atomic(ckpt, run / "last.pt")
    assert main(["train", "--resume", str(run), "--epochs", "2", "--progress", "off"]) == 0


# -- 8. A feature index with malformed metadata ---------------------------------------------------------
def test_index_with_malformed_json_metadata(tmp_path, capsys):
    from safetensors.torch import save_file

    from alexnet.retrieval import INDEX_FORMAT

    index = tmp_path / "index.safetensors"
    meta = {"format": INDEX_FORMAT, "paths": "[not json", "classes": "[]", "checkpoint": "null", "preprocess": "{}"}
    save_file({"features": torch.zeros(2, 16), "labels": torch.zeros(2, dtype=torch.int64)}, str(index), metadata=meta)
    image = make_image_folder(tmp_path / "imgs", classes=1, per_class=1) / "class0" / "img0.jpg"
    err = fails(capsys, "retrieve", str(image), "--index", str(index))
    assert str(index) in err and "'paths'" in err and "not valid JSON" in err
    meta["paths"] = json.dumps(["only-one.jpg"])  # valid JSON, but 1 path for 2 vectors
    save_file({"features": torch.zeros(2, 16), "labels": torch.zeros(2, dtype=torch.int64)}, str(index), metadata=meta)
    assert "1 paths for 2" in fails(capsys, "retrieve", str(image), "--index", str(index))


@pytest.mark.parametrize(("key", "value", "said"), [("fingerprint", "{oops", "not valid JSON"),
                                                   ("precision", "[1]", "is a list"), ("precision", "nul", "not valid JSON")])
def test_index_with_a_malformed_fingerprint_or_precision(tmp_path, capsys, key, value, said):
    """The optional entries were read with no check: internal errors (JSONDecodeError; TypeError for a
    list, unhashable where the precision is looked up)."""
    from safetensors.torch import save_file

    from alexnet.retrieval import INDEX_FORMAT

    index = tmp_path / "index.safetensors"
    meta = {"format": INDEX_FORMAT, "paths": json.dumps(["a.jpg", "b.jpg"]), "classes": "[]", "checkpoint": "null",
            "preprocess": "{}", key: value}
    save_file({"features": torch.zeros(2, 16), "labels": torch.zeros(2, dtype=torch.int64)}, str(index), metadata=meta)
    image = make_image_folder(tmp_path / "imgs", classes=1, per_class=1) / "class0" / "img0.jpg"
    err = fails(capsys, "retrieve", str(image), "--index", str(index))
    assert f"{index}: its {key!r} metadata" in err and said in err


def test_json_nested_past_the_recursion_limit_is_one_line_naming_the_file(tmp_path, capsys):
    """``[[[[...`` 100,000 deep made json raise RecursionError, an internal error, wherever the package
    reads JSON that came from elsewhere: an export's metadata or config, a run's metrics.jsonl, a
    pack's index, a feature index."""
    from safetensors.torch import save_file

    from alexnet.retrieval import INDEX_FORMAT

    deep = "[" * 100_000 + "]" * 100_000
    weights = tmp_path / "meta.safetensors"
    save_file({"w": torch.zeros(2)}, str(weights), metadata={"model_config": deep})
    assert f"{weights}: its metadata is not valid JSON" in fails(capsys, "summary", "--checkpoint", str(weights))
    weights = tmp_path / "side.safetensors"
    save_file({"w": torch.zeros(2)}, str(weights))
    weights.with_suffix(".json").write_text(deep)
    assert f"{weights.with_suffix('.json')}: not valid JSON" in fails(capsys, "summary", "--checkpoint", str(weights))
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(deep + "\n")
    assert "metrics.jsonl: line 1 is not JSON" in fails(capsys, "visualize", "curves", str(run), "--out", str(tmp_path / "c.png"))
    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / "index.json").write_text(deep)
    err = fails(capsys, "evaluate", "--checkpoint", str(tiny_checkpoint(tmp_path / "c.pt")), "--data", str(pack))
    assert "index.json: unreadable packed index (nested too deeply" in err
    index = tmp_path / "index.safetensors"
    meta = {"format": INDEX_FORMAT, "paths": deep, "classes": "[]", "checkpoint": "null", "preprocess": "{}"}
    save_file({"features": torch.zeros(2, 16), "labels": torch.zeros(2, dtype=torch.int64)}, str(index), metadata=meta)
    image = make_image_folder(tmp_path / "imgs", classes=1, per_class=1) / "class0" / "img0.jpg"
    assert "'paths' metadata is not valid JSON (nested too deeply)" in fails(capsys, "retrieve", str(image), "--index", str(index))


def _damage_pack(pack: Path, how: str) -> None:
    """Damage a packed folder's index or files the way ``how`` says."""
    index = json.loads((pack / "index.json").read_text())
    train = index["splits"]["train"]
    if how == "size":
        index["size"] = "67"
    elif how == "no splits":
        del index["splits"]
    elif how == "shards":
        train["shards"] = 5
    elif how == "outside":
        train["shards"][0][0] = "../elsewhere/" + train["shards"][0][0]
    elif how == "no stats":
        del index["stats"]
    elif how == "shard shape":
        np.save(pack / train["shards"][0][0], np.zeros((train["shards"][0][1], 3, 8, 8), dtype=np.uint8))
    elif how == "pickled labels":
        np.save(pack / train["labels"], np.array([None] * train["count"], dtype=object), allow_pickle=True)
    elif how == "labels out of range":
        np.save(pack / train["labels"], np.full(train["count"], 99))
    (pack / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(("how", "said"), [
    ("size", "index.json: damaged packed index: its size is '67'"), ("no splits", "index.json: damaged packed index: it lists no train"),
    ("shards", "index.json: damaged packed index: its train split's shards"), ("outside", "its train split's shards"),
    ("no stats", "index.json: damaged packed index: its stats"),
    ("shard shape", "train-00000.npy: holds uint8 images of shape (6, 3, 8, 8)"),
    ("pickled labels", "train-labels.npy: unreadable labels of a packed data set"),
    ("labels out of range", "train-labels.npy: labels outside 0..1 (the pack's 2 classes): 6 of 6, e.g. 99"),
])
def test_a_damaged_or_crafted_pack_is_one_line(tmp_path, capsys, how, said):
    """A pack's index.json and files were used as read: a string size, a missing entry, shards of
    another shape or pickled labels were internal errors (TypeError, KeyError, ValueError), a shard
    named ../elsewhere/... was read from outside the pack, labels past the classes said no class trained."""
    from alexnet.data.packed import prepare

    prepare(make_image_folder(tmp_path / "imgs", classes=2, per_class=3), tmp_path / "pack", size=67, show_progress=False)
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(tmp_path / "pack" / "train-00000.npy", tmp_path / "elsewhere")
    _damage_pack(tmp_path / "pack", how)
    err = fails(capsys, "train", "--data", str(tmp_path / "pack"), "--out", str(tmp_path / "run"), *TINY, *QUICK,
                "--model-option", "input_size=67", "--threads", "1")
    assert said in err and str(tmp_path / "pack") in err


def test_no_readable_image_to_score_is_an_error_not_an_accuracy_of_zero(tmp_path):
    """A validation split of unreadable files gave 'val top-1 0.0000', kept as the best checkpoint,
    and evaluate printed '0 images ... top-1 accuracy 0.0000' with exit 0."""
    root = make_image_folder(tmp_path / "data" / "train", classes=2, per_class=4)
    for c in ("class0", "class1"):
        (tmp_path / "data" / "val" / c).mkdir(parents=True)
        (tmp_path / "data" / "val" / c / "empty.jpg").write_bytes(b"")
    r = run_cli("train", "--data", str(root.parent), "--out", str(tmp_path / "run"), *TINY, *QUICK)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "alexnet: error: validation: no image to score: every one was unreadable (each was named in a warning above)")
    assert not list((tmp_path / "run").glob("*.pt"))
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    r = run_cli("evaluate", "--checkpoint", str(ckpt), "--data", str(tmp_path / "data" / "val"))
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "alexnet: error: no image to score: every one was unreadable (each was named in a warning above)"), r.stderr


def test_half_a_data_set_says_what_it_lacks(tmp_path, capsys):
    """Fashion-MNIST with a file missing and a pack whose prepare did not finish were read as folders
    of images: 'no class sub-folders (expected ROOT/CLASS/IMAGE files)' (helper 30's audit); features
    on a pack or Fashion-MNIST said 'no images'."""
    from alexnet.data.packed import prepare

    fm = make_tiny_fmnist(tmp_path / "fm")
    (fm / "t10k-labels-idx1-ubyte.gz").unlink()
    ckpt = str(tiny_checkpoint(tmp_path / "m.pt"))
    for args in (["train", "--data", str(fm), *QUICK], ["evaluate", "--checkpoint", ckpt, "--data", str(fm)]):
        assert fails(capsys, *args) == (f"alexnet: error: {fm}: Fashion-MNIST without t10k-labels-idx1-ubyte (it has the other "
                                        "IDX files): copy the missing file(s) there, or 'alexnet download fashion-mnist "
                                        "--out DIR' on a machine online")
    pack = tmp_path / "pack"
    prepare(make_image_folder(tmp_path / "imgs", classes=2, per_class=3), pack, size=32, show_progress=False)
    err = fails(capsys, "features", "--checkpoint", ckpt, "--data", str(pack), "--out", str(tmp_path / "i.safetensors"))
    assert err == (f"alexnet: error: {pack}: features indexes image files, for retrieve to show; this is a packed data set: "
                   "give it the folder 'alexnet prepare' read")
    (pack / "index.json").unlink()
    killed = tmp_path / "killed" / ".prepare-x1y2"  # a first prepare killed: only its temporary folder is there
    killed.mkdir(parents=True)
    (killed / "train-00000.npy").write_bytes(b"")
    said = fails(capsys, "train", "--data", str(killed.parent), *QUICK)
    assert said.endswith("killed: packed shards without their index.json: an 'alexnet prepare' that did not finish; run it again")
    for args in (["train", "--data", str(pack), *QUICK], ["evaluate", "--checkpoint", ckpt, "--data", str(pack)],
                 ["features", "--checkpoint", ckpt, "--data", str(pack), "--out", str(tmp_path / "i.safetensors")]):
        assert fails(capsys, *args) == (f"alexnet: error: {pack}: packed shards without their index.json: an 'alexnet "
                                        "prepare' that did not finish; run it again"), args


def test_fashion_mnist_labels_outside_its_ten_classes_are_refused(tmp_path, capsys):
    """IDX labels of 10 and above (another data set's files, a damaged copy) ended train and evaluate
    in 'internal error: IndexError: Target 12 is out of bounds' (training labels) or 'RuntimeError:
    index 12 is out of bounds for dimension 1 with size 10' (test labels) (helper 77's audit)."""
    from conftest import write_idx

    fm = make_tiny_fmnist(tmp_path / "fm")
    labels = np.arange(40) % 10
    labels[[3, 7]] = 12
    write_idx(fm / "t10k-labels-idx1-ubyte.gz", labels)
    ckpt = str(tiny_checkpoint(tmp_path / "m.pt"))
    for args in (["train", "--data", str(fm), "--out", str(tmp_path / "run"), *QUICK],
                 ["evaluate", "--checkpoint", ckpt, "--data", str(fm)]):
        assert fails(capsys, *args) == (f"alexnet: error: {fm / 't10k-labels-idx1-ubyte.gz'}: labels outside 0..9 "
                                        "(Fashion-MNIST's 10 classes): 2 of 40, e.g. 12"), args
    assert not (tmp_path / "run").exists()


def test_a_packs_labels_outside_its_classes_are_refused(tmp_path, capsys):
    """A pack whose labels file names a class it lacks (an edited or mixed-up pack) ended train and
    evaluate in 'internal error: RuntimeError: index 7 is out of bounds for dimension 1 with size 3';
    a labels file of objects in 'internal error: ValueError: Object arrays cannot be loaded...', a
    missing one in exit 1 (helper 77's audit)."""
    from alexnet.data.packed import prepare

    pack = tmp_path / "pack"
    for split in ("train", "val"):
        make_image_folder(tmp_path / "imgs" / split, classes=3, per_class=4)
    prepare(tmp_path / "imgs", pack, size=71, show_progress=False)
    labels = pack / "val-labels.npy"
    n = len(np.load(labels))
    np.save(labels, np.full(n, 7, dtype=np.int64))
    ckpt = str(tiny_checkpoint(tmp_path / "m.pt"))
    train = ["train", "--data", str(pack), "--out", str(tmp_path / "run"), *TINY, "--model-option", "input_size=63", *QUICK]
    for args in (train, ["evaluate", "--checkpoint", ckpt, "--data", str(pack)]):
        assert fails(capsys, *args) == (f"alexnet: error: {labels}: labels outside 0..2 (the pack's 3 classes): "
                                        f"{n} of {n}, e.g. 7"), args
    np.save(labels, np.array([object()] * n), allow_pickle=True)
    assert fails(capsys, *train) == (f"alexnet: error: {labels}: unreadable labels of a packed data set (Object arrays "
                                     "cannot be loaded when allow_pickle=False)")
    labels.unlink()
    assert fails(capsys, *train) == f"alexnet: error: {labels}: unreadable labels of a packed data set (No such file or directory)"
    assert not (tmp_path / "run").exists()


def test_a_damaged_or_missing_shard_of_a_pack_is_named(tmp_path, capsys):
    """A shard that was not an array of images said "PACK: cannot open a shard (This file contains
    pickled (object) data. If you trust the file you can load it unsafely using the `allow_pickle=`
    keyword argument...)", naming the pack, not the shard, and offering an option no command takes
    (an array of objects: "Array can't be memory-mapped: Python objects in dtype."); a missing one
    named the pack with numpy's whole message (helper 77's audit)."""
    from alexnet.data.packed import prepare

    pack = tmp_path / "pack"
    for split in ("train", "val"):
        make_image_folder(tmp_path / "imgs" / split, classes=2, per_class=4)
    prepare(tmp_path / "imgs", pack, size=71, show_progress=False)
    shard = pack / "train-00000.npy"
    train = ["train", "--data", str(pack), "--out", str(tmp_path / "run"), *TINY, "--model-option", "input_size=63", *QUICK]
    for damage in (lambda: shard.write_bytes(b"junk"), lambda: np.save(shard, np.array([object()] * 3), allow_pickle=True)):
        damage()
        assert fails(capsys, *train) == (f"alexnet: error: {shard}: not a shard of images as 'alexnet prepare' writes them; "
                                         "prepare the pack again")
    shard.unlink()
    assert fails(capsys, *train) == f"alexnet: error: {shard}: cannot open this shard of the pack (No such file or directory)"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("code, dtype", [(0x0B, ">i2"), (0x0D, ">f4")])
def test_fashion_mnist_files_of_other_numbers_than_bytes_are_refused(tmp_path, capsys, code, dtype):
    """Fashion-MNIST's IDX files hold unsigned bytes (type 0x08). Images of 16-bit integers ended train
    in 'internal error: ValueError: given numpy array has byte order different from the native byte
    order' (torch takes no big-endian arrays); labels of floats trained, cut to integers (helper 77's audit)."""
    fm = make_tiny_fmnist(tmp_path / "fm")
    name = "train-images-idx3-ubyte.gz" if dtype == ">i2" else "train-labels-idx1-ubyte.gz"
    shape = (64, 28, 28) if dtype == ">i2" else (64,)
    array = (np.arange(np.prod(shape)) % 10).astype(dtype).reshape(shape)
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    (fm / name).write_bytes(gzip.compress(header + array.tobytes()))
    kind = "int16" if dtype == ">i2" else "float32"
    assert fails(capsys, "train", "--data", str(fm), "--out", str(tmp_path / "run"), *QUICK) == (
        f"alexnet: error: {fm / name}: an IDX file of {kind} values; Fashion-MNIST's hold unsigned bytes (type 0x08)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_fashion_mnist_files_without_images_are_refused(tmp_path, capsys, split):
    """IDX files of 0 images: an empty training split said 'warning: std(): degrees of freedom is <= 0'
    and 'data preset 'fashion_mnist': preprocess mean must be 1 or 3 finite numbers, got [nan]'; an
    empty test split trained an epoch, then said 'every one was unreadable (each was named in a
    warning above)' with no warning above (helper 77's audit)."""
    from conftest import write_idx

    fm = make_tiny_fmnist(tmp_path / "fm")
    write_idx(fm / f"{split}-images-idx3-ubyte.gz", np.zeros((0, 28, 28), dtype=np.uint8))
    write_idx(fm / f"{split}-labels-idx1-ubyte.gz", np.zeros(0, dtype=np.uint8))
    which = "train" if split == "train" else "test"
    assert fails(capsys, "train", "--data", str(fm), "--out", str(tmp_path / "run"), *QUICK) == (
        f"alexnet: error: {fm / f'{split}-images-idx3-ubyte.gz'}: an IDX file of 0 images (shape (0, 28, 28)); "
        f"the {which} split needs at least one")
    assert not (tmp_path / "run").exists()


_CUDA_OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.50 MiB is "
             "free. Including non-PyTorch memory, this process has 79.18 GiB memory in use.")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc: Linux")
def test_evaluate_out_of_memory_is_one_line_naming_the_batch_size(tmp_path):
    """Real: evaluate of a batch the memory cannot hold said "internal error: RuntimeError: [enforce
    fail at alloc_cpu.cpp:127] ... DefaultCPUAllocator: can't allocate memory ..."; now one line, exit 1."""
    from test_train import _BIG_CONV1

    data, out = make_fmnist(tmp_path / "fm", 64, 2048), tmp_path / "run"
    r = run_cli("train", "--data", str(data), "--out", str(out), "--batch-size", "64", "--eval-batch-size", "64", *_BIG_CONV1)
    assert r.returncode == 0, r.stderr
    for crops in ([], ["--ten-crop"]):
        r = run_cli_with_memory(500, "evaluate", str(out / "best.pt"), "--batch-size", "2048", "--threads", "1", *crops)
        said = "2048 now; --ten-crop computes 10 crops of each image" if crops else "2048 now"
        assert r.returncode == 1 and re.fullmatch(r"alexnet: error: out of CPU memory \(it tried to allocate \d+ MiB\) in "
                                                  rf"evaluate: lower --batch-size \({said}\)\n", r.stderr), r.stderr


def test_cuda_out_of_memory_is_one_line_in_every_command_that_computes(tmp_path, capsys, monkeypatch, tiny_fmnist):
    """Simulated (no GPU here): torch.cuda.OutOfMemoryError from the network's forward pass, as a
    batch too large for the GPU raises it, said "internal error: OutOfMemoryError: CUDA out of memory.
    ..." (exit 1) in each command; now what ran out on which device, how much was asked, the option
    that lowers it, exit 1. Train adds what is left of its run."""
    from alexnet.model import AlexNet

    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    images = make_image_folder(tmp_path / "imgs")
    ran_out = r"out of memory on cuda:0 \(it tried to allocate 2\.00 GiB; 1\.50 MiB of its 79\.19 GiB free\)"

    def forward_features(self, x):
        raise torch.cuda.OutOfMemoryError(_CUDA_OOM)

    monkeypatch.setattr(AlexNet, "forward_features", forward_features)  # under forward and forward_fc7 (features)
    for args, said in (
        (["evaluate", str(ckpt), "--data", str(images)], "in evaluate: lower --batch-size \\(256 now\\)"),
        (["predict", str(images), "--checkpoint", str(ckpt), "--batch-size", "8"], "in predict: lower --batch-size \\(8 now\\)"),
        (["features", str(ckpt), "--data", str(images), "--out", str(tmp_path / "i.safetensors")],
         "in features: lower --batch-size \\(64 now\\)"),
        (["train", "--data", str(tiny_fmnist), "--out", str(tmp_path / "run"), "--workers", "0", "--model-option",
          "widths=[8,16,16,16,16]", "--model-option", "fc_width=32"],
         "in a training step of epoch 1: lower --batch-size \\(128 now\\) in a new run; no checkpoint had been written yet: "
         "nothing to resume"),
    ):
        capsys.readouterr()
        assert main(args) == 1, args
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert re.fullmatch(f"alexnet: error: {ran_out} {said}", err), err


def _photos_and_a_huge_png(root: Path) -> Path:
    """A photo folder whose class0 also holds a 9400 x 9400 PNG (88 megapixels, under PIL's bomb limit:
    a 280 KB file that takes about 900 MiB to decode), and the path of that PNG."""
    from PIL import Image

    make_image_folder(root, classes=2, per_class=4)
    huge = root / "class0" / "huge.png"
    Image.new("RGB", (9400, 9400), (200, 10, 10)).save(huge)
    return huge


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc: Linux")
def test_an_image_there_is_no_memory_to_decode_is_not_called_unreadable(tmp_path, monkeypatch):
    """Real: an image the memory free could not hold decoded was an 'unreadable image': predict said
    'none of the 9 images could be read; the first: .../huge.png: cannot read this image (MemoryError: no
    detail)' (exit 2), features and train skipped it with a warning and went on without it (exit 0,
    train listing it in bad_files.txt and in the data's cached statistics, which skipped it in every
    later run). Now each stops in one line naming the file, exit 1, and lists nothing."""
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    huge = _photos_and_a_huge_png(tmp_path / "photos")
    ckpt = tiny_checkpoint(tmp_path / "m.pt", classes=2)
    tiny = ["--threads", "1", "--progress", "off"]
    train = ["train", "--data", str(tmp_path / "photos"), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4",
             "--device", "cpu", "--amp", "none", "--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32",
             "--model-option", "input_size=64", *tiny]
    for args, said in (
        (["predict", str(tmp_path / "photos"), "--checkpoint", str(ckpt), "--threads", "1"], f"out of CPU memory decoding {huge}"),
        (["features", str(ckpt), "--data", str(tmp_path / "photos"), "--out", str(tmp_path / "i.safetensors"), *tiny],
         rf"out of CPU memory( \(it tried to allocate \d+ MiB\))? decoding {huge}"),
        ([*train, "--workers", "0"], rf"out of CPU memory( \(it tried to allocate \d+ MiB\))? decoding {huge}; no checkpoint "
                                     "had been written yet: nothing to resume"),
        ([*train, "--workers", "1"], rf"a data-loading worker ran out of CPU memory( \(it tried to allocate \d+ MiB\))? decoding "
                                     rf"{huge} in train: lower --workers \(1 now\); no checkpoint had been written yet: nothing to resume"),
    ):
        r = run_cli_with_memory(800, *args)
        assert r.returncode == 1 and "unreadable" not in r.stderr, r.stderr
        assert re.fullmatch(f"alexnet: error: {said}", r.stderr.strip().splitlines()[-1]), r.stderr
        assert not (tmp_path / "run").exists() and not (tmp_path / "i.safetensors").exists()
        assert "huge" not in "".join(p.read_text() for p in (tmp_path / "cache").glob("stats-*.json"))


def test_cached_statistics_that_listed_an_image_for_want_of_memory_are_computed_again(tmp_path, monkeypatch):
    """A statistics pass short of memory listed a good image as unreadable (MemoryError) in its cache,
    and every later run skipped it: such a cache is now computed again."""
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    photos = make_image_folder(tmp_path / "photos", classes=2, per_class=4)
    args = ["train", "--data", str(photos), "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--amp", "none",
            "--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32", "--model-option", "input_size=64",
            "--threads", "1", "--workers", "0", "--progress", "off"]
    assert run_cli(*args, "--out", str(tmp_path / "run1")).returncode == 0
    (cache,) = (tmp_path / "cache").glob("stats-*.json")
    stats = json.loads(cache.read_text())
    image = str(photos / "class0" / "img0.jpg")
    stats.update(bad=[image], bad_reasons={image: "_ArrayMemoryError: Unable to allocate 183. MiB for an array with shape "
                                                  "(8000, 8000, 3) and data type uint8"})
    cache.write_text(json.dumps(stats))
    r = run_cli(*args, "--out", str(tmp_path / "run2"))
    assert r.returncode == 0 and "unreadable" not in r.stderr, r.stderr
    assert not (tmp_path / "run2" / "bad_files.txt").exists()


# -- 10. A data-loading worker process that dies -------------------------------------------------------
def _photos_pack(tmp_path: Path, size: int = 72) -> Path:
    """A packed folder of 16 training and 4 validation photos of 2 classes at ``size`` px (made without workers)."""
    make_image_folder(tmp_path / "photos" / "train", classes=2, per_class=8)
    make_image_folder(tmp_path / "photos" / "val", classes=2, per_class=2)
    pack = tmp_path / "pack"
    assert main(["prepare", "--data", str(tmp_path / "photos"), "--out", str(pack), "--size", str(size), "--workers", "0",
                 "--progress", "off"]) == 0
    return pack


def _run_killing_a_worker(fault: str, *args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, timeout=300, env={"ALEXNET_FAULT": fault})


_KILLED = (r"alexnet: error: a data-loading worker process \(pid \d+\) was killed by SIGKILL {doing}, most likely by the "
           r"kernel for want of memory \(its log, dmesg, names what it killed\): lower --workers \((\d) now\)")


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="SIGKILL: POSIX")
def test_a_worker_killed_in_training_is_one_line_and_the_run_resumes(tmp_path):
    """Real: a worker killed (SIGKILL, as the kernel kills for want of memory) in a training step said
    'internal error: RuntimeError: DataLoader worker (pid N) is killed by signal: Killed.', or by
    chance 'Connection reset by peer' or '... exited unexpectedly', without the --resume line. Now one
    line naming the worker, the likely cause and --workers, exit 1; the last checkpoint is kept and
    the printed --resume line (fewer workers) finishes the run."""
    pack, out = _photos_pack(tmp_path), tmp_path / "run"
    # 4 training batches an epoch, shared by the workers: a worker's 5th batch falls in epoch 2 (one
    # worker) or 3 (two), after a checkpoint; a validation worker loads 1 batch an epoch.
    r = _run_killing_a_worker("kill:load=5", "train", "--data", str(pack), "--out", str(out), "--epochs", "3",
                              "--batch-size", "4", "--workers", "2", "--device", "cpu", "--amp", "none", "--threads", "1",
                              "--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32",
                              "--model-option", "input_size=64", "--progress", "off")
    last = r.stderr.strip().splitlines()[-1]
    said = re.fullmatch(_KILLED.format(doing=r"in a training step of epoch ([23])") + rf"; the run folder keeps the last good "
                        rf"checkpoint; continue with: alexnet train --resume {re.escape(str(out))} --workers (\d)", last)
    assert r.returncode == 1 and said and "Traceback" not in r.stderr, r.stderr
    epochs_done = int(said[1]) - 1
    assert int(said[3]) == int(said[2]) // 2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == epochs_done
    assert torch.load(out / "last.pt", weights_only=True)["position"]["epoch"] == epochs_done
    r = run_cli("train", "--resume", str(out), "--workers", said[3], "--progress", "off")
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="SIGKILL: POSIX")
def test_a_worker_killed_in_evaluate_is_one_line(tmp_path):
    """The same death in a command that does not train ('internal error', exit 1, before): one line."""
    photos = make_image_folder(tmp_path / "photos", classes=2, per_class=2)
    ckpt = tiny_checkpoint(tmp_path / "m.pt", classes=2)
    r = _run_killing_a_worker("kill:load=1", "evaluate", str(ckpt), "--data", str(photos), "--batch-size", "1",
                              "--workers", "2", "--threads", "1", "--progress", "off")
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and re.fullmatch(_KILLED.format(doing="in evaluate"), last) and "Traceback" not in r.stderr, r.stderr


_SOCKET_LOST = (r"alexnet: error: a data-loading worker's socket (\S+)/pymp-[^/\s]+/listener-\S+ was deleted with its folder {doing} "
                r"\(by a cleaner of old files in \1, or an rm\): set TMPDIR to a folder that nothing cleans while alexnet runs; "
                r"--workers 0 uses no such socket")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torch passes a batch through a socket file on Linux")
@pytest.mark.parametrize("tmpdir", ["short", "long"])  # each worker's own folder; one folder in /tmp for all (runtime.short_worker_sockets)
def test_a_worker_socket_deleted_mid_run_is_one_line_and_the_run_resumes(tmp_path, tmpdir):
    """Real (here, a tidy of /tmp while an Imagenette run trained): the folder multiprocessing makes under
    TMPDIR for a worker's socket deleted mid-run ended the run with 'alexnet: error: No such file or
    directory', naming nothing, after six tracebacks of the workers' own clean-up, and no --resume line.
    Now one line naming the socket, the likely cause and what avoids it, exit 1, no traceback; the last
    checkpoint is kept and --resume finishes the run. evaluate says it likewise. Under a TMPDIR too long for
    a socket's path, every worker's socket lies in one folder: the other loader's workers (validation's)
    lost theirs too, and their clean-up at exit printed a traceback each, unless they are killed too."""
    pack, out = _photos_pack(tmp_path), tmp_path / "run"
    temp = Path(tempfile.mkdtemp(dir="/tmp")) if tmpdir == "short" else tmp_path / ("t" * 80)
    temp.mkdir(exist_ok=True)
    env = cli_env(ALEXNET_FAULT="rmtemp:load=5", TMPDIR=str(temp))  # a worker's 5th batch: epoch 3 (as above)
    r = subprocess.run([sys.executable, "-m", "alexnet", "train", "--data", str(pack), "--out", str(out), "--epochs", "3",
                        "--batch-size", "4", "--workers", "2", "--device", "cpu", "--amp", "none", "--threads", "1",
                        "--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32",
                        "--model-option", "input_size=64", "--progress", "off"], capture_output=True, text=True, timeout=300, env=env)
    last = r.stderr.strip().splitlines()[-1]
    said = re.fullmatch(_SOCKET_LOST.format(doing=r"in a training step of epoch (\d)") + rf"; the run folder keeps the last good "
                        rf"checkpoint; continue with: alexnet train --resume {re.escape(str(out))}", last)
    assert r.returncode == 1 and said and "Traceback" not in r.stderr and "removed" in r.stderr, r.stderr
    epochs_done = int(said[2]) - 1
    assert epochs_done >= 1 and torch.load(out / "last.pt", weights_only=True)["position"]["epoch"] == epochs_done
    r = run_cli("train", "--resume", str(out), "--progress", "off")
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]

    photos = make_image_folder(tmp_path / "more", classes=2, per_class=8)
    r = subprocess.run([sys.executable, "-m", "alexnet", "evaluate", str(out / "last.pt"), "--data", str(photos),
                        "--batch-size", "2", "--workers", "2", "--threads", "1", "--progress", "off"],
                       capture_output=True, text=True, timeout=300, env=dict(env, ALEXNET_FAULT="rmtemp:load=7"))
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and re.fullmatch(_SOCKET_LOST.format(doing="in evaluate"), last), r.stderr
    assert "Traceback" not in r.stderr
    if tmpdir == "short":
        shutil.rmtree(temp)


@pytest.mark.parametrize("text, said", [
    # torch's words (torch/csrc/DataLoader.cpp, torch/utils/data/dataloader.py), as it raises them
    ("DataLoader worker (pid 4964) is killed by signal: Killed. ",
     "a data-loading worker process (pid 4964) was killed by SIGKILL in evaluate, most likely by the kernel for want of "
     "memory (its log, dmesg, names what it killed): lower --workers (2 now)"),
    ("DataLoader worker (pid 7044) is killed by signal: Bus error. It is possible that dataloader's workers are out of "
     "shared memory. Please try to raise your shared memory limit.",
     "a data-loading worker process (pid 7044) was killed by SIGBUS in evaluate, most likely for want of shared memory "
     "(/dev/shm: ...; docker run --shm-size gives a container more): lower --workers (2 now), or the batch size; "
     "--workers 0 uses none"),
    ("DataLoader worker (pid 12) is killed by signal: Segmentation fault. ",
     "a data-loading worker process (pid 12) was killed by SIGSEGV in evaluate; --workers 0 loads the data in this "
     "process, where its error shows"),
    ("DataLoader worker (pid 12) exited unexpectedly with exit code 3. Details are lost due to multiprocessing. "
     "Rerunning with num_workers=0 may give better error trace.",
     "a data-loading worker process (pid 12) exited with status 3 in evaluate; --workers 0 loads the data in this "
     "process, where its error shows"),
    ("DataLoader worker (pid 12) exited unexpectedly with exit code 75. Details are lost due to multiprocessing. "
     "Rerunning with num_workers=0 may give better error trace.",  # sources.exit_on_unsent_batch's status for /dev/shm
     "a data-loading worker process (pid 12) could not pass a batch to this process for want of shared memory in evaluate "
     "(/dev/shm: ...; docker run --shm-size gives a container more): lower --workers (2 now), or the batch size; --workers 0 "
     "uses none"),
    ("DataLoader worker (pid(s) 12, 13) exited unexpectedly",
     "data-loading worker processes (pids 12, 13) ended unexpectedly in evaluate; --workers 0 loads the data in this "
     "process, where its error shows"),
])
def test_torchs_words_for_a_dead_worker_are_said_as_one_line(text, said):
    from alexnet.errors import WorkerDied, worker_lost

    if "SIGBUS" in said and not os.path.isdir("/dev/shm"):
        said = said.replace("/dev/shm: ...", "shared memory")
    found = worker_lost(RuntimeError(text), "in evaluate", "--workers (2 now)")
    assert isinstance(found, WorkerDied)
    assert re.fullmatch(re.escape(said).replace(r"/dev/shm:\ \.\.\.", r"/dev/shm: [\d.]+ [KMG]iB free of [\d.]+ [KMG]iB"),
                        str(found)), str(found)
    assert worker_lost(RuntimeError("DataLoader worker crashed once"), "in evaluate") is None
    assert worker_lost(ConnectionResetError(104, "Connection reset by peer"), "in evaluate") is None


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="SIGKILL: POSIX")
def test_a_failure_beside_a_dead_worker_names_the_worker():
    """A worker killed while sending a batch is met as 'Connection reset by peer' (an OSError), not as
    torch's words for a death: the loader's failure then names the dead worker by its exit code; a
    live worker's error goes on as it is."""
    import multiprocessing
    import signal
    import time
    from types import SimpleNamespace

    from alexnet.data.sources import told_worker_deaths
    from alexnet.errors import WorkerExited

    worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    worker.start()
    try:
        with pytest.raises(ConnectionResetError):  # alive: not a death
            with told_worker_deaths(SimpleNamespace(_workers=[worker]), wait_s=0.1):
                raise ConnectionResetError(104, "Connection reset by peer")
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(WorkerExited) as e:
            with told_worker_deaths(SimpleNamespace(_workers=[worker])):
                raise ConnectionResetError(104, "Connection reset by peer")
        assert (e.value.pid, e.value.exitcode) == (worker.pid, -signal.SIGKILL)
    finally:
        worker.kill()
        worker.join()


def test_a_worker_death_during_a_checkpoint_write_is_the_death_not_a_failed_write(tmp_path, monkeypatch):
    """torch's SIGCHLD handler raises a worker's death wherever the training process is; inside
    torch.save's write() its writer then reports '[enforce fail at inline_container.cc] unexpected pos',
    and the run said 'could not write runs/x/best.pt: ... unexpected pos' (seen while a worker was
    killed). It is the death, said as any worker's death (with the --resume line); the file there
    before is kept."""
    from alexnet.errors import worker_lost
    from alexnet.train import _save

    death = "DataLoader worker (pid 7) is killed by signal: Killed. "
    target = tmp_path / "last.pt"
    target.write_bytes(b"good checkpoint")
    fail_checkpoint_write(monkeypatch, ".last.pt.", RuntimeError(death))
    with pytest.raises(RuntimeError) as caught:
        _save({"w": torch.zeros(100_000), "v": torch.ones(10)}, target)
    assert str(caught.value) == death and worker_lost(caught.value, "in train") is not None
    assert target.read_bytes() == b"good checkpoint" and os.listdir(tmp_path) == ["last.pt"]


_WORKER_SENDS_A_LAMBDA = """
import torch
from alexnet.data.sources import each_batch

class Unsendable(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return lambda: i  # a worker cannot pickle it to send it back

for batch in each_batch(torch.utils.data.DataLoader(Unsendable(), batch_size=2, num_workers=1, collate_fn=list)):
    pass
"""


def test_a_batch_a_worker_cannot_send_is_an_error_not_a_wait_forever(tmp_path):
    """Real (a container's 64 MiB /dev/shm, `alexnet train --data imagewoof-mini` at its defaults): the
    worker's sending thread printed 'RuntimeError: unable to allocate shared memory(shm) for file
    </torch_15842_...>: No space left on device (28)', dropped the batch, and the command waited for
    it forever (10 minutes, then killed). Any batch a worker cannot send now ends the worker, and the
    loader says so: here one that cannot be pickled."""
    from alexnet.errors import UNSENT_OTHER

    r = subprocess.run([sys.executable, "-c", _WORKER_SENDS_A_LAMBDA], capture_output=True, text=True, timeout=120,
                       env=cli_env())
    assert r.returncode != 0 and "could not send a batch: " in r.stderr, r.stderr
    assert re.search(rf"WorkerExited: DataLoader worker \(pid \d+\) exited with exitcode {UNSENT_OTHER}", r.stderr), r.stderr


@pytest.mark.parametrize(("said", "shortage"), [
    ("No space left on device (28)", True),  # torch 2.14: posix_fallocate's own error
    ("Resource temporarily unavailable (11)", True),  # torch 2.11 in a full /dev/shm: a stale errno (pytorch#176069)
    ("Success (0)", True),  # the same, as others have met it
    ("File too large (27)", False),  # posix_fallocate's EFBIG: not the room /dev/shm has
])
def test_torchs_words_for_no_room_in_shared_memory_are_a_shortage_whatever_errno_they_state(said, shortage):
    """On torch 2.11 a worker in a full /dev/shm said 'unable to allocate shared memory(shm) for file
    </torch_...>: Resource temporarily unavailable (11)': torch states a stale errno there, not
    posix_fallocate's error, and the command said 'could not pass a batch (it said why above)' where
    torch 2.14's 'No space left on device (28)' is said as a want of shared memory (--shm-size, --workers)."""
    from alexnet.errors import is_shared_memory_shortage

    error = RuntimeError(f"unable to allocate shared memory(shm) for file </torch_4849_2272162349_0>: {said}")
    assert is_shared_memory_shortage(error) is shortage


def _tiny_training(pack: Path, out: Path, workers: int) -> list[str]:
    """`alexnet train`'s arguments for a tiny model on ``pack``, 16 photos a batch at 112 px."""
    return ["train", "--data", str(pack), "--out", str(out), "--epochs", "1", "--batch-size", "16", "--workers", str(workers),
            "--device", "cpu", "--amp", "none", "--threads", "1", "--model-option", "widths=[8,16,16,16,16]",
            "--model-option", "fc_width=32", "--model-option", "input_size=112", "--progress", "off"]


def _in_a_shm_of(size: str, args: list[str], program: tuple[str, ...] = (sys.executable, "-m", "alexnet")) -> subprocess.CompletedProcess:
    """`alexnet ARGS` (or ``program`` ARGS) in a mount namespace whose /dev/shm is a tmpfs of ``size``
    (a container's holds 64 MiB); the test is skipped where there is none."""
    script = f"mount -t tmpfs -o size={size} tmpfs /dev/shm && exec {shlex.join([*program, *args])}"
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True, text=True,
                       timeout=120, env=cli_env())
    if "mount" in r.stderr and r.returncode != 1:
        pytest.skip(f"no tmpfs of one's own here: {r.stderr.strip()}")
    return r


def _shared_memory_is_reserved_when_made() -> bool:
    """Whether this torch reserves a tensor's shared memory as it makes it (posix_fallocate: an error
    where /dev/shm has no room), or only sizes the file (ftruncate: the first write past the room is
    a SIGBUS), as torch 2.4 does: asked of torch itself in a /dev/shm of 512 KiB."""
    r = _in_a_shm_of("512k", ["-c", "import torch; torch.ones(1 << 20, dtype=torch.uint8).share_memory_()"],
                     program=(sys.executable,))
    assert r.returncode in (1, -signal.SIGBUS), (r.returncode, r.stderr)
    return r.returncode == 1


_OWN_SHM = pytest.mark.skipif(not (sys.platform.startswith("linux") and shutil.which("unshare") and hasattr(os, "geteuid")
                                   and os.geteuid() == 0), reason="a /dev/shm of one's own: unshare -m, as root on Linux")


@_OWN_SHM
def test_training_with_too_little_shared_memory_is_one_line(tmp_path):
    """The same in a mount namespace whose /dev/shm holds 512 KiB (a container's holds 64 MiB): a batch
    of 16 photos at 128 px (768 KiB) has no room there. One line naming shared memory, docker's
    --shm-size and --workers, exit 1."""
    r = _in_a_shm_of("512k", _tiny_training(_photos_pack(tmp_path, size=128), tmp_path / "run", workers=1))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    # where torch only sizes the file (torch 2.4), the worker dies of SIGBUS as it writes the batch
    died = ("could not pass a batch to this process for want of shared memory in a training step of epoch 1"
            if _shared_memory_is_reserved_when_made() else
            "was killed by SIGBUS in a training step of epoch 1, most likely for want of shared memory")
    assert re.fullmatch(r"alexnet: error: a data-loading worker process \(pid \d+\) " + re.escape(died) + r" "
                        r"\(/dev/shm: \d+ \w+ free of 512 KiB; docker run "
                        r"--shm-size gives a container more\): lower --workers \(1 now\), or the batch size; --workers 0 uses "
                        r"none; no checkpoint had been written yet: nothing to resume", r.stderr.strip().splitlines()[-1]), r.stderr


@_OWN_SHM
def test_too_little_shared_memory_to_start_the_workers_is_one_line(tmp_path):
    """A /dev/shm of 64 KiB has no room even for the semaphores of the loaders' queues (a page each):
    the command said 'alexnet: error: No space left on device', naming neither /dev/shm nor what to
    do, and the half-made loader's 'AttributeError: ... no attribute _workers' was printed below it;
    evaluate --workers 4, whose fourth worker found no room, then waited forever at exit for the three
    started. One line naming /dev/shm and what is free there, docker's --shm-size and --workers 0,
    exit 1; and --workers 0 runs there."""
    pack, out = _photos_pack(tmp_path, size=128), tmp_path / "run"
    said = (r"alexnet: error: data-loading worker processes could not be started for want of shared memory in {doing} "
            r"\(/dev/shm: \d+ KiB free of 64 KiB; docker run --shm-size gives a container more\): lower --workers \({n} now\); "
            r"--workers 0 uses none")
    r = _in_a_shm_of("64k", _tiny_training(pack, out, workers=1))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    assert re.fullmatch(said.format(doing="a training step of epoch 1", n=1) + "; no checkpoint had been written yet: nothing "
                        "to resume", r.stderr.strip().splitlines()[-1]), r.stderr
    assert not out.exists()
    r = _in_a_shm_of("64k", _tiny_training(pack, out, workers=0))
    assert r.returncode == 0 and (out / "last.pt").is_file(), r.stderr
    r = _in_a_shm_of("64k", ["evaluate", str(out / "last.pt"), "--data", str(pack), "--workers", "4", "--progress", "off"])
    assert r.returncode == 1 and "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    assert re.fullmatch(said.format(doing="evaluate", n=4), r.stderr.strip().splitlines()[-1]), r.stderr


# -- 11. The data folder gone mid-run ------------------------------------------------------------------
def _moved_mid_run(monkeypatch, out: Path, then) -> None:
    """Have ``then()`` run at the first image read once ``out`` holds a checkpoint (epoch 2's first batch)."""
    import alexnet.data.folder as folder

    real, done = folder.decode_image, []

    def decode(path, *args, **kwargs):
        if not done and (out / "last.pt").is_file():
            done.append(path)
            then()
        return real(path, *args, **kwargs)

    monkeypatch.setattr(folder, "decode_image", decode)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_data_folder_moved_mid_run_is_one_line_and_the_run_resumes(tmp_path, monkeypatch, capsys, workers):
    """Real (a folder moved while alexnet trained on it): each of its images was a warning ('skipping
    unreadable image ...: FileNotFoundError'), listed as unreadable in bad_files.txt, until an epoch had
    none left and the run stopped with 'validation: no image to score', exit 2, no --resume line: 88
    lines for 88 images, 1.3 million for ImageNet. Now one line naming the folder gone, exit 1, the last
    checkpoint kept, nothing listed unreadable; once it is back, --resume finishes. A single image deleted
    mid-run is still one image skipped, and the run goes on."""
    data, out = tmp_path / "photos", tmp_path / "run"
    make_image_folder(data / "train", classes=2, per_class=6)
    make_image_folder(data / "val", classes=2, per_class=2)
    args = ["train", "--data", str(data), "--out", str(out), "--epochs", "3", "--batch-size", "4", "--workers", workers,
            "--amp", "none", "--threads", "1", "--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32",
            "--model-option", "input_size=64", "--progress", "off"]
    _moved_mid_run(monkeypatch, out, lambda: data.rename(tmp_path / "elsewhere"))  # in each worker: one of them moves it
    capsys.readouterr()
    assert main(args) == 1
    said = capsys.readouterr().err
    assert "skipping" not in said and "Traceback" not in said, said
    err = said.strip().splitlines()[-1]
    assert err == (f"alexnet: error: {data} is gone: moved, deleted or unmounted while alexnet read its images ({data}/train/"
                   f"{err.split('/train/')[1].split(' ')[0]} among them); the run folder keeps the last good checkpoint; "
                   f"continue with: alexnet train --resume {out}"), err
    assert torch.load(out / "last.pt", weights_only=True)["position"]["epoch"] == 1
    assert not (out / "bad_files.txt").exists()
    (tmp_path / "elsewhere").rename(data)
    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--progress", "off"]) == 0
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]

    if workers != "0":  # (a worker's warning is printed where capsys does not see it)
        return
    one = data / "train" / "class1" / "img5.jpg"
    _moved_mid_run(monkeypatch, tmp_path / "run2", one.unlink)
    capsys.readouterr()
    assert main([*args[:4], str(tmp_path / "run2"), *args[5:]]) == 0
    err = capsys.readouterr().err
    assert f"warning: skipping unreadable image {one}: FileNotFoundError" in err, err
    assert (tmp_path / "run2" / "bad_files.txt").read_text().startswith(f"{one}\t")
    assert [json.loads(line)["epoch"] for line in (tmp_path / "run2" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


# -- 12. The run folder gone mid-run -------------------------------------------------------------------
def test_a_run_folder_deleted_mid_run_is_made_again_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    """Real (`rm -r` of a run folder while its run trained): the run went on and wrote its next
    checkpoints into a folder made again without config.json, metrics.jsonl's earlier epochs or its
    lock, silently; a resume of it never wrote config.json. Now the folder is made again, locked, with
    config.json and the whole record of what the run holds, in one warning line; the run ends as the
    uninterrupted one does (the same weights), and a folder without config.json gets one on resume."""
    data, out, ref = tmp_path / "photos", tmp_path / "run", tmp_path / "ref"
    make_image_folder(data / "train", classes=2, per_class=6)
    make_image_folder(data / "val", classes=2, per_class=2)
    args = ["train", "--data", str(data), "--epochs", "3", "--batch-size", "4", "--workers", "0", "--amp", "none",
            "--threads", "1", *TINY, "--model-option", "input_size=64", "--progress", "off", "--seed", "3"]
    assert main([*args, "--out", str(ref)]) == 0
    _moved_mid_run(monkeypatch, out, lambda: shutil.rmtree(out))  # at epoch 2's first image
    capsys.readouterr()
    assert main([*args, "--out", str(out)]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "deleted" in line]
    assert said == [f"warning: {out} was deleted while this run trained; made again at step 6 with config.json, "
                    "metrics.jsonl (1 epoch) and last.pt, of what the run holds; best.pt of an earlier epoch and the "
                    "other files it held are gone"], said
    monkeypatch.undo()
    config, want = (json.loads((d / "config.json").read_text()) for d in (out, ref))
    assert {k: v for k, v in config["train"].items() if k != "out"} == {k: v for k, v in want["train"].items() if k != "out"}
    assert config["data"] == want["data"] and config["model"] == want["model"]
    records = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (out, ref)]
    assert [r["epoch"] for r in records[0]] == [1, 2, 3]
    assert [r["val_top1"] for r in records[0]] == [r["val_top1"] for r in records[1]]
    weights = [torch.load(d / "last.pt", weights_only=True)["model"] for d in (out, ref)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])
    assert not (out / ".lock").exists() and (out / "curves.png").is_file()
    # only the lock file deleted: locked again, the files left as they are
    config_bytes = (out / "config.json").read_bytes()
    _moved_mid_run(monkeypatch, out, lambda: (out / ".lock").unlink())
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "5", "--progress", "off"]) == 0
    assert f"note: {out / '.lock'} was deleted while this run trained: locked again" in capsys.readouterr().err
    monkeypatch.undo()
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert json.loads((out / "config.json").read_text())["resumes"][0]["changed"] == {"epochs": [3, 5]}
    assert json.loads(config_bytes)["train"]["epochs"] == 3
    # a folder left without config.json (as the earlier version made it again): the resume writes it
    (ref / "config.json").unlink()
    assert main(["train", "--resume", str(ref), "--epochs", "4", "--progress", "off"]) == 0
    assert f"note: {ref} had no config.json: written of the options this run goes on with" in capsys.readouterr().err
    config = json.loads((ref / "config.json").read_text())
    assert config["train"]["epochs"] == 4 and config["data"] == want["data"]


def test_a_run_whose_folder_another_run_took_meanwhile_stops_and_leaves_it_alone(tmp_path, monkeypatch, capsys):
    """The folder deleted and, before this run's next checkpoint, made again and locked by another run
    (`rm -r RUN; alexnet train --out RUN`): this run stops in one line naming the holder, writes nothing
    there, and its exit leaves the other run's files (a forced run's set-aside run too) as they are."""
    from alexnet.runfolder import lock, unlock

    data, out, held = tmp_path / "photos", tmp_path / "run", []
    make_image_folder(data / "train", classes=2, per_class=6)
    make_image_folder(data / "val", classes=2, per_class=2)

    def another_run() -> None:
        shutil.rmtree(out)
        (out / ".replaced-run").mkdir(parents=True)
        (out / ".replaced-run" / "config.json").write_text("{}")
        (out / "config.json").write_text('{"theirs": 1}')
        held.append(lock(out))

    _moved_mid_run(monkeypatch, out, another_run)
    capsys.readouterr()
    args = ["train", "--data", str(data), "--out", str(out), "--epochs", "3", "--batch-size", "4", "--workers", "0",
            "--amp", "none", "--threads", "1", *TINY, "--model-option", "input_size=64", "--progress", "off"]
    try:
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == (f"alexnet: error: {out} was deleted while this run trained, and another alexnet train (pid "
                           f"{os.getpid()}) holds the folder made again there: this run stops (its checkpoints went "
                           "with the folder it had)"), err
        assert sorted(os.listdir(out)) == [".lock", ".replaced-run", "config.json"]
        assert (out / "config.json").read_text() == '{"theirs": 1}' and os.listdir(out / ".replaced-run") == ["config.json"]
    finally:
        for fd in held:
            unlock(out, fd)

