"""``load_data``: turn ``--data`` into train/validation batch streams and the preprocessing recipe.

Batches are (uint8 images, labels, sample indices); :func:`model_input` then crops, mirrors and
normalises a whole batch at once on the training device.
"""

from __future__ import annotations

import atexit
import math
import os
import signal
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import STOP_SIGNALS
from ..checks import require_loader_sizes
from ..errors import DataError, WorkerSocketLost
from ..runtime import counted, release_freed_memory
from . import augment, presets
from .cifar import load_cifar
from .device_decode import DeviceDecoder, collate_raw
from .fashion_mnist import CLASSES as FMNIST_CLASSES
from .fashion_mnist import data_root, load_fashion_mnist, missing_message
from .folder import BAD_FILES_NAME, BadFiles, ImageFolderDataset, collate, printable
from .packed import PackedDataset, batch_passthrough, read_index
from .presets import IMAGENET_MEAN, IMAGENET_STD, Preprocess  # noqa: F401 - the means re-exported (old import path)
from .sources import (
    detect,
    fetching_from,
    has_split_folders,
    kill_workers,
    open_folder_splits,
    start_workers,
    stop_workers,
)
from .stats import StatsAccumulator, cache_key, folder_stats


class EpochBatchSampler:
    """Batches of indices in an order fixed by (seed, epoch); optionally one shard of ``world`` ranks.

    ``start`` skips the first batches of an epoch (resuming mid-epoch).
    """

    def __init__(
        self, n: int, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False, rank: int = 0, world: int = 1
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world = drop_last, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate ``epoch``'s order next (:meth:`order`), from its batch ``start`` on."""
        self.epoch, self.start = epoch, start

    def order(self) -> torch.Tensor:
        """All ``n`` indices in this epoch's order: a permutation drawn from (seed, epoch) when
        shuffling, else 0..n-1; the same on every rank."""
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.n, generator=g)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        for b in range(self.start, len(self)):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size]
            # Every rank takes every world-th sample of the global batch: the global batch is the
            # same whatever the number of ranks.
            yield batch[self.rank :: self.world].tolist()


class TensorBatches:
    """Batches from images held in memory as one uint8 tensor (Fashion-MNIST, CIFAR).

    With ``pin``, each batch lies in page-locked memory, as the DataLoader's ``pin_memory`` makes
    it: its copy to a GPU is then asynchronous; from ordinary memory it would wait for the queued step.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, sampler: EpochBatchSampler, pin: bool = False) -> None:
        self.images, self.labels, self.sampler, self.pin = images, labels, sampler, pin

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for idx in self.sampler:
            index = torch.tensor(idx, dtype=torch.int64)
            batch = self.images[index], self.labels[index], index
            yield tuple(t.pin_memory() for t in batch) if self.pin else batch


@dataclass
class DataBundle:
    """What :func:`load_data` returns."""

    train: Any
    val: Any
    classes: list[str]
    preprocess: Preprocess
    train_size: int
    val_size: int
    source: str
    notes: list[str] = field(default_factory=list)
    bad_files: BadFiles | None = None  # unreadable images met so far (count, paths, list file)
    held_out_of: dict[str, Any] | None = None  # without a val split: what the held-out tenth was drawn from (:func:`listing`)
    folders: list[str] | None = None  # the class folders' names on disk, where ``classes`` may name them otherwise
    names_from: str | None = None  # where ``classes`` came from (a classes.tsv, an ImageNet mapping, ...), for the run's record

    def close(self) -> None:
        """Stop the loaders' worker processes now (see :meth:`Batches.close`)."""
        for loader in (self.train, self.val):
            if isinstance(loader, Batches):
                loader.close()


