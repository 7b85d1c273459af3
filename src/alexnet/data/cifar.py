"""CIFAR-10 / CIFAR-100 from the python pickled batches (cifar-10-batches-py, cifar-100-python)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, check_labels
from ..unpickle import load_plain

_LAYOUTS = {
    "cifar-10-batches-py": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta", "labels", "label_names"),
    "cifar-100-python": (["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}


def find_cifar(root: str | Path) -> tuple[Path, tuple] | None:
    """(folder, layout) if ``root`` is, or directly holds, a CIFAR python folder."""
    root = Path(root)
    for name, layout in _LAYOUTS.items():
        for folder in (root, root / name):
            if all((folder / f).is_file() for f in [*layout[0], *layout[1], layout[2]]):
                return folder, layout
    return None


def _unpickle(path: Path) -> dict:
    """A batch or meta dict; keys that are bytes (pickles written by Python 3) are read as str.

    Restricted unpickling (numpy arrays and plain containers only): a crafted batch runs no code.
    """
    try:
        with path.open("rb") as f:
            d = load_plain(f)
    except Exception as e:  # noqa: BLE001 - a refused global, junk, a truncated file: all "not a batch"
        raise DataError(f"{path}: not a CIFAR python batch ({type(e).__name__}: {' '.join(str(e).split())})") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: not a CIFAR python batch (a {type(d).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def _batch(path: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one batch file."""
    d = _unpickle(path)
    try:
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[key], dtype=np.int64).reshape(-1)
    except KeyError as e:
        raise DataError(f"{path}: not a CIFAR python batch (no {e} entry)") from None
    except (ValueError, TypeError) as e:
        raise DataError(f"{path}: not a CIFAR python batch ({' '.join(str(e).split())})") from None
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} images but {len(y)} labels")
    return x, y


def _names(path: Path, key: str) -> list[str]:
    """The class names of a meta file (bytes from Python 3 pickles decoded)."""
    names = _unpickle(path).get(key)
    if not isinstance(names, (list, tuple)) or not names:
        raise DataError(f"{path}: no {key!r} list of class names")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]


def load_cifar(root: str | Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images (N, 3, 32, 32) uint8, labels (N,) int64 and class names of one split (train or test)."""
    found = find_cifar(root)
    if found is None:
        raise DataError(f"{root}: no CIFAR-10/100 python batches")
    folder, (train, test, meta, key, names_key) = found
    names = _names(folder / meta, names_key)
    xs, ys = [], []
    for name in train if split == "train" else test:
        x, y = _batch(folder / name, key)
        check_labels(y, len(names), folder / name, f"the classes of {folder / meta}")
        xs.append(x)
        ys.append(y)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)), names
