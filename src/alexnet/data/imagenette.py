"""Imagenette and Imagewoof (fast.ai's 10-class subsets of ImageNet): names and download.

``alexnet download imagenette --out DIR`` fetches fast.ai's ``imagenette2`` archive and unpacks it
to ``DIR/imagenette2/{train,val}/SYNSET/*.JPEG`` with a ``classes.tsv`` beside them, a layout that
``--data`` takes as it is. Class names come from the synsets (ImageNet's index and name), so a copy
from elsewhere (e.g. a mirror of the same photos) gets them too.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from ..errors import DataError
from ..fetch import fetch_url

URLS = {
    "imagenette": "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz",
    "imagenette-320": "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz",
    "imagenette-160": "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz",
    "imagewoof": "https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2.tgz",
}

# WordNet id -> (ImageNet-1k class index, name) of the Imagenette and Imagewoof classes.
SYNSETS: dict[str, tuple[int, str]] = {
    "n01440764": (0, "tench"),
    "n02102040": (217, "English springer"),
    "n02979186": (482, "cassette player"),
    "n03000684": (491, "chain saw"),
    "n03028079": (497, "church"),
    "n03394916": (566, "French horn"),
    "n03417042": (569, "garbage truck"),
    "n03425413": (571, "gas pump"),
    "n03445777": (574, "golf ball"),
    "n03888257": (701, "parachute"),
    "n02086240": (155, "Shih-Tzu"),
    "n02087394": (159, "Rhodesian ridgeback"),
    "n02088364": (162, "beagle"),
    "n02089973": (167, "English foxhound"),
    "n02093754": (182, "Border terrier"),
    "n02096294": (193, "Australian terrier"),
    "n02099601": (207, "golden retriever"),
    "n02105641": (229, "Old English sheepdog"),
    "n02111889": (258, "Samoyed"),
    "n02115641": (273, "dingo"),
}


def synset_names(folders: list[str]) -> list[str] | None:
    """Names of ``folders`` when every one is a known synset, else None."""
    if folders and all(f in SYNSETS for f in folders):
        return [SYNSETS[f][1] for f in folders]
    return None


def _fetch(url: str, dest: Path, show_progress: bool | None) -> None:
    hint = "this needs the internet: download it on a machine that is online, then pass --data"
    fetch_url(url, dest, show_progress, DataError, hint)


def _extract(archive: Path, out: Path) -> None:
    """Unpack ``archive`` into a hidden folder in ``out``, then move its folders into ``out``: one
    stopped half way (Ctrl-C, a full disk) left ``val/`` half unpacked beside a whole ``train/``, which
    the next download took for a finished one. The hidden folder goes on failure (not after SIGKILL)."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".unpacking", dir=out))
    try:
        _extract_into(archive, tmp)
        for entry in sorted(tmp.iterdir()):
            dest = out / entry.name
            if dest.exists() or dest.is_symlink():  # an earlier unpacking's, unfinished: merged into, as before
                shutil.copytree(entry, dest, dirs_exist_ok=True) if entry.is_dir() else os.replace(entry, dest)
            else:
                os.replace(entry, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _files_and_folders(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's "data" filter, and no links at all: fast.ai's archives hold none, and chains of
    links get past the filter of Pythons before 3.11.13 (CVE-2025-4517: a write anywhere)."""
    if not (member.isfile() or member.isdir()):
        raise DataError(f"unsafe member {member.name!r}: a link or special file; not extracted")
    return tarfile.data_filter(member, dest)  # no absolute paths or names out of `dest`


def _extract_into(archive: Path, out: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            try:
                tar.extractall(out, filter=_files_and_folders)
            except TypeError:  # Python < 3.11.4: check the names ourselves
                root = out.resolve()
                for m in tar.getmembers():
                    if not (m.isfile() or m.isdir()) or not (root / m.name).resolve().is_relative_to(root):
                        raise DataError(f"unsafe member {m.name!r}; not extracted") from None
                tar.extractall(out)
    except getattr(tarfile, "FilterError", ()) as e:
        raise DataError(f"{archive}: unsafe member, not extracted ({e})") from None
    except DataError as e:
        raise DataError(f"{archive}: {e}") from None
    except (tarfile.TarError, EOFError) as e:
        raise DataError(f"{archive}: not a readable archive ({e}); delete it and download again") from None


def download(name: str, out: str | os.PathLike, show_progress: bool | None = None) -> Path:
    """Download and unpack ``name`` (a key of :data:`URLS`) into ``out``; returns the folder for --data.

    A finished download is not fetched again; the archive is kept beside the folder.
    """
    if name not in URLS:
        raise DataError(f"unknown data set {name!r}; choose from: {', '.join(URLS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url = URLS[name]
    archive = out / url.rsplit("/", 1)[1]
    folder = out / archive.name.removesuffix(".tgz")
    if not (folder / "train").is_dir() or not (folder / "val").is_dir():
        if not archive.is_file():
            _fetch(url, archive, show_progress)
        _extract(archive, out)
    if not (folder / "train").is_dir():
        raise DataError(f"{archive}: unpacked, but {folder / 'train'} is missing")
    write_classes_tsv(folder)
    return folder


def write_classes_tsv(folder: Path) -> None:
    """``classes.tsv`` (synset, ImageNet index, name) for the known synsets under ``folder/train``."""
    rows = [f"{d}\t{SYNSETS[d][0]}\t{SYNSETS[d][1]}\n" for d in sorted(os.listdir(folder / "train")) if d in SYNSETS]
    if rows:
        (folder / "classes.tsv").write_text("".join(rows), encoding="utf-8")