class Batches:
    """A DataLoader with the epoch sampler exposed (``sampler_``) and worker errors made one line."""

    def __init__(self, loader: torch.utils.data.DataLoader, sampler: EpochBatchSampler, decode: DeviceDecoder | None = None) -> None:
        self.loader, self.sampler_, self.decode = loader, sampler, decode
        self.siblings: list[Batches] = []  # loaders whose workers start with these (training's: validation's)
        if loader.num_workers:
            _stopped_at_exit(self)

    def __len__(self) -> int:
        return len(self.loader)

    def start(self) -> None:
        """Fork the persistent workers now, idle (nothing fetched), if they are not running. The
        training loader starts its siblings' (validation's) with its own, before the first step: forked
        at the first validation instead, they kept a stale copy of everything the training process had
        written since (its weights, gradients, momentum and the freed activations that malloc keeps):
        `alexnet train` on Imagenette photos at the defaults peaked at 6.7 GB with its workers, 3.0 GB
        since (benchmarks/memory.py)."""
        if not self.loader.num_workers or getattr(self.loader, "_iterator", None) is not None or self.sampler_ is None:
            return  # (no sampler to empty: a loader of the caller's own, whose workers start with its first batch)
        epoch, start = self.sampler_.epoch, self.sampler_.start
        self.sampler_.set_epoch(epoch, len(self.sampler_))  # an empty epoch: the workers start with nothing to fetch
        try:
            release_freed_memory()  # nor a copy of what this process freed (the statistics pass's batches)
            start_workers(self.loader)  # a persistent loader keeps the iterator, its workers alive
        finally:
            self.sampler_.set_epoch(epoch, start)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
        for sibling in self.siblings:
            sibling.start()
        self.start()
        batches = start_workers(self.loader)  # the persistent workers start at the first epoch's
        try:
            with fetching_from(batches):
                if self.decode is None:
                    yield from batches
                else:
                    for batch in batches:
                        yield self.decode(batch)
        except WorkerSocketLost:  # the other loaders' sockets lay under the same TMPDIR: gone too, most likely
            for other in list(_WITH_WORKERS):  # (their workers' clean-up at exit printed a traceback each)
                kill_workers(getattr(other.loader, "_iterator", None))
            raise

    def close(self) -> None:
        """Stop the persistent worker processes now. Left to the garbage collector (a training
        run's closures hold the loaders in a reference cycle), the iterator's queues are finalised
        before the iterator, its stop signal never reaches the workers, and each is joined only
        after a 5 s timeout: 20 s at the end of a run with two workers."""
        iterator = getattr(self.loader, "_iterator", None)
        self.loader._iterator = None
        stop_workers(iterator)


_WITH_WORKERS: weakref.WeakSet[Batches] = weakref.WeakSet()


def _stopped_at_exit(batches: Batches) -> None:
    """Have ``batches``' persistent workers stopped at the interpreter's exit if its caller left them
    running. Left to the collector, a loader in a reference cycle (over a tqdm 4.60 bar) lost their stop
    signal, and multiprocessing's exit hook then waited forever on workers that ignore SIGTERM
    (:func:`_start_worker`). Registered after torch's and multiprocessing's hooks, this one runs first."""
    if not _WITH_WORKERS:
        atexit.unregister(_stop_all)  # once
        atexit.register(_stop_all)
    _WITH_WORKERS.add(batches)


def _stop_all() -> None:
    for batches in list(_WITH_WORKERS):
        batches.close()


def _at_most_the_images(batch_size: int, images: int, notes: list[str]) -> int:
    """The training batch size, cut to the number of training images where they are fewer (with a
    note): full batches only would train no image at all."""
    if images >= batch_size:
        return batch_size
    notes.append(f"batch size reduced to the {counted(images, 'training image')}")
    return images


def _batches(ds, indices, bs, shuffle, drop_last, seed, rank, world, workers, pin_memory, decode_device=None) -> Batches:
    """A :class:`Batches` over ``ds[indices]``; with ``decode_device``, an image folder's JPEGs are
    decoded there (:mod:`alexnet.data.device_decode`) instead of in the workers."""
    decode = None
    if decode_device is not None and isinstance(ds, ImageFolderDataset):
        ds.raw, decode = True, DeviceDecoder(ds, decode_device)
    # an array, not a list: a worker reading a list's int objects writes their reference counts, and so
    # copies the pages that hold them (folder.ImageList)
    subset = torch.utils.data.Subset(ds, np.asarray(indices, dtype=np.int64))
    sampler = EpochBatchSampler(len(indices), bs, shuffle, seed, drop_last, rank, world)
    dl = torch.utils.data.DataLoader(
        subset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=batch_passthrough if isinstance(ds, PackedDataset) else collate_raw if decode else collate,
        # The encoded bytes go to the decoder as plain CPU tensors: pinning them is a copy for nothing.
        pin_memory=pin_memory and decode is None,
        persistent_workers=workers > 0,
        # Each new iterator draws its workers' base seed from this generator; without one it draws
        # from the global torch RNG, which also makes the dropout masks: a resumed run (a new
        # iterator mid-epoch, where the uninterrupted run drew none) would then drop other units.
        # The workers draw no random numbers (augmentation is a function of seed, epoch and image
        # index: model_input), so their seed need not follow the epoch.
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_start_worker if workers else None,
    )
    return Batches(dl, sampler, decode)


