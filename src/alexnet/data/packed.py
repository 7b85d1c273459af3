"""The packed format written by ``alexnet prepare``: every image decoded once to 256x256 uint8.

``DIR/index.json`` (written last, so a folder without it is not a finished preparation) names the
classes, the splits with their shards (``SPLIT-NNNNN.npy``: (n, 3, S, S) uint8, memory-mapped when
read, so many processes share the page cache), labels (``SPLIT-labels.npy``), the source file of
every image (``SPLIT-files.txt``), the mean image (``mean_image.npy``, 0-255, float32) and the PCA
statistics of the training split ([0, 1] pixel scale). Unreadable images are listed in
``DIR/bad_files.txt``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import faults, jsonio, runfolder
from ..atomic import check_writable, signals_held
from ..checks import is_whole
from ..errors import DataError, check_labels
from ..installed import versions
from ..runtime import progress
from .folder import BAD_FILES_NAME, BadFiles, class_name, collate
from .sources import PACKED_INDEX, SHARD, check_out_of_images, each_batch, open_folder_splits
from .stats import StatsAccumulator, cache_key, save_npy, save_stats, stats_damage

FORMAT = "alexnet-packed-1"


def read_index(root: str | os.PathLike) -> dict[str, Any]:
    """The index.json of a folder packed by ``alexnet prepare``, checked; DataError naming it when
    unreadable, not such an index, or damaged."""
    path = Path(root) / PACKED_INDEX
    try:
        index = jsonio.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable packed index ({e})") from None
    if not isinstance(index, dict):
        raise DataError(f"{path}: not a packed data set written by 'alexnet prepare' (a JSON {type(index).__name__})")
    if index.get("format") != FORMAT:
        raise DataError(f"{path}: not a packed data set written by 'alexnet prepare' (format {index.get('format')!r})")
    _check_index(index, path)
    if isinstance(index.get("classes"), list):  # packed on another machine, or before names were NFC
        index["classes"] = [class_name(c) if isinstance(c, str) else c for c in index["classes"]]
    return index


def _check_index(index: dict[str, Any], path: Path) -> None:
    """DataError naming ``path`` unless ``index`` has the entries the readers use, of the types
    'alexnet prepare' writes, and names files of its own folder only (no ``../``): a damaged or
    hand-made index was an internal error (KeyError, TypeError), or read .npy files elsewhere."""
    def plain(name: Any) -> bool:
        return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name

    why = None
    if not is_whole(index.get("size"), 1):
        why = f"its size is {index.get('size')!r}, not a whole number of pixels"
    elif not isinstance(index.get("classes"), list) or not index["classes"] or not all(isinstance(c, str) for c in index["classes"]):
        why = "its classes are not a list of names"
    elif not isinstance(index.get("splits"), dict) or "train" not in index["splits"]:
        why = "it lists no train split"
    elif not isinstance(index.get("stats"), dict) or not plain(index["stats"].get("mean_image")):
        why = "its stats name no mean image of the folder"
    else:
        damage = stats_damage(index["stats"], path.parent, (3, index["size"], index["size"]))
        why = f"its stats: {damage}" if damage else None
    for split, info in index.get("splits", {}).items() if why is None else ():
        shards = info.get("shards") if isinstance(info, dict) else None
        if not isinstance(shards, list) or not all(isinstance(s, list) and len(s) == 2 and plain(s[0]) and is_whole(s[1], 0)
                                                   for s in shards):
            why = f"its {split} split's shards are not a list of [file name, image count]"
        elif not plain(info.get("labels")):
            why = f"its {split} split's labels are not a file name of the folder"
        if why:
            break
    if why:
        raise DataError(f"{path}: damaged packed index: {why}; run 'alexnet prepare' again")


class PackedDataset(torch.utils.data.Dataset):
    """One split of a packed folder. ``__getitems__`` gathers a whole batch (DataLoader uses it), so a
    batch is a few memory copies, with no decoding. Items are (image, label, index)."""

    def __init__(self, root: str | os.PathLike, split: str) -> None:
        self.root = Path(root)
        index = read_index(self.root)
        if split not in index["splits"]:
            raise DataError(f"{self.root}: packed data has no {split!r} split (has {', '.join(index['splits'])})")
        info = index["splits"][split]
        self.shards = [(self.root / name, n) for name, n in info["shards"]]
        self.starts = np.cumsum([0] + [n for _, n in self.shards])  # each shard's first index, then the total
        self.labels = _labels(self.root / info["labels"], len(index["classes"]))
        if len(self.labels) != self.starts[-1]:
            raise DataError(f"{self.root}: {split} has {len(self.labels)} labels but {self.starts[-1]} images")
        self.size = index["size"]
        self.digest = info.get("digest")  # of its files' relative paths; None in a pack from before it was kept
        self._maps: list[np.ndarray] | None = None  # not pickled to workers, which open them again
        self._arrays()  # here: a shard of another shape is refused before training starts

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _arrays(self) -> list[np.ndarray]:
        if self._maps is None:
            self._maps = [_shard(path, (n, 3, self.size, self.size)) for path, n in self.shards]
        return self._maps

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None}

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if faults.ACTIVE:  # tests only: ALEXNET_FAULT=kill:load=N
            faults.reached("load")
        maps = self._arrays()
        idx = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(idx), 3, self.size, self.size), dtype=np.uint8)
        shard = np.searchsorted(self.starts, idx, side="right") - 1
        local = idx - self.starts[shard]
        # One copy per image, straight into the batch, in file order (sorted reads are kinder to the
        # disk). A fancy-indexed gather then a scatter into the batch's order copies every byte
        # twice; with np.memmap indexing it ran at a quarter of this rate (benchmarks/data_pipeline.py, (d)).
        shard, local = shard.tolist(), local.tolist()  # Python ints index faster than numpy scalars
        for k in np.argsort(idx, kind="stable").tolist():
            out[k] = maps[shard[k]][local[k]]
        return torch.from_numpy(out), torch.from_numpy(self.labels[idx].astype(np.int64)), torch.from_numpy(idx)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        images, labels, index = self.__getitems__([i])
        return images[0], int(labels[0]), int(index[0])


def _shard(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A shard's images, memory-mapped (a plain ndarray view: np.memmap's indexing costs a subclass
    object per image read), of the index's ``shape`` in bytes; else DataError naming the shard."""
    try:
        images = np.load(path, mmap_mode="r").view(np.ndarray)
    except OSError as e:
        raise DataError(f"{path}: cannot open this shard of the pack ({e.strerror or e})") from None
    except ValueError:  # numpy's message offers allow_pickle, which no command takes
        raise DataError(f"{path}: not a shard of images as 'alexnet prepare' writes them; prepare the pack again") from None
    if images.shape != shape or images.dtype != np.uint8:
        raise DataError(f"{path}: holds {images.dtype} images of shape {images.shape}, not the index's "
                        f"{shape[0]} of {'x'.join(map(str, shape[1:]))} bytes; prepare the pack again")
    return images


