"""Images per second of our input pipelines against the strongest torch-native ones and FFCV (issues 3, 12).

Each of ours is compared with peers that start from the same point: JPEG files, or images decoded
once before the timed passes (the packed format's ``alexnet prepare``, the peers' own store/file).
Peers, each in its best configuration:
(p) full pipeline from JPEGs: ``torchvision.io.decode_jpeg`` on a batch of files (on the GPU with
    nvJPEG under --device cuda), then ``torchvision.transforms.v2`` on uint8 tensors per image
    (Resize 256 antialiased, RandomCrop 224, RandomHorizontalFlip), then one batched ToDtype + Normalize;
(q) loader only from JPEGs: the same decode and Resize 256 + CenterCrop 256, uint8 batches;
(r) full pipeline from a pre-decoded store (the JPEGs decoded to 256x256 once, untimed, into a
    memory-mapped uint8 array): a shuffled gather, v2 RandomCrop 224 + RandomHorizontalFlip per
    image, one batched ToDtype + Normalize;
(s) loader only from that store: uint8 batches;
(f), (g), (h) FFCV, when this Python can import it (``pip install ffcv`` builds from source and needs
    pkg-config, libopencv-dev and libturbojpeg0-dev): its .beton written once (untimed) from the same
    256x256 images as raw pixels (f, h) or JPEGs (g); a random 224 crop (its RandomResizedCrop
    decoder held at scale (224/256)^2 and aspect 1), flip and NormalizeImage to float32 (f, g), or
    the uint8 batches (h); one worker thread.
Ours:
(b) from the JPEG folder: decode, shorter side 256, central 256x256, then the paper's full
    augmentation batched (random 224 crop + mirror, mean image, PCA colour noise, std); under
    --device cuda the whole batch is decoded by nvJPEG and resized on the GPU (``--decode device``,
    what ``alexnet train --device cuda`` does), the CPU only reads the files;
(c) from the packed format written by ``alexnet prepare`` (no decoding), same augmentation;
(d) from the packed format, uint8 batches only (what a GPU run asks of the CPU).
(b) is compared with (p) and (g), (c) with (r) and (f), (d) with (s) and (h). FFCV augments on the
CPU, so its (f) and (g) run only with --device cpu. torchvision's classic per-image PIL pipeline
(ImageFolder + Resize + RandomCrop + Flip + ToTensor + Normalize) is timed too, for reference.

Each pipeline runs in a process of its own with one CPU thread and makes three timed passes of
--images images and at least one second (one pass of 16 with --quick); the median pass is reported. With --device cuda the
decoding and augmentation of (b), the augmentation of (c), (r) and the whole of (p) run on the
GPU; (d), (q), (s) and (h) stay on the CPU. Preparation (ours' packing and statistics pass, the
store, the .beton files) is not timed.

Usage: python benchmarks/data_pipeline.py [--data FOLDER] [--images N] [--device cpu|cuda] [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "imagewoof-mini" / "train"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
REPEATS = 3  # passes per pipeline; the median is reported (1 with --quick)
# A pass lasts at least this long: 640 uint8 batches from memory take ~15 ms, where a page fault
# burst or a scheduler tick moved the figure 5x between passes (0 with --quick).
MIN_SECONDS = 1.0


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_torchvision_pil(data: str, images: int, batch: int, device: str = "cpu") -> float:
    """torchvision's classic pipeline: PIL decode and transforms per image (reference only)."""
    import torch
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize(256), transforms.RandomCrop(224), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    class Folder(datasets.ImageFolder):  # hidden folders (our .alexnet-cache) are not classes
        def find_classes(self, directory):
            names = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
            return names, {c: i for i, c in enumerate(names)}

    loader = torch.utils.data.DataLoader(Folder(data, tf), batch_size=batch, shuffle=True, num_workers=0)
    return _median_rate(lambda: _time(lambda: ((x, None) for x, _ in loader), images, lambda b: b[0]))