def _start_worker(_worker_id: int) -> None:
    """A data-loading worker's start. It ignores SIGTERM, SIGINT and SIGHUP: the training process saves and
    stops on them, then ends its workers. systemd, docker and SLURM signal every process of a job, and
    torch's own worker handler would end a worker at once, failing the run in the middle of its step
    instead. (Its warnings' own line: sources.start_workers, as every loader's workers.)"""
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)


def _default_preset(kind: str) -> str:
    return {"fashion_mnist": "fashion_mnist", "cifar": "cifar"}.get(kind, "paper")


def load_data(
    data: str | os.PathLike | None,
    batch_size: int,
    input_size: int,
    workers: int = 0,
    seed: int = 0,
    eval_batch_size: int | None = None,
    pin_memory: bool = False,
    rank: int = 0,
    world: int = 1,
    val_fraction: float = 0.1,
    preset: str | None = None,
    strict: bool = False,
    out_dir: str | os.PathLike | None = None,
    show_progress: bool | None = None,
    decode_device: torch.device | str | None = None,
) -> DataBundle:
    """Open ``data``: Fashion-MNIST IDX files (default: Debian's folder), CIFAR-10/100 python
    batches, a packed folder written by ``alexnet prepare``, or an image folder.

    An image folder (or packed folder) may hold ``train/`` and ``val/`` splits; otherwise a seeded
    ``val_fraction`` is held out for validation. ``preset`` names the preprocessing recipe
    (:mod:`alexnet.data.presets`; default: ``paper`` for images, ``fashion_mnist`` / ``cifar``).
    Unreadable images are skipped with one warning each and listed in ``out_dir/bad_files.txt``
    (when ``out_dir`` is given), or stop the run with a DataError when ``strict``. With
    ``decode_device``, an image folder's JPEGs are decoded on that device (nvJPEG on a GPU).
    """
    root = data_root(data)
    eval_batch_size = eval_batch_size or batch_size
    if data is None and not root.exists():
        raise DataError(missing_message(root))
    kind = detect(root)
    common = dict(batch_size=batch_size, eval_batch_size=eval_batch_size, input_size=input_size, seed=seed, rank=rank, world=world)
    if kind in ("fashion_mnist", "cifar"):
        common["pin"] = pin_memory
    if kind == "fashion_mnist":
        x_train, y_train = load_fashion_mnist(root, "train")
        x_test, y_test = load_fashion_mnist(root, "test")
        source = f"Fashion-MNIST ({root})"
        return _tensors("fashion_mnist", preset, x_train, y_train, x_test, y_test, list(FMNIST_CLASSES), source, **common)
    if kind == "cifar":
        x_train, y_train, names = load_cifar(root, "train")
        x_test, y_test, _ = load_cifar(root, "test")
        return _tensors("cifar", preset, x_train, y_train, x_test, y_test, names, f"CIFAR-{len(names)} ({root})", **common)
    bad = BadFiles(strict, Path(out_dir) / BAD_FILES_NAME if out_dir is not None else None)
    loading = (workers, pin_memory, decode_device)
    return _images(root, preset or "paper", bad, loading, val_fraction, show_progress, **common)


def _tensor_stats(images: torch.Tensor) -> dict[str, Any]:
    """Statistics of an in-memory uint8 data set (see :mod:`alexnet.data.stats`)."""
    if images.shape[1] == 3:
        acc = StatsAccumulator()
        for chunk in images.split(4096):
            acc.add(chunk)
        return acc.result()
    x = images.to(torch.float64)
    return {
        "mean_image": x.mean(0).to(torch.float32),
        "pixel_mean": x.mean((0, 2, 3)).tolist(),
        "pixel_std": x.std((0, 2, 3)).tolist(),
        "eigvals": None,
    }