def _labels(path: Path, classes: int) -> np.ndarray:
    """A split's labels: integers that index the pack's ``classes``; else DataError naming the file."""
    try:
        labels = np.load(path)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable labels of a packed data set ({getattr(e, 'strerror', None) or e})") from None
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: not the labels 'alexnet prepare' writes (a {labels.dtype} array of shape {labels.shape})")
    check_labels(labels, classes, path, f"the pack's {classes} classes")
    return labels


def batch_passthrough(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """collate_fn for datasets whose ``__getitems__`` already returns the batch."""
    return batch


class _ShardWriter:
    """Cuts a stream of uint8 image batches into ``.npy`` shards of ``shard_size`` images each."""

    def __init__(self, folder: Path, split: str, shard_size: int) -> None:
        self.folder, self.split, self.size = folder, split, shard_size
        self.shards: list[list[Any]] = []  # [file name, images]
        self.buf: list[np.ndarray] = []
        self.held = 0

    def add(self, arr: np.ndarray) -> None:
        while len(arr):
            part, arr = arr[: self.size - self.held], arr[self.size - self.held :]
            self.buf.append(part)
            self.held += len(part)
            if self.held == self.size:
                self.flush()

    def flush(self) -> None:
        if self.buf:
            name = f"{self.split}-{len(self.shards):05d}.npy"
            save_npy(self.folder / name, np.concatenate(self.buf))
            self.shards.append([name, self.held])
            self.buf, self.held = [], 0


def _pack_split(
    ds, split: str, tmp: Path, shard_size: int, workers: int, acc: StatsAccumulator, show_progress: bool | None
) -> dict[str, Any]:
    """Decode one split into shards, labels and a file list in ``tmp``; its index entry."""
    # generator: the base seed each iterator draws comes from it, not from the caller's torch RNG
    loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=workers, collate_fn=collate, generator=torch.Generator())
    writer, files = _ShardWriter(tmp, split, shard_size), []
    # Copied out of each batch, not kept as the batch's label tensors: each, allocated just after its
    # batch's images, kept glibc from reusing their memory (16 KB more resident per 73 px image packed:
    # 1.3 GB for 30,000; 20 GB for ImageNet's 1.28 M at that size, more at 256 px).
    labels = np.empty(len(ds), dtype=np.int64)
    for batch in progress(each_batch(loader), total=len(loader), desc=f"prepare {split}", enabled=show_progress, unit="batch"):
        if batch is None:
            continue
        images, y, idx = batch
        if split == "train":
            acc.add(images)
        writer.add(images.numpy())
        labels[len(files) : len(files) + len(y)] = y.numpy()
        files.extend(ds.samples[i][0] for i in idx.tolist())
    writer.flush()
    if not files:
        raise DataError(f"{ds.root}: no readable images")
    labels = labels[: len(files)].copy()
    empty = [ds.folders[c] for c in range(len(ds.folders)) if not (labels == c).any()]
    if split == "train" and empty:
        raise DataError(f"{ds.root}: class folder(s) with no readable images: {', '.join(empty[:5])}")
    save_npy(tmp / f"{split}-labels.npy", labels)
    # the paths' own bytes, as bad_files.txt holds them, also where they are not UTF-8
    (tmp / f"{split}-files.txt").write_text("".join(f + "\n" for f in files), encoding="utf-8", errors="surrogateescape")
    # the files by their paths relative to the folder (loaders.listing's digest): a pack re-prepared
    # from a changed folder with as many images holds other images at the indices a run held out
    digest = cache_key(files, ds.root, stamps=False)
    return {"count": int(len(labels)), "shards": writer.shards, "labels": f"{split}-labels.npy", "files": f"{split}-files.txt",
            "digest": digest}


