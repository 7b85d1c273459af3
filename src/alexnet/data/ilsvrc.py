"""The ILSVRC-2012 layout: train/ synset folders and a flat val/ folder labelled by the devkit.

The devkit's ``ILSVRC2012_validation_ground_truth.txt`` gives, for validation image number i (line
i), an ILSVRC2012_ID from 1 to 1000; ``meta.mat`` maps those IDs to WordNet IDs (the train folder
names). Kaggle's ``LOC_val_solution.csv`` (ImageId, "WNID x y x y ...") is read too.

The same files name the 1000 ILSVRC-2012 synsets (``meta.mat``'s IDs 1-1000, or Kaggle's
``LOC_synset_mapping.txt``): :func:`imagenet_wnids` reads them for a folder of a subset of them.
"""

from __future__ import annotations

import csv
import importlib.util
import re
from pathlib import Path

from ..errors import DataError
from .folder import top_level_images, warn_once

GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
SYNSET_MAPPING = "LOC_synset_mapping.txt"  # Kaggle's: 1000 lines "n01440764 tench, Tinca tinca"
_NUMBER = re.compile(r"(\d+)\.[A-Za-z]+$")
_WNID = re.compile(r"n\d{8}")


def is_wnid(name: str) -> bool:
    """Whether ``name`` is a WordNet ID as ImageNet spells them (n + 8 digits)."""
    return _WNID.fullmatch(name) is not None


def search_roots(root: Path) -> tuple[list[Path], list[Path]]:
    """Where the devkit's files and Kaggle's are looked for, for the data folder ``root``: in it, its
    val/ and the folder above; Kaggle's also where its download keeps them, three folders above the
    data (CHALLENGE/ILSVRC/Data/CLS-LOC/{train,val})."""
    devkit = [root, root / "val", root.parent]
    return devkit, [*devkit, *list(root.parents)[1:3]]


def _find(roots: list[Path], name: str) -> Path | None:
    for r in roots:
        for sub in ("", "data", "ILSVRC2012_devkit_t12/data", "ILSVRC2012_devkit_t12", "devkit/data", "devkit"):
            p = r / sub / name
            if p.is_file():
                return p
    return None


def read_meta(path: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> WNID from the devkit's meta.mat (needs scipy: pip install 'alexnet[imagenet]')."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(f"{path}: reading the devkit's meta.mat needs scipy (pip install scipy)") from None
    try:
        synsets = loadmat(str(path), squeeze_me=True)["synsets"]
        return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
    except Exception as e:  # noqa: BLE001 - any parse failure means "not a devkit meta.mat"
        raise DataError(f"{path}: not an ILSVRC devkit meta.mat ({type(e).__name__}: {e})") from None


def _ground_truth(path: Path) -> list[int]:
    """The devkit's ILSVRC2012_IDs, one per line; a file that is not that is one line naming it (a
    ValueError was an internal error)."""
    words = path.read_text(encoding="utf-8", errors="replace").split()
    bad = next((w for w in words if not w.isdigit()), None)
    if bad is not None:
        raise DataError(f"{path}: not the devkit's validation ground truth (one ILSVRC2012_ID per line; found {bad[:40]!r})")
    return [int(w) for w in words]


def _kaggle_labels(path: Path) -> dict[str, str | None]:
    """ImageId -> WNID (its first box's) of Kaggle's LOC_val_solution.csv; None for a row without
    one. Other columns or a file that is not CSV are one line naming it (KeyError, IndexError and
    csv.Error were internal errors)."""
    try:
        with path.open(newline="", encoding="utf-8", errors="replace") as fh:
            reader = csv.DictReader(fh)
            if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or ()):
                raise DataError(f"{path}: not Kaggle's LOC_val_solution.csv (expected columns ImageId,PredictionString; "
                                f"found {','.join(reader.fieldnames or [])[:80] or 'none'})")
            rows = {}
            for r in reader:
                words = (r["PredictionString"] or "").split()
                rows[r["ImageId"]] = words[0] if words else None
            return rows
    except csv.Error as e:
        raise DataError(f"{path}: not Kaggle's LOC_val_solution.csv ({e})") from None