def jpeg_files(data: str) -> list[str]:
    """The JPEG files of a CLASS/IMAGE folder, in a fixed order."""
    return sorted(str(p) for p in Path(data).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg") and p.is_file())


def native_batches(files: list[str], batch: int, device: str, augment: bool, seed: int = 0):
    """Batches of the torch-native pipeline: batched decode_jpeg, uint8 v2 transforms per image,
    then (``augment``) one batched float conversion and normalisation. Nothing to pin: on CUDA,
    decode_jpeg takes the files' bytes in CPU memory and its images are born on the GPU, as ours'
    are under --decode device (whose loader pins nothing either)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    from torchvision.transforms import v2

    per_image = v2.Compose([v2.Resize(256, antialias=True)]
                           + ([v2.RandomCrop(224), v2.RandomHorizontalFlip()] if augment else [v2.CenterCrop(256)]))
    to_float = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    for i in range(0, len(order), batch):
        data = [read_file(files[j]) for j in order[i : i + batch]]
        if not device.startswith("cuda"):  # what decode_jpeg(list) does on the CPU, and torchvision < 0.20 takes no list there
            decoded = [decode_jpeg(d, mode=ImageReadMode.RGB) for d in data]
        else:
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        x = torch.stack([per_image(im) for im in decoded])
        yield to_float(x) if augment else x


def run_native(data: str, images: int, batch: int, device: str = "cpu") -> float:
    """(p): decode_jpeg + transforms.v2 on uint8 tensors, normalised float batches."""
    files = jpeg_files(data)
    return _rate(lambda: native_batches(files, batch, device, True), images, device)


def run_native_loader(data: str, images: int, batch: int, device: str = "cpu") -> float:
    """(q): decode_jpeg + Resize + CenterCrop, uint8 batches on the CPU."""
    files = jpeg_files(data)
    return _rate(lambda: native_batches(files, batch, "cpu", False), images)


def _scratch() -> Path:
    """A new folder for a peer's prepared files, inside the run's temporary folder (ALEXNET_CACHE)."""
    base = os.environ.get("ALEXNET_CACHE")
    if base:
        os.makedirs(base, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=base))


def decoded_store(data: str):
    """The torch-native peer's own untimed preparation, as ``alexnet prepare`` is ours: every JPEG
    decoded once (decode_jpeg, Resize 256, CenterCrop 256) into a memory-mapped uint8 (N, 3, 256,
    256) array (``numpy.lib.format``)."""
    import numpy as np

    files = jpeg_files(data)
    path = _scratch() / "store.npy"
    store = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(files), 3, 256, 256))
    i = 0
    for x in native_batches(files, 64, "cpu", False):
        store[i : i + len(x)] = x.numpy()
        i += len(x)
    store.flush()
    return np.load(path, mmap_mode="r")


def store_batches(store, batch: int, device: str, augment: bool, seed: int = 0):
    """Batches of the pre-decoded store: a shuffled gather of uint8 images, then (``augment``) v2
    RandomCrop 224 + RandomHorizontalFlip per image on ``device`` and one batched ToDtype + Normalize."""
    import numpy as np
    import torch
    from torchvision.transforms import v2

    per_image = v2.Compose([v2.RandomCrop(224), v2.RandomHorizontalFlip()])
    to_float = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    order = torch.randperm(len(store), generator=torch.Generator().manual_seed(seed)).numpy()
    for i in range(0, len(order), batch):
        x = torch.from_numpy(store[np.sort(order[i : i + batch])])  # sorted reads; a batch's order does not matter
        if augment and device.startswith("cuda"):
            # Page-locked, as ours' batches are (load_data(pin_memory=True) under --device cuda), so that
            # both copies to the GPU run at the same settings: non_blocking from pageable memory is a
            # synchronous staged copy.
            x = x.pin_memory()
        if augment:
            x = to_float(torch.stack([per_image(im) for im in x.to(device, non_blocking=True)]))
        yield x


def run_native_store(data: str, images: int, batch: int, device: str = "cpu") -> float:
    """(r): the pre-decoded store + transforms.v2, normalised float batches (the peer of (c))."""
    store = decoded_store(data)
    return _rate(lambda: store_batches(store, batch, device, True), images, device)


def run_native_store_loader(data: str, images: int, batch: int, device: str = "cpu") -> float:
    """(s): the pre-decoded store, uint8 batches on the CPU (the peer of (d))."""
    store = decoded_store(data)
    return _rate(lambda: store_batches(store, batch, "cpu", False), images)


def ffcv_available() -> bool:
    try:
        import ffcv  # noqa: F401
    except Exception:  # not installed, or installed against libraries this machine lacks
        return False
    return True


def ffcv_file(data: str, write_mode: str) -> str:
    """FFCV's own untimed preparation: the JPEGs, shorter side 256 and central 256x256 as ours,
    written to a .beton file as raw pixels (``raw``, the packed format's peer) or JPEGs (``jpg``)."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from PIL import Image
    from torchvision.transforms import functional as F

    files = jpeg_files(data)

    class Square:  # an indexed dataset, as DatasetWriter reads one
        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, i: int):
            im = F.center_crop(F.resize(Image.open(files[i]).convert("RGB"), 256), 256)
            return im, 0

    path = str(_scratch() / f"{write_mode}.beton")
    fields = {"image": RGBImageField(write_mode=write_mode, max_resolution=256), "label": IntField()}
    DatasetWriter(path, fields, num_workers=1).from_indexed_dataset(Square())
    return path


def run_ffcv(data: str, images: int, batch: int, device: str = "cpu", write_mode: str = "raw", augment: bool = True) -> float:
    """(f): FFCV's loader, one worker. ``augment``: a random 224 crop of the 256x256 image (its
    RandomResizedCrop decoder held at scale 224^2/256^2 and aspect 1, i.e. a plain random crop),
    RandomHorizontalFlip, NormalizeImage to float32; else the decoded 256x256 uint8 batches."""
    import numpy as np
    from ffcv.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, ToTensor, ToTorchImage

    path = ffcv_file(data, write_mode)
    if augment:
        scale = (224 / 256) ** 2
        image = [RandomResizedCropRGBImageDecoder((224, 224), scale=(scale, scale), ratio=(1.0, 1.0)), RandomHorizontalFlip(),
                 NormalizeImage(np.array(MEAN) * 255, np.array(STD) * 255, np.float32), ToTensor(), ToTorchImage()]
    else:
        image = [SimpleRGBImageDecoder(), ToTensor(), ToTorchImage()]
    loader = Loader(path, batch_size=batch, num_workers=1, order=OrderOption.RANDOM, seed=0, drop_last=False,
                    pipelines={"image": image, "label": [IntDecoder(), ToTensor()]})
    return _median_rate(lambda: _time(lambda: loader, images, lambda b: b[0]))


def run_ffcv_jpeg(data: str, images: int, batch: int, device: str = "cpu") -> float:
    return run_ffcv(data, images, batch, device, "jpg", True)


def run_ffcv_loader(data: str, images: int, batch: int, device: str = "cpu") -> float:
    return run_ffcv(data, images, batch, device, "raw", False)


def run_ours(data: str, images: int, batch: int, device: str = "cpu") -> float:
    """(b), (c): our loader, the paper's augmentation on ``device``."""
    from alexnet.data.loaders import load_data, model_input

    cuda = device.startswith("cuda")
    bundle = load_data(data, batch, 224, workers=0, seed=0, preset="paper", val_fraction=0.01, show_progress=False,
                       pin_memory=cuda, decode_device=device if cuda else None)
    pre = bundle.preprocess

    def step(b):
        return model_input(b[0].to(device, non_blocking=True), b[2].to(device, non_blocking=True), pre, True, 0, 0)

    return _median_rate(lambda: _time(lambda: bundle.train, images, step, device))


def run_ours_loader(data: str, images: int, batch: int, device: str = "cpu") -> float:
    """(d): the CPU's share when training on a GPU: uint8 batches only (augmentation runs on the GPU)."""
    from alexnet.data.loaders import load_data

    bundle = load_data(data, batch, 224, workers=0, seed=0, preset="paper", val_fraction=0.01, show_progress=False)
    return _median_rate(lambda: _time(lambda: bundle.train, images, lambda b: b[0]))


def _rate(epoch, images: int, device: str = "cpu") -> float:
    """The median images/s of passes over ``epoch()``, whose batches are the output."""
    return _median_rate(lambda: _time(epoch, images, lambda b: b, device))


def _median_rate(one_pass) -> float:
    import statistics

    return statistics.median(one_pass() for _ in range(REPEATS))


def _cycle(epoch):
    """The batches of ``epoch()`` (an iterable of one pass over the data), pass after pass."""
    while True:
        empty = True
        for b in epoch():
            empty = False
            yield b
        if empty:
            raise ValueError("the pipeline yields no batches (fewer images than one batch?)")


def _time(epoch, images: int, step, device: str = "cpu") -> float:
    """Images per second over at least ``images`` images and MIN_SECONDS (more passes over small
    data), after one warm-up batch."""
    it = _cycle(epoch)
    step(next(it))
    _sync(device)
    n, t0 = 0, time.perf_counter()
    for b in it:
        out = step(b)
        n += out.shape[0]
        if n >= images and time.perf_counter() - t0 >= MIN_SECONDS:  # host time: no sync per batch
            break
    _sync(device)
    return n / (time.perf_counter() - t0)



def _child(which: str, data: str, images: int, batch: int, device: str, quick: bool = False) -> float:
    """Run one pipeline in a fresh process (one thread) and return its images per second.

    ``quick`` (CI) runs it in this process instead: it checks that the code runs, not the speed."""
    if quick:
        global REPEATS, MIN_SECONDS
        REPEATS, MIN_SECONDS = 1, 0.0
        _one_thread()
        return globals()[which](data, images, batch, device)
    here = str(Path(__file__).parent)
    code = (
        f"import json, sys; sys.path.insert(0, {here!r}); import data_pipeline as d; d._one_thread(); "
        f"print(json.dumps(getattr(d, {which!r})({data!r}, {int(images)}, {int(batch)}, {device!r})), flush=True); "
        "import os; os._exit(0)"  # FFCV's loader thread, left mid-epoch, aborts a normal interpreter exit
    )
    from _common import child_env  # imported here, as result below: the pipelines' processes import no torch setup

    env = child_env(OMP_NUM_THREADS="1")
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


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="image folder (CLASS/IMAGE) of JPEGs")
    ap.add_argument("--images", type=int, default=640, help="images timed per pipeline and pass")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu", help="cpu, cuda (augmentation of ours and decoding of the peer on the GPU) or auto")
    ap.add_argument("--quick", action="store_true", help="a few images only (CI)")
    args = ap.parse_args()
    if args.images < 1 or args.batch < 1:
        ap.error("--images and --batch must be positive")
    sys.path.insert(0, str(ROOT / "src"))
    from alexnet.runtime import resolve_device

    try:
        device = resolve_device(args.device)  # auto: CUDA if present
    except ValueError as e:  # ConfigError
        ap.exit(2, f"data_pipeline.py: error: {e}\n")
    if device.type not in ("cpu", "cuda"):
        ap.exit(2, f"data_pipeline.py: error: --device {args.device}: use cpu or cuda\n")
    args.device = str(device)
    return args


