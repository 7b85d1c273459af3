"""`alexnet download imagenette`: unpacks fast.ai's archive layout, names classes, fails in one line."""

from __future__ import annotations

import io
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import make_image_folder

from alexnet.cli import main
from alexnet.data import imagenette
from alexnet.data.folder import find_classes
from alexnet.errors import DataError


def _archive(tmp_path: Path) -> Path:
    """An imagenette2.tgz in fast.ai's layout: imagenette2/{train,val}/SYNSET/*.jpg."""
    top = tmp_path / "src" / "imagenette2"
    for split in ("train", "val"):
        make_image_folder(top / split, classes=2, per_class=2)
        for i, synset in enumerate(("n01440764", "n03000684")):
            (top / split / f"class{i}").rename(top / split / synset)
    path = tmp_path / "imagenette2.tgz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(top, arcname="imagenette2")
    return path


def test_download_unpacks_and_names_the_classes(tmp_path, monkeypatch):
    archive = _archive(tmp_path)
    monkeypatch.setitem(imagenette.URLS, "imagenette", archive.as_uri())
    root = imagenette.download("imagenette", tmp_path / "out", show_progress=False)
    assert root == tmp_path / "out" / "imagenette2"
    assert (root / "classes.tsv").read_text() == "n01440764\t0\ttench\nn03000684\t491\tchain saw\n"
    assert find_classes(root / "train") == (["n01440764", "n03000684"], ["tench", "chain saw"])
    # Without classes.tsv (a copy from elsewhere), the synsets still give the names.
    (root / "classes.tsv").unlink()
    assert find_classes(root / "val")[1] == ["tench", "chain saw"]
    # Done once: a second call neither downloads nor unpacks again.
    archive.unlink()
    (tmp_path / "out" / "imagenette2.tgz").unlink()
    assert imagenette.download("imagenette", tmp_path / "out", show_progress=False) == root


