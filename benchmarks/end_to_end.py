"""End to end: `alexnet train` on real JPEGs against the pure training step it is built on (issue 12).

The pure step (the ``ref=`` figure of the RESULT lines) is alexnet_paper's SGD step on one batch already on
the device, at the same batch size, precision, memory format and number of classes: what the
model could do if the input cost nothing. The end-to-end figure is what `alexnet train` itself
reports (metrics.jsonl, images_per_second of the last epoch) for the same step (torch SGD,
momentum 0.9, weight decay 5e-4, no Nesterov, no label smoothing: the flags below override the
default recipe's) fed by the loader: reading files, decoding, the paper's augmentation
(``--data-preset paper``: random 224 crops of 256x256 images, mirrors, mean image, PCA colour
noise), the health checks. Target on a GPU: end to end >= 80 % of the pure step.

The training set is --data's train/ (or class folders) repeated --copies times through symbolic
links, so that an epoch lasts long enough to time; the files stay on disk as they are (the page
cache holds them after the first epoch, as it would a data set that fits in memory). Runs:
  jpeg         the JPEG folder, --decode auto (nvJPEG on the GPU under --device cuda)
  jpeg_cpu     the JPEG folder decoded by the CPU workers (--decode cpu), for contrast (GPU only)
  jpeg_overlap as jpeg, with ALEXNET_DECODE_OVERLAP=1: nvJPEG on a stream of its own, overlapping
               the step queued before it (GPU only; off by default until this measures it)
  packed       the same images packed by `alexnet prepare` (no decoding)
GPU utilisation is sampled (NVML, else nvidia-smi) during the last epoch's training phase and
reported as RESULT end_to_end_<run>_gpu_utilisation (percent, against 100) where it was measured
(CUDA, a reader that answers, samples every 0.2 s within that phase).

    python benchmarks/end_to_end.py --data FOLDER [--device cuda] [--batch-size 256] [--amp bf16]
        [--copies N] [--epochs 3] [--workers W] [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _common  # also puts src/ on the path
import torch
from _common import ROOT, base_parser, child_env, interleaved, median, result, settings, setup_with_amp, whole
from train_step import make_step

from alexnet.data.folder import IMAGE_EXTENSIONS
from alexnet.errors import DataError
from alexnet.model import create_model

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "imagewoof-mini"


def parse(argv: list[str] | None):
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="an image folder: train/ and val/, or class folders")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--amp", default="auto", help="none, bf16, fp16 or auto (both sides alike)")
    p.add_argument("--copies", type=int, default=0, help="repeat the training set N times (0: enough for ~20,000 images)")
    p.add_argument("--epochs", type=int, default=3, help="the last one is timed")
    p.add_argument("--workers", type=whole(0), default=0, help="loader processes (0: the CPU count, at most 16)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.copies, args.epochs, args.repeats = 4, 1, 1, 1
    if min(args.batch_size, args.epochs, args.repeats) < 1 or args.copies < 0:
        p.error("--batch-size, --epochs and --repeats must be positive, --copies >= 0")
    args.workers = args.workers or min(16, os.cpu_count() or 1)
    return args


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def repeated_folder(data: Path, out: Path, copies: int, quick: bool) -> tuple[Path, int]:
    """train/ (``copies`` links to each training image) and val/ (links to the validation images)."""
    train = data / "train" if (data / "train").is_dir() else data
    val = data / "val" if (data / "val").is_dir() else train
    classes = sorted(d for d in train.iterdir() if d.is_dir() and not d.name.startswith("."))[: 2 if quick else None]
    if not classes:
        raise DataError(f"--data {data}: no class folders of images")
    per_class = 4 if quick else None
    n_train = sum(len(_images(c)[:per_class]) for c in classes)
    copies = copies or max(1, -(-20_000 // max(1, n_train)))
    for c in classes:
        (out / "train" / c.name).mkdir(parents=True)
        (out / "val" / c.name).mkdir(parents=True)
        for k in range(copies):
            for f in _images(c)[:per_class]:
                (out / "train" / c.name / f"{k}_{f.name}").symlink_to(f.resolve())
        for f in _images(val / c.name)[:per_class] if (val / c.name).is_dir() else []:
            (out / "val" / c.name / f.name).symlink_to(f.resolve())
    return out, n_train * copies


class Utilisation:
    """GPU utilisation (%) sampled every 0.2 s in a thread: (wall time, percent) pairs."""

    def __init__(self, device: torch.device) -> None:
        self.samples: list[tuple[float, float]] = []
        self.source = self._sampler(device)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True) if self.source else None

    def _sampler(self, device: torch.device):
        """A working reader of this device's utilisation (each tried once), or None."""
        if device.type != "cuda":
            return None
        index = device.index if device.index is not None else torch.cuda.current_device()
        # torch.cuda.utilization maps a CUDA index to NVML's through CUDA_VISIBLE_DEVICES (NVML
        # numbers every GPU of the machine, in PCI order); nvidia-smi takes the same entry (an
        # index or a UUID) from CUDA_VISIBLE_DEVICES.
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        smi_id = visible[index] if index < len(visible) else str(index)
        cmd = ["nvidia-smi", f"--id={smi_id}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        readers = {
            "NVML": lambda: float(torch.cuda.utilization(index)),
            "nvidia-smi": lambda: float(subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.split()[0]),
        }
        for source, read in readers.items():
            try:
                read()
            except Exception:  # noqa: BLE001 - pynvml absent, no nvidia-smi, MIG, a container without NVML
                continue
            self.read = read
            return source
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), self.read()))
            except Exception:  # noqa: BLE001 - a failed read is a missing sample, never a dead sampler
                pass
            self._stop.wait(0.2)

    def __enter__(self) -> Utilisation:
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def mean(self, start: float, end: float) -> float | None:
        window = [u for t, u in self.samples if start <= t <= end]
        return sum(window) / len(window) if window else None