def measure(args: argparse.Namespace, data: Path, tmp: str) -> dict[str, float]:
    """Every pipeline's images/s, each in its own process."""
    from alexnet.data.packed import prepare

    images, batch = (16, 8) if args.quick else (args.images, args.batch)
    os.environ.setdefault("ALEXNET_CACHE", str(Path(tmp) / "cache"))
    t0 = time.perf_counter()
    prepare(data, Path(tmp) / "packed", show_progress=False)
    print(f"prepare (decode once, mean image, PCA; not timed below): {time.perf_counter() - t0:.1f}s")
    packed, dev = str(Path(tmp) / "packed"), args.device
    runs = {"pil": ("run_torchvision_pil", str(data), "cpu"), "native": ("run_native", str(data), dev),
            "native_loader": ("run_native_loader", str(data), "cpu"), "store": ("run_native_store", str(data), dev),
            "store_loader": ("run_native_store_loader", str(data), "cpu"), "jpeg": ("run_ours", str(data), dev),
            "packed": ("run_ours", packed, dev), "packed_loader": ("run_ours_loader", packed, "cpu")}
    if ffcv_available():  # its augmentation runs on the CPU: a peer of ours' only where ours' does too
        runs["ffcv_loader"] = ("run_ffcv_loader", str(data), "cpu")
        if dev == "cpu":
            runs.update(ffcv=("run_ffcv", str(data), "cpu"), ffcv_jpeg=("run_ffcv_jpeg", str(data), "cpu"))
    return {k: _child(fn, src, images, batch, d, args.quick) for k, (fn, src, d) in runs.items()}


