"""The training set's mean image and RGB PCA, computed once in a streaming pass and cached.

Scales: the mean image is on the 0-255 scale of the uint8 pipeline; the pixel mean, covariance,
eigenvalues and eigenvectors are of pixels scaled to **[0, 1]** (the scale on which the paper's
alpha ~ N(0, 0.1) gives a visible but small colour shift). Sums are accumulated in float64.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import jsonio
from ..atomic import atomic_path
from ..checks import is_whole
from ..errors import DataError, recorded_as_memory
from ..runtime import cache_home, progress

if TYPE_CHECKING:
    from .folder import ImageFolderDataset


class StatsAccumulator:
    """Running float64 sums of images (mean image) and of pixels and their outer products (PCA)."""

    def __init__(self) -> None:
        self.n_images = 0
        self.n_pixels = 0
        self.image_sum: torch.Tensor | None = None
        self.s1 = torch.zeros(3, dtype=torch.float64)
        self.s2 = torch.zeros(3, 3, dtype=torch.float64)
        self._work: tuple[torch.Tensor, ...] | None = None  # a batch in float64, its sum, and its pixels on [0, 1]

    def add(self, images: torch.Tensor) -> None:
        """Add a (B, 3, H, W) uint8 batch.

        Its two float64 copies (100 MB each for 64 images of 256 px) and its sum go to buffers kept
        for the pass, and the image sum grows in place. Made anew each batch, with the mean image's sum moved above
        them each time, they left holes that malloc could not reuse, which :func:`alexnet.runtime.keep_freed_memory`
        keeps: a first run's pass over 20,000 photos at 256 px took the process to 10 GB (test_data_pipeline).
        The sums are the same, bit for bit: the same operations on the same values, in the same layout."""
        x, batch_sum, p = self._buffers(images.shape)
        x.copy_(images)
        torch.sum(x, 0, out=batch_sum)
        self.image_sum = batch_sum.clone() if self.image_sum is None else self.image_sum.add_(batch_sum)
        torch.div(x.permute(1, 0, 2, 3), 255.0, out=p.view(3, *images.shape[:1], *images.shape[2:]))
        self.s1 += p.sum(1)
        self.s2 += p @ p.T
        self.n_images += images.shape[0]
        self.n_pixels += p.shape[1]

    def _buffers(self, shape: torch.Size) -> tuple[torch.Tensor, ...]:
        """The float64 buffers of a batch of ``shape``: (B, C, H, W), its sum (C, H, W) and its pixels (C, B*H*W)."""
        if self._work is None or self._work[0].shape != shape:
            self._work = None  # the old ones freed before the new are made (the last, smaller batch)
            x = torch.empty(shape, dtype=torch.float64)
            self._work = x, torch.empty(shape[1:], dtype=torch.float64), torch.empty(shape[1], x.numel() // shape[1], dtype=torch.float64)
        return self._work

    def result(self, source: Any = "the training set") -> dict[str, Any]:
        """mean_image (3, H, W) float32 on 0-255; pixel_mean, pixel_std (0-255), covariance,
        eigvals (descending) and eigvecs (columns) on [0, 1]. ``source`` names the data in errors."""
        if self.n_images == 0 or self.image_sum is None:
            raise DataError(f"{source}: no readable training images to compute the mean image from")
        mean = self.s1 / self.n_pixels
        cov = self.s2 / self.n_pixels - torch.outer(mean, mean)
        eigvals, eigvecs = torch.linalg.eigh(cov)
        order = eigvals.argsort(descending=True)
        eigvals, eigvecs = eigvals[order].clamp_min(0), eigvecs[:, order]
        eigvecs = eigvecs * torch.where(eigvecs.sum(0) < 0, -1.0, 1.0)  # a fixed sign per vector
        return {
            "count": self.n_images,
            "mean_image": (self.image_sum / self.n_images).to(torch.float32),
            "pixel_mean": (mean * 255).tolist(),
            "pixel_std": (cov.diagonal().clamp_min(0).sqrt() * 255).tolist(),
            "covariance": cov.tolist(),
            "eigvals": eigvals.tolist(),
            "eigvecs": eigvecs.tolist(),
        }


def compute_stats(
    dataset: torch.utils.data.Dataset, indices: list[int], workers: int = 0, batch_size: int = 64, show_progress: bool | None = None
) -> tuple[dict[str, Any], list[int]]:
    """Stream ``dataset[indices]`` (items (uint8 image, label, index) or None for a bad file) once.

    Returns (statistics dict, sorted list of the indices that could not be read).
    """
    from .folder import collate
    from .sources import each_batch

    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=batch_size, num_workers=workers, collate_fn=collate,
        generator=torch.Generator(),  # its base seed drawn from here, not from the caller's torch RNG
    )
    acc, good = StatsAccumulator(), set()
    for batch in progress(each_batch(loader), total=len(loader), desc="mean image and PCA", enabled=show_progress, unit="batch"):
        if batch is None:
            continue
        acc.add(batch[0])
        good.update(batch[2].tolist())
    bad = sorted(set(indices) - good)
    return acc.result(getattr(dataset, "root", "the training set")), bad


def cache_key(files: list[str], root: Path, *params: Any, stamps: bool = True) -> str:
    """A key naming one data set and recipe: the files (relative to ``root``, with their sizes and
    modification times, so that a file replaced under the same name changes the key, unless not
    ``stamps``) and the parameters."""
    h = hashlib.sha1()
    relative = _relative_to(root)
    for f in files:
        stamp = ""
        if stamps:
            try:
                st = os.stat(f)
                stamp = f"\t{st.st_size}\t{st.st_mtime_ns}"
            except OSError:  # unreadable: the statistics pass reports it
                stamp = "\t-"
        h.update((relative(f) + stamp).encode("utf-8", "surrogateescape") + b"\n")
    h.update(repr(params).encode())
    return h.hexdigest()[:16]


def _relative_to(root: str | os.PathLike) -> Callable[[str], str]:
    """``os.path.relpath(f, root)`` for many files ``f``: a file listed under ``root`` (its path starts
    with ``root/`` and names no '.', '..' or empty part) by cutting that prefix off, the same string;
    any other by relpath. relpath (two abspaths and a split per call, ~12 us) took 1.2 s per 100,000
    images of the listing's digest and 1.9 s of the statistics key (with its os.stat): 40 s of each
    train start on ImageNet's 1.28 M, 11 s now."""
    prefix = os.path.join(os.fspath(root), "")
    if os.altsep is not None or prefix != os.path.normpath(prefix) + os.sep:  # Windows, or 'a/../b', '.': relpath
        return lambda f: os.path.relpath(f, root)

    def relative(f: str) -> str:
        rest = f[len(prefix) :]
        plain = f.startswith(prefix) and rest and "//" not in rest and not rest.endswith("/")
        plain = plain and f"/{rest}/".find("/./") < 0 and f"/{rest}/".find("/../") < 0
        return rest if plain else os.path.relpath(f, root)

    return relative