def train_run(
    data: Path, run: Path, args, device: torch.device, decode: str, env: dict[str, str]
) -> tuple[dict, float | None, str | None]:
    """`alexnet train` in a subprocess (``env`` added to its environment); its last epoch's record
    and the GPU utilisation meanwhile."""
    cmd = [sys.executable, "-m", "alexnet", "train", "--data", str(data), "--out", str(run), "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--amp", args.amp, "--device", str(device), "--decode", decode,
           "--workers", str(args.workers), "--progress", "off", "--model", "alexnet_paper",
           # the pure step's update and loss, whatever the default recipe does
           "--optimizer", "sgd", "--momentum", "0.9", "--weight-decay", "5e-4", "--no-nesterov", "--label-smoothing", "0",
           "--data-preset", "paper",
           # speed, not learning: a rate that keeps the tiny --quick runs finite, and the health checks run
           # (their cost counts) but warn instead of stopping a run that learns nothing
           "--lr", "0.001", "--health", "warn"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.quick:
        cmd += ["--model-option", "input_size=64"]
    env = child_env(**env)
    with Utilisation(device) as util:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        sys.exit(f"end_to_end.py: `alexnet train` failed ({decode}): {tail[0]}")
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    return last, util.mean(last["train_start_time"], last["train_end_time"]), util.source


def pure_step(args, device: torch.device, amp, classes: int) -> float:
    """Images/s of alexnet_paper's training step (``classes`` outputs) on a batch already on the device."""
    torch.manual_seed(0)
    size = 64 if args.quick else 224
    model = create_model("alexnet_paper", num_classes=classes, input_size=size).to(device).train().to(memory_format=torch.channels_last)
    x = torch.randn(args.batch_size, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (args.batch_size,), device=device)
    step = make_step(model, x, y, device, amp, 1 if args.quick else 10, as_train="sgd")  # the runs' --optimizer sgd
    step()  # warm-up: cuDNN autotuning, allocator
    times = interleaved({"pure step (alexnet_paper)": step}, args.repeats, device)["pure step (alexnet_paper)"]
    del model, x, y, step  # the step's closure holds the model, its gradients and the momentum
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the training subprocesses need the memory
    return args.batch_size * (1 if args.quick else 10) / median(times)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    device, amp = setup_with_amp(args)
    if not Path(args.data).is_dir():
        raise DataError(f"--data: folder not found: {args.data}")
    train = Path(args.data) / "train" if (Path(args.data) / "train").is_dir() else Path(args.data)
    classes = sum(1 for d in train.iterdir() if d.is_dir() and not d.name.startswith(".") and _images(d))
    if not classes:  # before the pure step is timed (minutes on a real run), naming the user's folder
        raise DataError(f"--data {args.data}: no class folders of images (the layout of `alexnet train --data`)")
    step_ips = pure_step(args, device, amp, min(classes, 2) if args.quick else max(classes, 2))
    print(f"pure step: {step_ips:.1f} images/s")
    with tempfile.TemporaryDirectory() as tmp:
        folder, n = repeated_folder(Path(args.data), Path(tmp) / "data", args.copies, args.quick)
        print(f"training set: {n} images ({folder})")
        from alexnet.data.packed import prepare

        prepare(folder, Path(tmp) / "packed", workers=args.workers, size=73 if args.quick else 256, show_progress=False)
        off = {"ALEXNET_DECODE_OVERLAP": "0"}
        runs = {"jpeg": (folder, "auto", off), "packed": (Path(tmp) / "packed", "auto", off)}
        if device.type == "cuda":
            runs["jpeg_overlap"] = (folder, "auto", {"ALEXNET_DECODE_OVERLAP": "1"})
            runs["jpeg_cpu"] = (folder, "cpu", off)
        figures, utilisation = {}, {}
        for name, (data, decode, env) in runs.items():
            last, util, source = train_run(data, Path(tmp) / f"run-{name}", args, device, decode, env)
            figures[name] = last["images_per_second"]
            if util is not None:
                utilisation[name] = util
            util_text = f"{util:.0f} % GPU utilisation ({source})" if util is not None else "GPU utilisation not measured"
            print(f"end to end, {name:<12} (--decode {decode}): {last['images_per_second']:9.1f} images/s in the last "
                  f"epoch's {last['train_seconds']:.1f} s of training, {util_text}; validation {last['val_seconds']:.1f} s")
    settings(device=device, batch=args.batch_size, amp=amp or "none", channels_last=True, compile=False,
             workers=args.workers, epochs=args.epochs, images_per_epoch=n, rounds=args.repeats,
             peer="the pure training step, input already on the device")
    for name, ips in figures.items():
        result(f"end_to_end_{name}", ips, step_ips, "images/s", ref=True)
    for name, util in utilisation.items():  # CUDA only, where NVML or nvidia-smi answered and sampled the epoch
        result(f"end_to_end_{name}_gpu_utilisation", util, 100.0, "percent", ref=True)


if __name__ == "__main__":
    _common.run(main)