def main() -> None:
    from alexnet.errors import DataError

    args = parse()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data)
        if not data.is_dir():
            if not args.quick:
                raise DataError(f"--data: folder not found: {data}")
            data = _tiny_folder(Path(tmp) / "tiny")
        if not jpeg_files(str(data)):
            raise DataError(f"--data: no JPEG files in {data} (the torch-native peer decodes JPEGs)")
        r = measure(args, data, tmp)
    report(r, args, data)


def report(r: dict[str, float], args: argparse.Namespace, data: Path) -> None:
    """The table and the RESULT lines: each of ours against the peer that starts from the same
    point (JPEG files, or images decoded before the timed passes)."""
    aug = "GPU" if args.device.startswith("cuda") else "CPU"
    rows = [("(p) peer: decode_jpeg + transforms.v2 (uint8), full", r["native"], f"decode on {args.device}"),
            ("(q) peer: decode_jpeg + Resize/CenterCrop, uint8", r["native_loader"], ""),
            ("(r) peer: pre-decoded store + transforms.v2, full", r["store"], f"augment on {args.device}"),
            ("(s) peer: pre-decoded store, uint8 batches", r["store_loader"], ""),
            ("(f) peer: FFCV raw, random crop + flip + normalise", r.get("ffcv"), "1 worker"),
            ("(g) peer: FFCV jpg, random crop + flip + normalise", r.get("ffcv_jpeg"), "1 worker"),
            ("(h) peer: FFCV raw, uint8 batches", r.get("ffcv_loader"), "1 worker"),
            ("    reference: torchvision PIL ImageFolder pipeline", r["pil"], ""),
            (f"(b) ours from JPEG, paper augmentation on {aug}", r["jpeg"], "vs (p), (g)"),
            (f"(c) ours from packed, paper augmentation on {aug}", r["packed"], "vs (r), (f)"),
            ("(d) ours from packed, uint8 batches (CPU share)", r["packed_loader"], "vs (s), (h)")]
    for name, rate, note in rows:
        if rate is not None:
            print(f"{name:<54} {rate:8.1f} images/s  {note}")
    if "ffcv_loader" not in r:
        print("FFCV: not importable by this Python (pip install ffcv builds from source: it needs pkg-config, "
              "libopencv-dev and libturbojpeg0-dev); its lines are left out")
    print(f"settings (ours and peers alike): one process and one CPU thread each (FFCV: one worker thread), batch "
          f"{8 if args.quick else args.batch}, {16 if args.quick else args.images} images and {MIN_SECONDS:g} s at least "
          f"per pass, median of {1 if args.quick else REPEATS} passes, device {args.device}, data {data}")
    suffix = "" if aug == "CPU" else "_cuda"
    results = [(f"data_pipeline_jpeg{suffix}", "jpeg", "native"),
               (f"data_pipeline_packed_{aug.lower()}_augment", "packed", "store"),
               ("data_pipeline_packed_loader", "packed_loader", "store_loader"),
               ("data_pipeline_jpeg_ffcv", "jpeg", "ffcv_jpeg"),
               ("data_pipeline_packed_cpu_augment_ffcv", "packed", "ffcv"),
               ("data_pipeline_packed_loader_ffcv", "packed_loader", "ffcv_loader")]
    from _common import result  # the scripts' one RESULT format (imported here: the pipelines' processes need no torch setup)

    for name, ours, peer in results:
        if peer in r:
            result(name, r[ours], r[peer], "images/s")

if __name__ == "__main__":
    import _common  # here: the pipelines' and ranks' processes import this module, not its main

    _common.run(main)