def test_download_stopped_while_unpacking_leaves_no_half_folder(tmp_path, monkeypatch):
    """A Ctrl-C (or SIGTERM) while the archive was unpacked left a whole train/ beside a half val/:
    the next download found both folders, unpacked nothing and returned half a data set. Now the
    archive is unpacked in a hidden folder and moved in whole; the next download unpacks it again."""
    archive = _archive(tmp_path)
    files = sorted(m.name for m in tarfile.open(archive) if m.isfile())
    assert files[-1].startswith("imagenette2/val/")
    monkeypatch.setitem(imagenette.URLS, "imagenette", archive.as_uri())
    out = tmp_path / "out"
    extract = tarfile.TarFile._extract_member

    def stop_at_the_last_file(self, tarinfo, *args, **kwargs):
        if tarinfo.name == files[-1]:
            raise KeyboardInterrupt
        return extract(self, tarinfo, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "_extract_member", stop_at_the_last_file)
    with pytest.raises(KeyboardInterrupt):
        imagenette.download("imagenette", out, show_progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["imagenette2.tgz"]  # the archive, kept; no folder, no temporary
    monkeypatch.setitem(imagenette.URLS, "imagenette", archive.as_uri())
    root = imagenette.download("imagenette", out, show_progress=False)
    assert sorted(str(p.relative_to(out)) for p in root.rglob("*.jpg")) == files


def test_download_offline_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(imagenette.URLS, "imagenette", "http://127.0.0.1:9/imagenette2.tgz")  # nothing listens there
    assert main(["download", "imagenette", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("alexnet: error: cannot download http://127.0.0.1:9/imagenette2.tgz"), err
    assert "needs the internet" in err[0]
    assert not (tmp_path / "out").exists()  # the folder it made for the download is gone again
    kept = tmp_path / "kept"
    (kept / "old").mkdir(parents=True)
    assert main(["download", "imagenette", "--out", str(kept)]) == 2
    assert [p.name for p in kept.iterdir()] == ["old"]  # a folder that was there stays, without a .part


def _offline(monkeypatch) -> list[str]:
    """Make every urllib request fail as it does without a network; the URLs asked for."""
    asked: list[str] = []

    def refuse(url, *args, **kwargs):
        asked.append(getattr(url, "full_url", url))
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return asked


def test_fashion_mnist_offline_is_one_line_and_leaves_no_folders(tmp_path, monkeypatch, capsys):
    asked = _offline(monkeypatch)
    out = tmp_path / "new" / "fm"
    assert main(["download", "fashion-mnist", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert captured.out == ""  # torchvision < 0.20 printed each mirror it tried and why it failed
    assert len(err) == 1 and err[0].startswith("alexnet: error: cannot download Fashion-MNIST from http"), err
    assert "Name or service not known" in err[0] and "needs the internet" in err[0] and asked
    assert list(tmp_path.iterdir()) == []  # new/, fm/, FashionMNIST/ and raw/ were all made by the download
    (out / "old").mkdir(parents=True)
    assert main(["download", "fashion-mnist", "--out", str(out)]) == 2
    assert [p.name for p in out.iterdir()] == ["old"]  # what existed stays


@pytest.mark.parametrize("dataset", ["imagenette", "fashion-mnist"])
def test_an_out_folder_under_a_file_names_the_option(tmp_path, monkeypatch, capsys, dataset):
    """--out a file (or a folder under one) said 'File exists (FILE)' or 'Not a directory', exit 1,
    naming no option; now it is refused before any download, as every other command's --out is."""
    asked = _offline(monkeypatch)
    (tmp_path / "afile").write_text("mine")
    for out in (tmp_path / "afile", tmp_path / "afile" / "data"):
        assert main(["download", dataset, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err == f"alexnet: error: --out {out}: cannot write there: {tmp_path / 'afile'} is a file, not a folder\n"
    assert not asked and (tmp_path / "afile").read_text() == "mine"


def test_an_archive_that_escapes_its_folder_is_refused(tmp_path):
    path = tmp_path / "imagenette2.tgz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(DataError, match="unsafe member"):
        imagenette._extract(path, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


def _link_chain_archive(path: Path, out: Path, target: Path) -> None:
    """A tar whose chain of links gets past tarfile's "data" filter before Python 3.11.13
    (CVE-2025-4517, as CPython's test_realpath_limit_attack builds it): ``escape/pwned`` lands in
    ``target``, beside ``out``, when unpacked into ``out``'s hidden unpacking folder."""
    steps = "abcdefghijklmnop"
    dest = len(str(out / f".{path.name}.xxxxxxxx.unpacking")) + 1  # tempfile.mkdtemp's 8 letters
    part = "d" * ((os.pathconf(out.parent, "PC_PATH_MAX") - dest) // (len(steps) + 1))

    def add(tar: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes = b"") -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size = kind, link, len(data)
        info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    with tarfile.open(path, "w") as tar:
        inner = ""
        for step in steps:
            add(tar, os.path.join(inner, part), tarfile.DIRTYPE)
            add(tar, os.path.join(inner, step), tarfile.SYMTYPE, part)
            inner = os.path.join(inner, part)
        top = os.path.join(*steps, "l" * 254)
        add(tar, top, tarfile.SYMTYPE, os.path.join(*[".."] * len(steps)))  # the unpacking folder
        add(tar, "escape", tarfile.SYMTYPE, os.path.join(top, "..", "..", target.name))
        add(tar, "escape/pwned", data=b"owned")


@pytest.mark.skipif(not hasattr(os, "pathconf"), reason="needs PATH_MAX (POSIX)")
def test_an_archive_whose_links_escape_the_filter_is_refused(tmp_path, capsys):
    """Any link is refused: fast.ai's archives hold none, and a chain of them got past the "data"
    filter of this project's Python 3.11.7 and wrote outside --out (a planted imagenette2.tgz)."""
    out, target = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    target.mkdir()
    _link_chain_archive(out / "imagenette2.tgz", out, target)
    assert main(["download", "imagenette", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "imagenette2.tgz: unsafe member" in err and "a link" in err and len(err.strip().splitlines()) == 1
    assert list(target.iterdir()) == [] and sorted(p.name for p in out.iterdir()) == ["imagenette2.tgz"]


def test_fashion_mnist_cut_short_while_unpacking_is_unpacked_again(tmp_path, monkeypatch, capsys):
    """A download stopped while torchvision unpacked an archive left its IDX file short; torchvision
    takes a file that exists for done, so the rerun kept it and every command refused the folder
    ('truncated IDX file'). The rerun now unpacks it again from the archive beside it, offline."""
    import gzip
    import hashlib
    import shutil

    from torchvision.datasets import FashionMNIST

    from alexnet.data.fashion_mnist import DEBIAN_ROOT, load_fashion_mnist

    if not DEBIAN_ROOT.is_dir():
        pytest.skip(f"needs Debian's dataset-fashion-mnist in {DEBIAN_ROOT}")
    raw = tmp_path / "fm" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    resources = []
    for archive in sorted(DEBIAN_ROOT.glob("*.gz")):  # what a finished download holds: archives and their contents
        shutil.copy(archive, raw / archive.name)
        (raw / archive.stem).write_bytes(gzip.decompress(archive.read_bytes()))
        resources.append((archive.name, hashlib.md5(archive.read_bytes()).hexdigest()))  # Debian's own gzip
    monkeypatch.setattr(FashionMNIST, "resources", resources)
    whole = (raw / "t10k-images-idx3-ubyte").read_bytes()
    (raw / "t10k-images-idx3-ubyte").write_bytes(whole[: len(whole) // 3])  # stopped a third of the way
    asked = _offline(monkeypatch)
    assert main(["download", "fashion-mnist", "--out", str(tmp_path / "fm")]) == 0, capsys.readouterr().err
    assert (raw / "t10k-images-idx3-ubyte").read_bytes() == whole and not asked
    assert load_fashion_mnist(tmp_path / "fm", "test")[0].shape == (10000, 1, 28, 28)