def _tensors(
    kind, preset, x_train, y_train, x_test, y_test, classes, source, batch_size, eval_batch_size, input_size, seed, rank, world, pin
):
    preset = preset or _default_preset(kind)
    stats = _tensor_stats(x_train) if presets.needs_stats(preset) else None
    side = x_train.shape[-1]
    base = {"dataset": kind, "resize": None, "size": side, "train_crop": side, "test_crop": side, "input_size": input_size}
    preprocess = presets.resolve(preset, stats, base, channels=x_train.shape[1])
    notes: list[str] = []
    batch_size = _at_most_the_images(batch_size, len(x_train), notes)
    train = TensorBatches(x_train, y_train, EpochBatchSampler(len(x_train), batch_size, True, seed, True, rank, world), pin)
    val = TensorBatches(x_test, y_test, EpochBatchSampler(len(x_test), eval_batch_size, False, rank=rank, world=world), pin)
    return DataBundle(train, val, classes, preprocess, len(x_train), len(x_test), source, notes)


def held_out(n: int, seed: int, val_fraction: float = 0.1) -> tuple[list[int], list[int]]:
    """(training, validation) indices of a data set of ``n`` images without a val split: a seeded
    ``val_fraction`` held out. Evaluation of a checkpoint on its own data asks for the same split."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(round(n * val_fraction)))
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def _stored_size(input_size: int) -> int:
    """The side an image folder's photos are resized to for ``input_size`` crops: 256 for the paper's
    224 crops and Caffe's 227 (bvlc_alexnet, as 'import caffe' records); other input sizes keep the
    paper's 256 -> 224 ratio."""
    return 256 if input_size in (224, 227) else round(input_size * 256 / 224)


# The paper's crops cover 224/256 of each side of the stored image; Caffe's 227/256 and prepare's
# smallest suggested input (63 of 71) are within this of it.
_CROP_RATIO_SLACK = 0.05


def crop_ratio_note(root: Path, stored: int, input_size: int) -> str | None:
    """A note for a pack whose images are not the size the crops keep the paper's 224-of-256 ratio to.

    An image folder is resized for the model's input (64 px crops of 73 px images), but a pack keeps
    the size it was prepared at: 'alexnet prepare' (256 px by default) then 'train --model-option
    input_size=64' cut 64 px crops from 256 px images, a quarter of each side (6 % of the photo)
    where the same command on the folder sees 88 % of each side, without a word.
    """
    if abs(input_size / stored - 224 / 256) <= _CROP_RATIO_SLACK:
        return None
    fits = _stored_size(input_size)
    share = 100 * input_size / stored
    return (f"{root}: packed at {stored} px, so {input_size} px crops (the centre crop, and the paper recipe's "
            f"random crops) cover {share:.0f} % of each image's side, not the paper's 224 of 256 (88 %) that an "
            f"image folder gets (resized to {fits} px for this input); 'alexnet prepare --size {fits}' packs for it")


def _open_pack(root: Path, input_size: int, notes: list[str]) -> tuple[dict[str, Any], dict[str, PackedDataset]]:
    """A packed data set's index and splits for a network of ``input_size``, refused where its images
    are smaller; its notes (crops that cover another share of the image, images prepare skipped) go
    to ``notes``."""
    index = read_index(root)
    splits = {name: PackedDataset(root, name) for name in index["splits"]}
    if index["size"] < input_size:
        raise DataError(f"{root}: packed images are {index['size']}px, smaller than the model's {input_size}px input")
    ratio = crop_ratio_note(root, index["size"], input_size)
    if ratio:
        notes.append(ratio)
    if index.get("bad_files"):
        notes.append(f"{counted(index['bad_files'], 'unreadable image')} skipped by 'alexnet prepare' (see {root / BAD_FILES_NAME})")
    return index, splits


