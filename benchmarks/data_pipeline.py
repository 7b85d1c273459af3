"""Images per second of three input pipelines, one process and one thread each (issue 3).

(a) peer: torchvision's standard pipeline (ImageFolder + Resize(256) + RandomCrop(224) +
    RandomHorizontalFlip + ToTensor + Normalize);
(b) ours from the JPEG folder: decode, shorter side 256, central 256x256, then the paper's full
    augmentation batched (random 224 crop + mirror, mean image, PCA colour noise, std);
(c) ours from the packed format written by ``alexnet prepare`` (no decoding), same augmentation.

Each pipeline runs in a process of its own and makes three timed passes of --images images; the
median pass is reported.

Usage: python benchmarks/data_pipeline.py [--data FOLDER] [--images N] [--quick]
The one-time statistics pass of (b) and the preparation for (c) are not timed (reported apart).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "imagewoof-mini" / "train"


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def run_torchvision(data: str, images: int, batch: int) -> float:
    import torch
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.RandomCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(data, tf), batch_size=batch, shuffle=True, num_workers=0)
    return _median_rate(lambda: _time(((x, None) for x, _ in loader), images, lambda b: b[0]))


def run_ours(data: str, images: int, batch: int) -> float:
    from alexnet.data.loaders import load_data, model_input

    bundle = load_data(data, batch, 224, workers=0, seed=0, preset="paper", val_fraction=0.01, show_progress=False)
    pre = bundle.preprocess
    return _median_rate(lambda: _time(bundle.train, images, lambda b: model_input(b[0], b[2], pre, True, 0, 0)))


def run_ours_loader(data: str, images: int, batch: int) -> float:
    """The CPU's share when training on a GPU: uint8 batches only (augmentation runs on the GPU)."""
    from alexnet.data.loaders import load_data

    bundle = load_data(data, batch, 224, workers=0, seed=0, preset="paper", val_fraction=0.01, show_progress=False)
    return _median_rate(lambda: _time(bundle.train, images, lambda b: b[0]))


REPEATS = 3  # passes per pipeline; the median is reported (1 with --quick)


def _median_rate(one_pass) -> float:
    import statistics

    return statistics.median(one_pass() for _ in range(REPEATS))


def _time(batches, images: int, step) -> float:
    """Images per second over the first ``images`` images, after one warm-up batch."""
    it = iter(batches)
    step(next(it))
    n, t0 = 0, time.perf_counter()
    for b in it:
        out = step(b)
        n += out.shape[0]
        if n >= images:
            break
    return n / (time.perf_counter() - t0)


def _child(which: str, data: str, images: int, batch: int, quick: bool = False) -> float:
    """Run one pipeline in a fresh process (one thread) and return its images per second.

    ``quick`` (CI) runs it in this process instead: it checks that the code runs, not the speed."""
    if quick:
        global REPEATS
        REPEATS = 1
        _one_thread()
        return globals()[which](data, images, batch)
    code = (
        "import json, sys; sys.path.insert(0, %r); import data_pipeline as d; d._one_thread(); "
        "print(json.dumps(getattr(d, %r)(%r, %d, %d)))" % (str(Path(__file__).parent), which, data, images, batch)
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"benchmark {which} failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    return float(r.stdout.strip().splitlines()[-1])


def _tiny_folder(root: Path) -> Path:
    """A small JPEG folder (ImageNet-like sizes) for --quick when the shared data is absent."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(24):
            arr = rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / f"c{c}" / f"{i}.jpg", quality=85)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="image folder (CLASS/IMAGE)")
    ap.add_argument("--images", type=int, default=640, help="images timed per pipeline")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="a few images only (CI)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from alexnet.data.packed import prepare

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data)
        if not data.is_dir():
            if not args.quick:
                sys.exit(f"--data: folder not found: {data}")
            data = _tiny_folder(Path(tmp) / "tiny")
        images, batch = (16, 8) if args.quick else (args.images, args.batch)
        os.environ.setdefault("ALEXNET_CACHE", str(Path(tmp) / "cache"))
        t0 = time.perf_counter()
        prepare(data, Path(tmp) / "packed", show_progress=False)
        print(f"prepare (decode once, mean image, PCA; not timed below): {time.perf_counter() - t0:.1f}s")
        peer = _child("run_torchvision", str(data), images, batch, args.quick)
        ours_jpeg = _child("run_ours", str(data), images, batch, args.quick)
        ours_packed = _child("run_ours", str(Path(tmp) / "packed"), images, batch, args.quick)
        packed_loader = _child("run_ours_loader", str(Path(tmp) / "packed"), images, batch, args.quick)
    print(f"(a) torchvision ImageFolder pipeline:            {peer:8.1f} images/s (1 thread)")
    print(f"(b) ours from JPEG, paper augmentation on CPU:   {ours_jpeg:8.1f} images/s  x{ours_jpeg / peer:.2f}  (target x1.5)")
    print(f"(c) ours from packed, paper augmentation on CPU: {ours_packed:8.1f} images/s  x{ours_packed / peer:.2f}  (target x10)")
    print(f"(c) ours from packed, CPU share with a GPU:      {packed_loader:8.1f} images/s  x{packed_loader / peer:.2f}")
    results = (
        ("data_pipeline_jpeg", ours_jpeg),
        ("data_pipeline_packed_cpu_augment", ours_packed),
        ("data_pipeline_packed_loader", packed_loader),
    )
    for name, ours in results:
        print(f"RESULT {name} ours={ours:.1f} peer={peer:.1f} ratio={ours / peer:.2f} unit=images/s")


if __name__ == "__main__":
    main()