def prepare(
    data: str | os.PathLike,
    out: str | os.PathLike,
    strict: bool = False,
    workers: int = 0,
    size: int = 256,
    shard_size: int = 1024,
    show_progress: bool | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Decode every image of ``data`` once, shorter side -> ``size``, central square, into ``out``.

    The shards are written to a temporary folder inside ``out`` and moved into place only when every
    split is done, so an interrupted or failed run leaves any earlier preparation intact. A finished
    preparation in ``out`` is replaced only with ``force``; a folder holding other files is refused.
    Returns the index dict (plus ``bad_files``: the number skipped).
    """
    root, out = Path(data), Path(out)
    _check_paths(root, out, force)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None
    lock = runfolder.lock(out, "prepare")  # one preparation at a time in a folder
    try:  # again, under the lock: another prepare may have finished its pack here since the check
        _check_out(out, force)
    except BaseException:
        runfolder.unlock(out, lock)
        raise
    created = created and not (out / PACKED_INDEX).exists()  # a failure must not delete the other's pack
    try:
        for stale in out.glob(".prepare-*"):  # a killed run's (SIGKILL, out of memory): no live one's, under the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out))
        try:
            index = _pack(root, tmp, size, strict, shard_size, workers, show_progress)
        except OSError as e:
            raise _named_in(e, tmp, out) from None
        with signals_held():  # a Ctrl-C half way through the swap would leave neither preparation
            _swap_in(tmp, out)
    except BaseException:
        if created:  # nothing of a failed first preparation stays behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        runfolder.unlock(out, lock)
    return index


def _named_in(error: OSError, tmp: Path, out: Path) -> OSError:
    """``error``, naming the file of ``out`` it was writing, not its copy in the hidden ``tmp``,
    which goes with the failure ('No space left on device (PACKED/.prepare-v1o58db0/train-00000.npy)');
    an error about another file (an image read) is left as it is."""
    if not error.filename or Path(error.filename).parent != tmp:
        return error
    return OSError(error.errno, error.strerror, str(out / Path(error.filename).name))


def _check_paths(root: Path, out: Path, force: bool) -> None:
    """Refuse, before any image is read, a ``--data``/``--out`` pair that prepare cannot use."""
    if not root.is_dir():
        raise DataError(f"--data: folder not found: {root}")
    if out.resolve() == root.resolve():
        raise DataError("--out must be a different folder from --data")
    check_out_of_images(out, root)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out: not a folder: {out}")
    check_writable(out, "--out", folder=True)  # a file above it, a read-only disk: said before any image is read
    runfolder.refuse_in_use(out, "prepare")
    _check_out(out, force)


def _pack(root: Path, tmp: Path, size: int, strict: bool, shard_size: int, workers: int,
          show_progress: bool | None) -> dict[str, Any]:
    """Write every split of ``root``, its statistics and ``index.json`` into ``tmp``; the index."""
    bad = BadFiles(strict, tmp / BAD_FILES_NAME)  # moved into place with the shards: a failed run keeps the old list
    splits = open_folder_splits(root, size, bad)
    index: dict[str, Any] = {"format": FORMAT, "size": size, "source": os.path.abspath(root), "splits": {}}
    acc = StatsAccumulator()
    for split, ds in splits.items():
        index["folders"], index["classes"] = ds.folders, ds.classes
        index["splits"][split] = _pack_split(ds, split, tmp, shard_size, workers, acc, show_progress)
    stats = acc.result(root)
    save_stats(stats, tmp / "stats.json", tmp / "mean_image.npy")
    index["stats"] = {k: v for k, v in stats.items() if k != "mean_image"}
    index["stats"]["mean_image"] = "mean_image.npy"
    index["bad_files"] = bad.count
    index["versions"] = versions()  # of what decoded and resized the images
    (tmp / PACKED_INDEX).write_text(json.dumps(index, indent=1) + "\n")
    return index


def _swap_in(tmp: Path, out: Path) -> None:
    """Move the finished preparation in ``tmp`` into ``out`` over the old one, ``index.json`` last."""
    if (out / PACKED_INDEX).exists():
        (out / PACKED_INDEX).unlink()  # the old preparation stops being valid before its files go
    new = {f.name for f in tmp.iterdir()}
    for f in out.iterdir():  # an earlier preparation's shards (fewer, larger) and list of bad files that this one does not have
        if (SHARD.match(f.name) or f.name == BAD_FILES_NAME) and f.name not in new:
            f.unlink()
    for f in sorted(tmp.iterdir(), key=lambda p: p.name == PACKED_INDEX):
        os.replace(f, out / f.name)


# Every name a preparation writes (an unfinished one's too: a killed run's temporary folder).
_OWN = re.compile(r"^([a-z]+-(\d{5}\.npy|labels\.npy|files\.txt)|index\.json|stats\.json|mean_image\.npy|"
                  r"bad_files\.txt|\.prepare-.+|\.lock)$")


def _check_out(out: Path, force: bool) -> None:
    """DataError, before any image is read, when ``out`` holds another preparation (without
    ``force``) or files that are not one's: replacing shards there would delete a user's files."""
    if not out.is_dir():
        return
    other = sorted(p.name for p in out.iterdir() if not _OWN.match(p.name))
    if other:
        raise DataError(f"--out {out} holds files that are not a packed data set ({', '.join(other[:3])}"
                        f"{', ...' if len(other) > 3 else ''}): choose a new or empty folder")
    if (out / PACKED_INDEX).is_file() and not force:
        try:
            source = jsonio.loads((out / PACKED_INDEX).read_text()).get("source", "?")
        except (OSError, ValueError, AttributeError):
            source = "?"
        raise DataError(f"--out {out} holds a packed data set (of {source}): give --force to replace it")