# Where earlier alexnet kept the statistics of a writable data folder: among its class folders,
# where torchvision's ImageFolder takes it for a class ('Found no valid file for the classes .alexnet-cache').
LEGACY_CACHE = ".alexnet-cache"


def _from_legacy_cache(root: Path, json_path: Path, mean_path: Path, shape: tuple[int, ...] | None) -> dict[str, Any] | None:
    """Statistics an earlier alexnet kept in ``ROOT/.alexnet-cache``, copied to ``json_path`` (where
    it can write) with a warning that says the old folder can go; None where there are none."""
    old = root / LEGACY_CACHE / json_path.name
    cached, _ = load_stats(old, shape)  # a damaged old cache is computed again, like an absent one
    if cached is None:
        return None
    try:
        save_stats({**cached, "mean_image": torch.from_numpy(np.load(cached["mean_image"]))}, json_path, mean_path)
        moved = load_stats(json_path, shape)[0]
    except OSError:
        moved = None
    where = f"copied to {json_path.parent}, so that folder can be deleted" if moved else "read from there"
    warnings.warn(f"{old.parent}: data statistics kept by an earlier alexnet among the class folders, where "
                  f"torchvision's ImageFolder takes the folder for a class; {where}", stacklevel=3)
    return moved or cached


class _Writer:
    """A file seen only through its ``write``: np.save then writes through Python, whose failed write
    is an OSError with its errno; to a real file it calls tofile(), whose short fwrite() is reported
    as '589824 requested and 102272 written' (no errno: not even 'disk full')."""

    def __init__(self, f: Any) -> None:
        self.write = f.write


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save(path, array)``; a failed write (a full disk) is the OSError saying why, naming ``path``."""
    try:
        with open(path, "wb") as f:
            np.save(_Writer(f), array)
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None


def _write_atomic(path: Path, write) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def save_stats(stats: dict[str, Any], json_path: Path, mean_path: Path, extra: dict[str, Any] | None = None) -> None:
    """Write the statistics as JSON plus the mean image as a float32 .npy, each atomically."""

    _write_atomic(mean_path, lambda tmp: save_npy(tmp, stats["mean_image"].numpy()))
    meta = {k: v for k, v in stats.items() if k != "mean_image"}
    meta["mean_image"] = mean_path.name
    meta.update(extra or {})
    _write_atomic(json_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1) + "\n"))


_TABLES = {"pixel_mean": (3,), "pixel_std": (3,), "eigvals": (3,), "covariance": (3, 3), "eigvecs": (3, 3)}


def stats_damage(meta: Any, folder: Path, shape: tuple[int, ...] | None) -> str | None:
    """What makes statistics read from a cache unusable (a hand-edited or cut-short file), or None;
    ``shape``: the mean image's, where known."""
    if not isinstance(meta, dict):
        return "not a table"
    for key, size in _TABLES.items():
        try:
            a = np.asarray(meta.get(key), dtype=np.float64)
        except (TypeError, ValueError):
            a = np.zeros(0)
        if a.shape != size or not np.isfinite(a).all():
            return f"{key} is not {' x '.join(map(str, size))} finite numbers"
    if not is_whole(meta.get("count"), 1):
        return "count is not a whole number >= 1"
    if not isinstance(meta.get("bad", []), list) or not all(isinstance(p, str) for p in meta.get("bad", [])):
        return "bad is not a list of paths"
    if not isinstance(meta.get("bad_reasons", {}), dict) or not isinstance(meta.get("root", ""), str):
        return "bad_reasons or root is malformed"
    if not isinstance(meta.get("mean_image"), str):
        return "mean_image names no file"
    try:
        mean = np.load(folder / meta["mean_image"], mmap_mode="r")
    except (OSError, ValueError) as e:
        return f"{meta['mean_image']}: {getattr(e, 'strerror', None) or e}"
    if mean.dtype != np.float32 or mean.ndim != 3 or (shape is not None and mean.shape != shape):
        return f"{meta['mean_image']} holds {mean.dtype} of shape {mean.shape}, not float32 of shape {shape or '(C, H, W)'}"
    return None