def _images(root, preset, bad, loading, val_fraction, show_progress, batch_size, eval_batch_size, input_size, seed, rank, world):
    notes = []
    stored = _stored_size(input_size)
    packed = detect(root) == "packed"
    if packed:
        index, splits = _open_pack(root, input_size, notes)
        classes, stored = index["classes"], index["size"]
    else:
        splits = open_folder_splits(root, stored, bad)
        classes = splits["train"].classes
    train_ds = splits["train"]
    if "val" in splits:
        val_ds = splits["val"]
        train_idx, val_idx = list(range(len(train_ds))), list(range(len(val_ds)))
    else:
        val_ds = train_ds
        train_idx, val_idx = held_out(len(train_ds), seed, val_fraction)
        notes.append(f"no train/ and val/ sub-folders: held out {counted(len(val_idx), 'image')} for validation (seed {seed})")
    stats, listed_idx = None, train_idx  # listed_idx: the training images before the unreadable are left out
    if packed:
        stats = dict(index["stats"], mean_image=str(root / index["stats"]["mean_image"]))
        if "val" not in splits:
            notes.append("mean image and PCA are of every packed image (prepare saw no train/val split)")
    elif presets.needs_stats(preset):
        stats = folder_stats(train_ds, train_idx, loading[0], show_progress)  # its loop's errors: sources.each_batch
        bad_files = set(stats.get("bad", []))
        if bad_files:  # found by the pass: leave them out instead of meeting them every epoch
            train_idx = [i for i, f in zip(train_idx, train_ds.samples.paths(train_idx)) if f not in bad_files]
            notes.append(f"{counted(len(bad_files), 'unreadable training image')} skipped ({BAD_FILES_NAME} in the run folder)")
    # a pack too: its held-out tenth can take the only image of a class as a folder's can
    folders = index.get("folders", classes) if packed else train_ds.folders  # the names on disk
    _check_every_class_trains(train_ds, folders, train_idx, val_idx if "val" not in splits else [], listed_idx)
    base = {
        "dataset": "packed" if packed else "image_folder",
        "resize": stored,
        "size": stored,
        "train_crop": input_size,
        "test_crop": input_size,
        "input_size": input_size,
    }
    preprocess = presets.resolve(preset, stats, base)
    batch_size = _at_most_the_images(batch_size, len(train_idx), notes)
    loader_args = (seed, rank, world, *loading)
    train = _batches(train_ds, train_idx, batch_size, True, True, *loader_args)
    val = _batches(val_ds, val_idx, eval_batch_size, False, False, *loader_args)
    train.siblings.append(val)
    held = listing(train_ds) if "val" not in splits else None
    names_from = str((root / "index.json").resolve()) if packed else train_ds.names_from
    return DataBundle(train, val, classes, preprocess, len(train_idx), len(val_idx), str(root), notes, bad, held, list(folders),
                      names_from)


def _check_every_class_trains(
    ds: Any, folders: list[str], train_idx: list[int], held_idx: list[int], listed_idx: list[int] | None = None
) -> None:
    """DataError naming the classes none of whose images train: all unreadable, or all in the
    held-out tenth ``held_idx`` (a class of one or two images in a folder or pack without val/).
    ``listed_idx``: the training images before the unreadable were left out; a class that had some
    there is unreadable, not held out, whatever the tenth took (advice to add images would mislead)."""
    samples = getattr(ds, "samples", None)  # an image folder's listing (ImageList); a pack has its labels array
    all_labels = samples.labels if samples is not None else ds.labels

    def labels_of(indices: list[int]) -> set[int]:  # one array gather, not a Python call per image
        return set(np.unique(all_labels[np.asarray(indices, dtype=np.int64)]).tolist())

    labels = labels_of(train_idx)
    empty = [c for c in range(len(folders)) if c not in labels]
    if not empty:
        return
    held = labels_of(held_idx) - labels_of(listed_idx or [])
    names = ", ".join(printable(folders[c]) for c in empty[:5]) + (", ..." if len(empty) > 5 else "")
    if all(c in held for c in empty):
        raise DataError(f"{ds.root}: class folder(s) {names}: no readable image left to train on once a tenth was held "
                        "out for validation (there is no train/ and val/): give them more images, or make train/ and val/ folders")
    raise DataError(f"{ds.root}: class folder(s) with no readable training images: {names}")


def listing(ds: Any) -> dict[str, Any]:
    """What a held-out split is drawn from: the number of images and, for an image folder, a digest
    of their paths (relative to it; a pack's as prepare recorded them), by which evaluation tells
    whether the folder is still the same."""
    samples = getattr(ds, "samples", None)
    if samples is None:  # a pack: its images are fixed when it is written, and listed by prepare
        digest = getattr(ds, "digest", None)
        return {"images": len(ds), **({"digest": digest} if digest else {})}
    return {"images": len(ds), "digest": cache_key([f for f, _ in samples], ds.root, stamps=False)}