def val_samples(root: Path, val_dir: Path, folders: list[str]) -> list[tuple[str, int]] | None:
    """(path, class index) of a flat ILSVRC val/ folder, or None when val/ has class sub-folders."""
    files = top_level_images(val_dir)
    if not files:
        return None
    index = {wnid: i for i, wnid in enumerate(folders)}
    roots, kaggle_roots = search_roots(root)
    kaggle = _find(kaggle_roots, "LOC_val_solution.csv")
    truth = _find(roots, GROUND_TRUTH)
    if truth is not None:
        meta = _find([truth.parent, *roots], "meta.mat")
        if meta is None:
            raise DataError(f"{truth}: the devkit's meta.mat (ILSVRC2012_ID -> WNID) is not beside it")
        id_to_wnid = read_meta(meta)
        labels = _ground_truth(truth)
        samples = []
        for f in files:
            m = _NUMBER.search(Path(f).name)
            n = int(m.group(1)) if m is not None else 0
            if not 1 <= n <= len(labels):
                raise DataError(f"{f}: no ground-truth label in {truth} (expected ILSVRC2012_val_NNNNNNNN.JPEG)")
            # Only the lines of images present: a subset's val/ holds its classes' images, and the
            # devkit's 50,000 lines name all 1000 classes (as Kaggle's CSV, read for present files only).
            wnid = id_to_wnid.get(labels[n - 1])
            if wnid not in index:
                raise DataError(f"{f}: its class in {truth} (line {n}: ILSVRC2012_ID {labels[n - 1]}, {wnid}) "
                                "is not a train/ class folder")
            samples.append((f, index[wnid]))
        return samples
    if kaggle is not None:
        rows = _kaggle_labels(kaggle)
        samples = []
        for f in files:
            wnid = rows.get(Path(f).stem)
            if wnid not in index:
                raise DataError(f"{f}: no label for it in {kaggle}")
            samples.append((f, index[wnid]))
        return samples
    raise DataError(
        f"{val_dir}: images directly in val/ but no {GROUND_TRUTH} (+ meta.mat) or LOC_val_solution.csv "
        f"found in {root} or its devkit folder; put the devkit there or move val images into class folders"
    )


def imagenet_wnids(root: Path) -> tuple[list[str], Path] | None:
    """The 1000 ILSVRC-2012 WNIDs, sorted (torchvision's class index is a WNID's rank among them), and
    the file read: the user's own devkit ``meta.mat`` or Kaggle's ``LOC_synset_mapping.txt`` where
    :func:`search_roots` looks for the data folder ``root``; None where there is neither. A meta.mat
    without scipy to read it, or one made for a subset (without all of the IDs 1-1000, which still
    labels a flat val/), is passed over with a warning (once a process): the classes then keep their folder names, as
    before it was read, rather than stop a run that needs no ranks."""
    devkit, kaggle = search_roots(root)
    meta = _find(devkit, "meta.mat")
    if meta is not None and importlib.util.find_spec("scipy") is None:
        warn_once(f"{meta}: reading the devkit's meta.mat needs scipy (pip install scipy); not read")
    elif meta is not None:
        ids = read_meta(meta)
        wnids = [ids.get(i) for i in range(1, 1001)]
        if None not in wnids:
            return _the_1000(meta, [str(w) for w in wnids], "its ILSVRC2012_IDs 1-1000"), meta
        warn_once(f"{meta}: has {1000 - wnids.count(None)} of the ILSVRC2012_IDs 1-1000, not all, so it cannot "
                  "rank the synsets as torchvision numbers them; the classes keep their folder names")
    mapping = _find(kaggle, SYNSET_MAPPING)
    if mapping is None:
        return None
    try:
        text = mapping.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as e:
        raise DataError(f"{mapping}: cannot read it ({e.strerror or e})") from None
    # split at newlines only: splitlines() also splits at U+2028 and \x85, which a name may hold
    lines = [line.split() for line in text.split("\n") if line.strip()]
    return _the_1000(mapping, [words[0] for words in lines], "its lines"), mapping


def _the_1000(path: Path, wnids: list[str], what: str) -> list[str]:
    """``wnids`` sorted, once checked to be 1000 different WNIDs; else a DataError naming ``path``."""
    odd = [w for w in wnids if not is_wnid(w)]
    why = (f"{len(wnids)} synsets, not 1000" if len(wnids) != 1000 else f"{odd[0][:40]!r} is no WNID" if odd
           else f"{1000 - len(set(wnids))} WNID(s) named twice" if len(set(wnids)) != 1000 else None)
    if why is not None:
        raise DataError(f"{path}: not the 1000 ILSVRC-2012 synsets ({what}: {why})")
    return sorted(wnids)