def load_stats(json_path: Path, shape: tuple[int, ...] | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """Statistics saved by :func:`save_stats` (mean image left as its path) and None; (None, None) if
    absent; (None, what is wrong) if damaged (see :func:`stats_damage`)."""
    try:
        meta = jsonio.loads(json_path.read_text())
    except (FileNotFoundError, NotADirectoryError):  # not cached (NotADirectory: the cache folder is a file)
        return None, None
    except OSError as e:
        return None, f"unreadable ({e.strerror or e})"
    except ValueError:
        return None, "not valid JSON: cut short or hand-edited"
    why = stats_damage(meta, json_path.parent, shape)
    if why is not None:
        return None, why
    meta["mean_image"] = str(json_path.parent / meta["mean_image"])
    return meta, None


def _rebased(cached: dict[str, Any], root: str) -> dict[str, Any]:
    """Cached statistics of the same files under another root (the data folder was moved or renamed
    since: the cache key is of relative paths), with their unreadable files' paths under ``root``;
    under the old paths they were neither skipped nor recognised, and were reported twice."""
    old = cached.get("root")
    if not isinstance(old, str) or old == root:
        return cached

    def move(path: str) -> str:
        return os.path.join(root, os.path.relpath(path, old))

    reasons = cached.get("bad_reasons") if isinstance(cached.get("bad_reasons"), dict) else {}
    return {**cached, "root": root, "bad": [move(p) for p in cached.get("bad", [])],
            "bad_reasons": {move(p): why for p, why in reasons.items()}}


def _listed_for_want_of_memory(cached: dict[str, Any]) -> bool:
    """Whether a cached pass listed as unreadable an image it had no memory to decode (releases before
    this one did, where now the pass stops: errors.decoding_failure): that list would skip a good
    image in every later run."""
    reasons = cached.get("bad_reasons")
    return isinstance(reasons, dict) and any(recorded_as_memory(str(r)) for r in reasons.values())


def folder_stats(dataset: ImageFolderDataset, indices: list[int], workers: int = 0, show_progress: bool | None = None) -> dict[str, Any]:
    """Mean image and PCA of an :class:`ImageFolderDataset` subset, from the cache when computed
    before. The result's ``mean_image`` is the path of the cached .npy; ``bad`` lists unreadable files."""
    files = dataset.samples.paths(indices)
    # stats-2: photos turned upright by their EXIF orientation tag (folder.decode_bytes); stats-1's
    # mean image saw them as stored, sideways, and is computed again (once) rather than reused.
    key = cache_key(files, dataset.root, dataset.resize, dataset.size, "stats-2")
    try:
        # alexnet's cache folder, never the data folder, which other tools list (torchvision's ImageFolder
        # takes every folder in it for a class); the key names the files, so one folder serves every data set
        folder, no_cache = cache_home(), None
    except OSError as e:  # no folder to cache in (no home folder): said where the save would be
        folder, no_cache = Path(), e
    json_path, mean_path = folder / f"stats-{key}.json", folder / f"mean-{key}.npy"
    size = dataset.size if isinstance(dataset.size, int) else None
    shape = (getattr(dataset, "channels", 3), size, size) if size else None
    cached, damage = load_stats(json_path, shape) if no_cache is None else (None, None)
    if cached is None and damage is None and no_cache is None:
        cached = _from_legacy_cache(dataset.root, json_path, mean_path, shape)
    if damage is not None:  # a cache never stops a run
        warnings.warn(f"{json_path}: cached data statistics are damaged ({damage}); computing them again", stacklevel=2)
    if cached is not None and _listed_for_want_of_memory(cached):
        cached = None  # computed again, with the memory this run has
    if cached is not None:
        cached = _rebased(cached, str(dataset.root))
        reasons = cached.get("bad_reasons") if isinstance(cached.get("bad_reasons"), dict) else {}
        for path in cached.get("bad", []):  # --strict names the first with the reason its decoder gave
            dataset.bad.report(path, f"{reasons.get(path, 'unreadable')} (found by the cached statistics pass)")
        return cached
    stats, bad = compute_stats(dataset, indices, workers, show_progress=show_progress)
    paths, said = dataset.samples.paths(bad), dataset.bad.reasons()
    extra = {"bad": paths, "bad_reasons": {p: said[p] for p in paths if p in said}, "root": str(dataset.root)}
    try:
        if no_cache is not None:
            raise no_cache
        save_stats(stats, json_path, mean_path, extra)
    except OSError as e:  # a read-only data folder and home: a cache not kept is no reason to stop
        where = e.filename or folder
        warnings.warn(f"{where}: cannot keep the data statistics ({e.strerror or e}), so the next run computes them "
                      "again; set ALEXNET_CACHE to a writable folder", stacklevel=2)
        return {**stats, **extra}
    return load_stats(json_path, shape)[0] or {**stats, "mean_image": str(mean_path)}