def set_epoch(loader: Any, epoch: int, start: int = 0) -> None:
    """Fix the order (and augmentation) of ``loader`` for ``epoch``, skipping ``start`` batches."""
    sampler = getattr(loader, "sampler_", None) or getattr(loader, "sampler", None)
    if isinstance(sampler, EpochBatchSampler):
        sampler.set_epoch(epoch, start)


def model_input(
    images: torch.Tensor,
    index: torch.Tensor,
    preprocess: Preprocess,
    train: bool,
    seed: int = 0,
    epoch: int = 0,
    channels_last: bool = False,
    views: int = 1,
    view: int | None = None,
) -> torch.Tensor:
    """uint8 batch (already on its device) -> normalised float batch for the model.

    Training: a random crop and mirror per image (cut from the uint8 batch in one gather), minus the
    same crop of the mean image (or the per-channel mean), plus the PCA colour shift, divided by the
    std. Testing: the centre crop, or with ``views=10`` the paper's ten crops, returned as
    (B*10, C, s, s) with the ten views of an image adjacent; with a ``view`` (0 to ``views`` - 1)
    that view of every image alone, (B, C, s, s): ten-crop evaluation makes each view's batch when
    it forwards it, where the ten at once (256 photos: 1.5 GB in float32) would set its peak.
    """
    if images.dtype != torch.uint8:  # a float batch in [0, 1] would be normalised as nearly black: chance accuracy
        raise ValueError(f"model_input takes uint8 images (0-255 pixels, as this package's loaders give them), not {images.dtype}")
    c = preprocess.channels
    if images.dim() != 4 or images.shape[1] != c:  # else torch's reshape or broadcast error, deep in the crop
        photos = c == 1 and images.dim() == 4 and images.shape[1] == 3
        grey = "; alexnet.data.folder.to_luma(images) makes RGB images grey" if photos else ""
        raise ValueError(f"model_input takes a batch of {c}-channel images, shape (B, {c}, H, W), as its recipe's "
                         f"{preprocess.dataset} data was stored{grey}; got {tuple(images.shape)}")
    b, dev = images.shape[0], images.device
    mean, inv_std, eig = preprocess.tensors_on(dev)
    # Crops are cut from the stored image padded as in training (then a centre crop is the stored
    # image's own centre); the mean image is padded and cropped like the images.
    pad = preprocess.padding
    x = torch.nn.functional.pad(images, (pad,) * 4) if pad else images
    if pad and mean.shape[-1] > 1:
        mean = torch.nn.functional.pad(mean, (pad,) * 4)
    h, w = x.shape[-2:]
    shift = None
    if train:
        size, pca = preprocess.train_crop, preprocess.pca
        if pca:
            shift = augment.pca_noise(index.to(dev), seed, epoch, *eig, pca.alpha_std)
        if preprocess.scale:  # random area and aspect, resampled to the crop size
            theta = augment.random_resized_crop_params(index.to(dev), seed, epoch, preprocess.scale, flip=preprocess.flip)
            x = augment.resized_crop_normalize(x, size, theta, mean, inv_std, shift)
            return _to_model(x, preprocess, channels_last)
        top, left, mirror = augment.random_crop_params(h, w, size, index.to(dev), seed, epoch, preprocess.flip)
    else:
        size = preprocess.test_crop
        top, left, mirror = _test_views(b, h, w, size, views, view, dev)
    repeat = views if view is None else 1  # the ten views of each image at once: cut from it, not from ten copies
    fmt = torch.channels_last if channels_last else torch.contiguous_format  # written so: no copy to it after
    x = augment.crop_normalize(x, size, top, left, mirror, mean, inv_std, shift, memory_format=fmt, repeat=repeat)
    return _to_model(x, preprocess, channels_last)


