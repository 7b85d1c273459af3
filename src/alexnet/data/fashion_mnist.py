"""Fashion-MNIST from IDX files (Debian's ``dataset-fashion-mnist`` or torchvision's download)."""

from __future__ import annotations

import contextlib
import gzip
import io
import math
import os
import re
import zlib
from pathlib import Path
from typing import IO

import numpy as np
import torch

from ..errors import DataError, check_labels

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def data_root(data: str | os.PathLike | None) -> Path:
    """Where ``--data`` points: the path given, else :data:`DEBIAN_ROOT`, which a run without --data
    trains on (its checkpoint records data None) and evaluate then scores."""
    return Path(data) if data is not None else DEBIAN_ROOT


_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array.

    No more bytes are read than the header declares: a small .gz whose stream goes on for
    gigabytes (a zip bomb) is refused after them, and an uncompressed file whose size disagrees
    with its header is refused unread.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            layout = _idx_layout(head + f.read(4 * head[3])) if len(head) == 4 else None
            if layout is None:
                raise DataError(f"{path}: not an IDX file (bad magic number)")
            shape, dtype, offset = layout
            expected = _data_bytes(shape, dtype)
            if opener is open and os.path.getsize(path) - offset != expected:
                got = os.path.getsize(path) - offset
            else:
                data = _read_at_most(f, expected + 1)
                got = len(data)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    if got < expected:
        raise DataError(f"{path}: truncated IDX file ({got} of {expected} bytes)")
    if got > expected:
        raise DataError(f"{path}: more data than its IDX header declares ({expected} bytes of shape {shape}): not an IDX file")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _data_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """The bytes of an IDX file's data, after its header: in Python's ints, so that a header of
    2**32-sized dimensions cannot wrap as numpy's product did."""
    return math.prod(shape) * dtype.itemsize


def _read_at_most(f: IO[bytes], n: int) -> bytes:
    """Up to ``n`` bytes of ``f``, read a chunk at a time: memory grows with what the file holds,
    not with what its header claims."""
    chunks, left = [], n
    while left > 0:
        chunk = f.read(min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _idx_layout(head: bytes) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """The shape, dtype and offset of the data that an IDX file's first bytes give (None: no IDX magic)."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _DTYPES:
        return None
    ndim = head[3]
    shape = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return shape, np.dtype(_DTYPES[head[2]]), 4 + 4 * ndim


def _find(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw", root / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def is_fashion_mnist(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds the Fashion-MNIST IDX files."""
    root = Path(root)
    return all(_find(root, s) is not None for pair in _FILES.values() for s in pair)


def fashion_mnist_missing(root: str | os.PathLike) -> list[str]:
    """The Fashion-MNIST IDX files ``root`` lacks when it has some of them (else [])."""
    root = Path(root)
    stems = [s for pair in _FILES.values() for s in pair]
    missing = [s for s in stems if _find(root, s) is None]
    return missing if len(missing) < len(stems) else []


def load_fashion_mnist(root: str | os.PathLike = DEBIAN_ROOT, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) uint8 and labels (N,) int64 of one split (``train`` or ``test``)."""
    root = Path(root)
    images_stem, labels_stem = _FILES[split]
    images_path, labels_path = _find(root, images_stem), _find(root, labels_stem)
    if images_path is None or labels_path is None:
        raise DataError(missing_message(root))
    images = _unsigned_bytes(read_idx(images_path), images_path)
    labels = _unsigned_bytes(read_idx(labels_path), labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{images_path}: {images.shape} images do not match {labels.shape} labels")
    if not len(images):
        raise DataError(f"{images_path}: an IDX file of 0 images (shape {images.shape}); the {split} split needs at least one")
    check_labels(labels, len(CLASSES), labels_path, f"Fashion-MNIST's {len(CLASSES)} classes")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _unsigned_bytes(array: np.ndarray, path: Path) -> np.ndarray:
    """``array`` if it holds unsigned bytes (IDX type 0x08), as Fashion-MNIST's images and labels do;
    else DataError naming ``path`` (torch takes no big-endian arrays, and a float label would be cut)."""
    if array.dtype != np.uint8:
        raise DataError(f"{path}: an IDX file of {array.dtype.name} values; Fashion-MNIST's hold unsigned bytes (type 0x08)")
    return array


def missing_message(root: Path) -> str:
    """The error for Fashion-MNIST missing from ``root``: how to install Debian's package or download it."""
    return (
        f"Fashion-MNIST not found in {root}: install it with 'apt-get install dataset-fashion-mnist' "
        f"(Debian/Ubuntu), or on a machine that is online run 'alexnet download fashion-mnist --out DIR' "
        f"and pass '--data DIR'"
    )


def download_fashion_mnist(root: str | os.PathLike) -> Path:
    """Fetch Fashion-MNIST with torchvision (needs the internet); returns the folder to pass as --data."""
    from urllib.error import URLError

    from torchvision.datasets import FashionMNIST

    root = Path(root)
    _remove_cut_short(root / "FashionMNIST" / "raw")
    printed = io.StringIO()  # torchvision < 0.20 prints its progress and each failed mirror's reason
    try:
        with contextlib.redirect_stdout(printed):
            for train in (True, False):
                FashionMNIST(str(root), train=train, download=True)
    except (RuntimeError, URLError) as e:  # torchvision's error lists each mirror on its own lines
        # ... except before 0.20, which raised a bare "Error downloading F" after printing the reasons
        failed = re.findall(r"Failed to download \(trying next\):\n(.+)", printed.getvalue())
        reason = _last_line(e if "\n" in str(e).strip() or not failed else RuntimeError(failed[-1]))
        raise DataError(
            f"cannot download Fashion-MNIST from {', '.join(FashionMNIST.mirrors)}: {reason} "
            f"(this needs the internet: download it on a machine that is online, then pass --data)"
        ) from None
    return root


def _remove_cut_short(raw: Path) -> None:
    """Remove the IDX files that a download stopped while unpacking left shorter than their header
    says: torchvision takes a file that exists for done, so its rerun kept it and every later command
    refused it ('truncated IDX file'). The archive beside it, or the download, gives it whole again."""
    for path in (raw / stem for pair in _FILES.values() for stem in pair):
        with contextlib.suppress(FileNotFoundError):
            with open(path, "rb") as f:
                layout = _idx_layout(f.read(1024))  # at most 255 dimensions of 4 bytes
            if layout is None or os.path.getsize(path) != layout[2] + _data_bytes(*layout[:2]):
                path.unlink()


def _last_line(error: Exception) -> str:
    """The reason at the end of a (multi-line) download error, without urllib's ``<urlopen error ...>``."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__).removeprefix("<urlopen error ").removesuffix(">")
