"""CIFAR-10 / CIFAR-100 from the python pickled batches (cifar-10-batches-py, cifar-100-python)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

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
    try:
        with path.open("rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: not a CIFAR python batch ({type(e).__name__}: {e})") from None


def load_cifar(root: str | Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images (N, 3, 32, 32) uint8, labels (N,) int64 and class names of one split (train or test)."""
    found = find_cifar(root)
    if found is None:
        raise DataError(f"{root}: no CIFAR-10/100 python batches")
    folder, (train, test, meta, key, names_key) = found
    xs, ys = [], []
    for name in train if split == "train" else test:
        d = _unpickle(folder / name)
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[key], dtype=np.int64))
    names = list(_unpickle(folder / meta)[names_key])
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)), names