def _test_views(
    b: int, h: int, w: int, size: int, views: int, view: int | None, dev: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(top, left, mirror) of :func:`model_input`'s test crops of ``b`` images: every view of each
    image in turn (``view`` None), or the one ``view`` of all of them."""
    if views not in (1, 10):
        raise ValueError(f"views must be 1 or 10, got {views}")
    if view is not None and (isinstance(view, bool) or not isinstance(view, int) or not 0 <= view < views):
        raise ValueError(f"view must be a whole number from 0 to {views - 1} (one of the {views} views), got {view!r}")
    if views == 1:
        top = torch.full((b,), (h - size) // 2, dtype=torch.int64, device=dev)
        left = torch.full((b,), (w - size) // 2, dtype=torch.int64, device=dev)
        return top, left, None
    tops, lefts, mirrors = augment.ten_crop_params(h, w, size)
    if view is None:
        return tuple(t.repeat(b).to(dev) for t in (tops, lefts, mirrors))
    return tuple(t[view].repeat(b).to(dev) for t in (tops, lefts, mirrors))


def _to_model(x: torch.Tensor, preprocess: Preprocess, channels_last: bool) -> torch.Tensor:
    """A normalised crop resized to the model's input size, in its memory format. The fixed-size
    crops come in it already (and interpolate keeps it): a copy only after the random resized crop,
    whose grid_sample writes NCHW whatever its input's layout."""
    size = preprocess.input_size
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class FolderListing:
    """The images of one data folder (or pack) without a val split, listed at most once, when first
    asked for: a command that asks several questions of the folder it is given (evaluate: did this
    checkpoint, did each ensemble member, train on it; then its images) lists it once. One per
    command, not a process-wide cache, which could go stale between calls in one process."""

    def __init__(self, data: str | os.PathLike) -> None:
        self.data, self.read, self._ds = Path(data), False, None

    def get(self) -> Any | None:
        """The folder's ImageFolderDataset (its paths only) or PackedDataset; None when it has a val split or is no data set."""
        if not self.read:
            self._ds, self.read = _read_listing(self.data), True
        return self._ds


def _read_listing(root: Path) -> Any | None:
    """What :func:`lists_same_images` compares: ``root``'s images, or None (a val split, not a data set)."""
    try:
        kind = detect(root)
        if kind == "packed":  # a pack moved or copied: prepare recorded its files (an old pack's digest is None: not matched)
            return None if "val" in read_index(root)["splits"] else PackedDataset(root, "train")
        if kind != "images" or has_split_folders(root) or (root / "val").is_dir():
            return None
        with warnings.catch_warnings():  # loading the folder for evaluation says it again
            warnings.simplefilter("ignore")
            return ImageFolderDataset(root, 8, 8, BadFiles())  # the sizes decode nothing here: the paths alone are listed
    except DataError:  # not a data set it can read: loading it says why
        return None


def lists_same_images(data: str | os.PathLike, recorded: dict[str, Any] | None, listed: FolderListing | None = None) -> bool:
    """Whether the image folder ``data`` (without a val split) lists the very images, by their paths
    relative to it, that training drew its held-out split from (``recorded``: :func:`listing`, as
    the checkpoint keeps it): the training folder moved or copied since. Its recorded path then names
    nothing, and scoring every image would count the nine tenths the model trained on. ``listed``:
    ``data``'s listing, shared by the command's other questions (else it is listed here)."""
    if not isinstance(recorded, dict) or "digest" not in recorded:  # a checkpoint from before the record (or of an old pack)
        return False
    ds = (listed or FolderListing(data)).get()
    return ds is not None and listing(ds) == {"images": recorded.get("images"), "digest": recorded["digest"]}


def _same_listing(ds: Any, recorded: dict[str, Any] | None, source: str) -> None:
    """A DataError unless ``ds`` lists the images training drew its held-out split from (see :func:`listing`)."""
    if not isinstance(recorded, dict):  # a checkpoint from before this record
        return
    now, then = listing(ds), recorded.get("images")
    if now["images"] != then or now.get("digest") != recorded.get("digest", now.get("digest")):
        change = f"{then} images then, {now['images']} now" if now["images"] != then else "files renamed"
        raise DataError(f"{source} has changed since training ({change}): the images it held out for validation can no longer "
                        "be told from those it trained on; give --data a folder it did not train on")


def _check_fits(preprocess: Preprocess, channels: int, side: int, source: str) -> None:
    """Stored images a checkpoint's recipe cannot take (another channel count or size) -> one line."""
    if not preprocess.fits(channels, side):
        size, crop = preprocess.size, preprocess.input_size
        least = max(1, preprocess.test_crop - 2 * preprocess.padding)  # without a stored size: the smallest side a test crop fits
        want = f"{preprocess.channels}-channel images" + (f" stored at {size}x{size}" if size else f" of at least {least}x{least}")
        want += f", cropped to {crop}x{crop}" if size and crop != size else ""
        raise DataError(
            f"{source}: its images are {channels}-channel {side}x{side}, but the checkpoint takes {want} "
            f"(its recipe is for {preprocess.dataset} data); an image folder is decoded to fit any checkpoint"
        )


def _test_set(root: Path, kind: str, preprocess: Preprocess, batch_size: int, pin_memory: bool) -> tuple[Any, list[str], int, str]:
    """Fashion-MNIST's or CIFAR's test set, held in memory, as :func:`load_eval_data` returns it."""
    if kind == "fashion_mnist":
        x, y = load_fashion_mnist(root, "test")
        names, source = list(FMNIST_CLASSES), f"Fashion-MNIST test ({root})"
    else:
        x, y, names = load_cifar(root, "test")
        source = f"CIFAR test ({root})"
    _check_fits(preprocess, x.shape[1], x.shape[-1], source)
    loader = TensorBatches(x, y, EpochBatchSampler(len(x), batch_size, False), pin_memory)
    loader.classes = list(names)  # what the labels mean: evaluate matches them to a model's classes by name
    return loader, names, len(x), source


def load_eval_data(
    data: str | os.PathLike | None,
    preprocess: Preprocess,
    batch_size: int = 256,
    workers: int = 0,
    strict: bool = False,
    out_dir: str | os.PathLike | None = None,
    decode_device: torch.device | str | None = None,
    pin_memory: bool = False,
    held_out_seed: int | None = None,
    held_out_of: dict[str, Any] | None = None,
    listed: FolderListing | None = None,
) -> tuple[Any, list[str], int, str]:
    """The evaluation split of ``data`` prepared as ``preprocess`` says (from a checkpoint).

    Fashion-MNIST / CIFAR: the test set. An image or packed folder: its ``val`` split if present,
    else the images training held out with ``held_out_seed`` (:func:`held_out`; give it when the
    model was trained on this folder, or its own training images are scored), else every image.
    ``held_out_of`` (:func:`listing`, as training recorded it): a DataError if the folder has changed
    since, when the held-out images can no longer be told from the ones training used.
    Returns (loader, class names, number of images, description). ``pin_memory``: batches in
    page-locked memory, for a GPU. ``listed``: ``data``'s images if the command listed them already.
    """
    if not isinstance(preprocess, Preprocess):  # a bare network's .preprocess is None
        raise TypeError(f"load_eval_data: preprocess must be a loaded model's recipe (alexnet.load(checkpoint).preprocess), "
                        f"not {type(preprocess).__name__}; a network from create_model has none")
    require_loader_sizes("load_eval_data", batch_size, workers)
    root = data_root(data)
    if data is None and not root.exists():
        raise DataError(missing_message(root))
    kind = detect(root)
    if kind in ("fashion_mnist", "cifar"):
        return _test_set(root, kind, preprocess, batch_size, pin_memory)
    if kind == "packed":
        index = read_index(root)
        split = "val" if "val" in index["splits"] else "train"
        ds, classes, source = PackedDataset(root, split), index["classes"], f"{root} ({split}, packed)"
        folders = index.get("folders")
        _check_fits(preprocess, 3, ds.size, source)
        whole = split == "train"
    else:  # photos are decoded as the checkpoint's data was stored: its size, its channels
        bad = BadFiles(strict, Path(out_dir) / BAD_FILES_NAME if out_dir is not None else None)
        given_val = (root / "val").is_dir() and not (root / "train").is_dir()
        if given_val:
            root = root / "val"
        resize, size = preprocess.stored_sizes()
        known = listed.get() if listed is not None and listed.read and listed.data == root and not given_val else None
        splits = open_folder_splits(root, resize, bad, known if isinstance(known, ImageFolderDataset) else None, val_only=True)
        ds, whole = splits.get("val", splits["train"]), "val" not in splits and not given_val
        ds.size, ds.channels = size, preprocess.channels
        classes, folders, source = ds.classes, ds.folders, str(ds.root)
    indices = list(range(len(ds)))
    if whole and held_out_seed is not None:  # the model's own folder: not the images it trained on
        _same_listing(ds, held_out_of, source)
        indices = held_out(len(ds), held_out_seed)[1]
        source += f" (the {len(indices)} images training held out, seed {held_out_seed})"
    loader = _batches(ds, indices, batch_size, False, False, 0, 0, 1, workers, pin_memory, decode_device)
    loader.classes = list(classes)
    loader.folders = folders  # evaluate matches a model that named the classes by their folders too
    return loader, classes, len(indices), source
