"""Memory over a long run: does `alexnet train`'s memory grow with its steps and epochs?

A run of many epochs (each crossing validation, both checkpoints, metrics.jsonl and curves.png) is
sampled every --interval seconds from /proc, as memory.py samples a command: the summed PSS of the
process and its data-loading workers (``smaps_rollup``: a page shared by forked workers counts once),
the main process's share and its current RSS. Each epoch's figures are read at the end of its
training phase and at its peak, cut by the ``train_start_time`` / ``train_end_time`` metrics.jsonl
records; step ~100 is interpolated in epoch 1's training phase. Growth shows as a rise from epoch to
epoch after the first (MiB per 1,000 steps, end of epoch 2 to the end of the last).

Growth with the data set's size (``--per-image 20000,200000``): synthetic image folders of that many
hard links to 20 tiny JPEGs (24x24, one a class, plus 10 validation images a class) are opened as
`alexnet train` opens them (its malloc settings, ``load_data``, preset photos, --workers, a first run's
statistics pass) in a child process, which then reads one epoch of the training loader. Their
difference gives the bytes per image that the main process keeps (its RSS after opening and at the
epoch's end; tracemalloc's count in another child, its traces being memory of their own), and that
each worker copies from it while it reads (the growth of its private pages from the first batch to
the epoch's end), and both for ImageNet's 1.28 M photos.

Runs (``--runs``), one after the other, each its own subprocess on the same settings:
  jpeg     alexnet train --data DATA (the JPEG folder; preset photos: mean image, PCA lighting)
  system   the same with ALEXNET_MALLOC=system (glibc's own mmap and trim thresholds)
  packed   the same from `alexnet prepare --size S` of DATA (S: the size train resizes to for --input-size)
  peer     torchvision's reference-style loop: ImageFolder + RandomResizedCrop/flip/ToTensor/Normalize,
           a persistent DataLoader of the same batch and workers, torchvision.models.alexnet, SGD with
           Nesterov momentum, the same epochs, a validation (Resize + CenterCrop) and a torch.save each epoch

    python benchmarks/memory_growth.py --work /tmp/growth --per-image 20000,200000 --workers 2
    python benchmarks/memory_growth.py --data ~/data/imagenette --epochs 8 --batch-size 32 --input-size 64 \\
        --workers 2 --threads 2 --runs jpeg,system,packed,peer --work /tmp/growth
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import _common  # also puts src/ on the path
from _common import child_env, machine_description, settings, whole
from memory import _field_kib, _image_folder, process_tree, subset

from alexnet.errors import DataError

RUNS = ("jpeg", "system", "packed", "peer")
MIB = 1024.0


def sample(root: int) -> dict[str, float]:
    """The tree's summed PSS, the root's PSS and current RSS (MiB), its processes, at Unix time ``t``."""
    pids = process_tree(root)
    pss = [_field_kib(f"/proc/{p}/smaps_rollup", "Pss") or 0 for p in pids]
    rss = _field_kib(f"/proc/{root}/status", "VmRSS") or 0
    return {"t": time.time(), "pss": sum(pss) / MIB, "main": pss[0] / MIB, "rss": rss / MIB, "n": len(pids)}


def timeline(cmd: list[str], env: dict[str, str], interval: float, log: Path) -> list[dict[str, float]]:
    """Run ``cmd`` (niced, its output to ``log``), sampling its tree every ``interval`` seconds until it ends."""
    samples = []
    with log.open("w") as out:
        proc = subprocess.Popen(["nice", "-n", "10", *cmd], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while proc.poll() is None:
                samples.append(sample(proc.pid))
                time.sleep(interval)
        finally:
            if proc.poll() is None:  # this script stopped (Ctrl-C): so does the command, in its own session
                os.killpg(proc.pid, signal.SIGKILL)
    if proc.wait() != 0:
        tail = (log.read_text().strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        sys.exit(f"memory_growth.py: {cmd[2:4]} failed ({log}): {tail}")
    return [s for s in samples if s["n"]]


def epochs_of(samples: list[dict[str, float]], records: list[dict]) -> list[dict[str, float]]:
    """Per epoch: the step reached, the tree's PSS and the main RSS at the end of its training phase
    (the last sample before ``train_end_time``) and the tree's peak PSS from its start to the next's."""
    rows = []
    for k, r in enumerate(records):
        until = records[k + 1]["train_start_time"] if k + 1 < len(records) else float("inf")
        during = [s for s in samples if r["train_start_time"] <= s["t"] < until]
        trained = [s for s in during if s["t"] <= r["train_end_time"]] or during
        if not during:
            continue
        rows.append({"epoch": r["epoch"], "step": r["step"], "pss": trained[-1]["pss"], "main": trained[-1]["main"],
                     "rss": trained[-1]["rss"], "peak": max(s["pss"] for s in during)})
    return rows


def at_step(samples: list[dict[str, float]], first: dict, step: int) -> dict[str, float] | None:
    """The sample nearest step ``step`` of the first epoch, its time interpolated in the training phase."""
    t = first["train_start_time"] + (first["train_end_time"] - first["train_start_time"]) * step / first["step"]
    return min(samples, key=lambda s: abs(s["t"] - t)) if step <= first["step"] else None


def report(name: str, samples: list[dict[str, float]], records: list[dict], seconds: float) -> dict[str, float]:
    """Print the run's per-epoch lines and its growth; return the figures."""
    rows = epochs_of(samples, records)
    s100 = at_step(samples, records[0], 100)
    print(f"{name}: {len(records)} epochs, {records[-1]['step']} steps, {seconds:.0f} s, {len(samples)} samples, "
          f"at most {max(s['n'] for s in samples)} processes; peak PSS {max(s['pss'] for s in samples):.0f} MiB", flush=True)
    if s100:
        print(f"  step ~100        PSS {s100['pss']:7.1f} MiB (main {s100['main']:.0f}), main RSS {s100['rss']:7.1f}", flush=True)
    for r in rows:
        print(f"  epoch {r['epoch']:>2} step {r['step']:>5}  PSS {r['pss']:7.1f} MiB (main {r['main']:.0f}), main RSS "
              f"{r['rss']:7.1f}, epoch's peak PSS {r['peak']:7.1f}", flush=True)
    end = samples[-1]
    print(f"  last sample      PSS {end['pss']:7.1f} MiB (main {end['main']:.0f}), main RSS {end['rss']:7.1f}", flush=True)
    figures = {"step100_pss": s100["pss"] if s100 else float("nan"), "end_pss": rows[-1]["pss"] if rows else float("nan")}
    if len(rows) >= 3:
        steps = rows[-1]["step"] - rows[1]["step"]
        for key in ("pss", "rss"):
            figures[f"{key}_per_1000_steps"] = (rows[-1][key] - rows[1][key]) * 1000 / steps
        print(f"  growth from epoch 2 to {rows[-1]['epoch']}: PSS {figures['pss_per_1000_steps']:+.1f} MiB, main RSS "
              f"{figures['rss_per_1000_steps']:+.1f} MiB per 1,000 steps", flush=True)
    return figures


def ours_command(args: argparse.Namespace, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "alexnet", "train", "--data", str(data), "--out", str(out), "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--model-option", f"input_size={args.input_size}", "--workers",
            str(args.workers), "--progress", "off", "--seed", "0", *(["--threads", str(args.threads)] if args.threads else [])]


def run_one(name: str, args: argparse.Namespace, work: Path) -> dict[str, float]:
    """One run of ``name``, sampled; its figures."""
    out, data, env = work / f"run-{name}", Path(args.data), child_env()
    if name == "packed":
        data = work / "packed"
        if not (data / "index.json").is_file():
            size = 256 if args.input_size in (224, 227) else round(args.input_size * 256 / 224)  # loaders._stored_size
            subprocess.run([sys.executable, "-m", "alexnet", "prepare", "--data", args.data, "--out", str(data), "--size",
                            str(size), "--progress", "off"], env=env, check=True)
    if name == "system":
        env = child_env(ALEXNET_MALLOC="system")
    cmd = ([sys.executable, str(Path(__file__).resolve()), "--peer", str(out), *sys.argv[1:], "--data", args.data]
           if name == "peer" else [*ours_command(args, data, out), "--force"])
    t0 = time.monotonic()
    samples = timeline(cmd, env, args.interval, work / f"{name}.log")
    seconds = time.monotonic() - t0
    (work / f"timeline-{name}.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return report(name, samples, records, seconds)


def run_peer(args: argparse.Namespace, out: Path) -> None:
    """torchvision's reference-style training loop, writing metrics.jsonl's times as ours does."""
    import torch
    import torchvision
    from torchvision import transforms as T

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size, data = args.input_size, Path(args.data)
    norm = [T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    train = _image_folder(data / "train", T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *norm]))
    val = _image_folder(data / "val", T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), *norm]))
    loaders = [torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=shuffle, drop_last=shuffle, num_workers=args.workers,
                                           persistent_workers=args.workers > 0) for ds, shuffle in ((train, True), (val, False))]
    model = torchvision.models.alexnet(num_classes=len(train.classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    out.mkdir(parents=True, exist_ok=True)
    step = 0
    for epoch in range(args.epochs):
        started = time.time()
        model.train()
        for x, y in loaders[0]:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        trained = time.time()
        model.eval()
        with torch.no_grad():
            right = sum(int((model(x).argmax(1) == y).sum()) for x, y in loaders[1])
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, out / "last.pt")
        with (out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"epoch": epoch + 1, "step": step, "train_start_time": started, "train_end_time": trained,
                                "val_top1": right / len(val)}) + "\n")


def synthetic_folder(root: Path, images: int, classes: int = 20) -> Path:
    """``root`` with train/ of ``images`` and val/ of 10 images a class: hard links to one JPEG a class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", images // classes), ("val", 10)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            if folder.is_dir():
                continue
            folder.mkdir(parents=True)
            first = folder / f"n{c:08d}_0.JPEG"
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(first, quality=90)
            for k in range(1, n):
                os.link(first, folder / f"n{c:08d}_{k}.JPEG")
    return root


def listing_child(args: argparse.Namespace) -> None:
    """In its own process: open --listing-child's folder as `alexnet train` opens it (its malloc settings,
    a first run's statistics pass), then read one epoch; print a JSON line. With --traced, only open it,
    under tracemalloc: its traces are memory of their own (an entry per live Python block, freed by
    ``stop``), which made the main RSS and the workers' copies of the untraced runs' figures grow with the
    images, so they are measured in another process."""
    import tracemalloc

    import torch

    from alexnet.data.loaders import load_data
    from alexnet.runtime import keep_freed_memory

    def private(pid: int) -> int:
        return sum(_field_kib(f"/proc/{pid}/smaps_rollup", f) or 0 for f in ("Private_Clean", "Private_Dirty"))

    keep_freed_memory()  # as the alexnet command does (ALEXNET_MALLOC=system: glibc's own settings)
    torch.set_num_threads(args.threads or 1)
    load_data(Path(args.listing_child) / "val", batch_size=8, input_size=args.input_size, preset="photos", show_progress=False)
    if args.traced:
        tracemalloc.start()
    rss = _field_kib("/proc/self/status", "VmRSS")  # after the imports that a first call makes
    data = load_data(args.listing_child, batch_size=256, input_size=args.input_size, workers=args.workers, preset="photos",
                     show_progress=False)
    opened = (_field_kib("/proc/self/status", "VmRSS") - rss) * 1024
    if args.traced:
        print(json.dumps({"images": data.train_size, "traced": tracemalloc.get_traced_memory()[0]}), flush=True)
        return
    batches = iter(data.train)
    next(batches)
    pids = [w.pid for w in data.train.loader._iterator._workers] if args.workers else []
    first = [private(p) for p in pids]
    for _ in batches:
        pass
    print(json.dumps({"images": data.train_size, "rss": opened, "rss_end": (_field_kib("/proc/self/status", "VmRSS") - rss) * 1024,
                      "workers": [(private(p) - f) * 1024 for p, f in zip(pids, first)]}), flush=True)
    data.close()


def listing_run(args: argparse.Namespace, work: Path, folder: Path, traced: bool) -> dict:
    """One --listing-child run on ``folder``, with a cache of its own (a first run's statistics pass)."""
    cache = work / f"cache-{folder.name}{'-traced' if traced else ''}"
    shutil.rmtree(cache, ignore_errors=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--listing-child", str(folder), *(["--traced"] if traced else []),
           *sys.argv[1:]]
    out = subprocess.run(cmd, env=child_env(ALEXNET_CACHE=str(cache)), capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def per_image(args: argparse.Namespace, work: Path) -> None:
    """The per-image figures of two synthetic folders' sizes (``--per-image``), printed."""
    rows = []
    for n in args.per_image:
        folder = synthetic_folder(work / f"listing-{n}", n)
        rows.append({**listing_run(args, work, folder, traced=False), **listing_run(args, work, folder, traced=True)})
        r, mib = rows[-1], 2**20
        print(f"{r['images']:>8} images: opened, main traced {r['traced'] / mib:.1f} MiB, main RSS +{r['rss'] / mib:.1f} MiB "
              f"(+{r['rss_end'] / mib:.1f} at the epoch's end); over the epoch each worker's private pages +"
              f"{', '.join(f'{x / mib:.1f}' for x in r['workers'])} MiB", flush=True)
    if len(rows) == 2:
        n = rows[1]["images"] - rows[0]["images"]
        per = {k: (rows[1][k] - rows[0][k]) / n for k in ("traced", "rss", "rss_end")}
        per["worker"] = (sum(rows[1]["workers"]) - sum(rows[0]["workers"])) / max(1, len(rows[1]["workers"])) / n
        print(f"per image: main traced {per['traced']:.0f} B, main RSS {per['rss']:.0f} B ({per['rss_end']:.0f} B at the "
              f"epoch's end), each worker {per['worker']:.0f} B; for 1.28 M images: "
              + ", ".join(f"{k} {per[k] * 1.28e6 / 2**20:.0f} MiB" for k in ("traced", "rss", "rss_end", "worker")), flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="an image folder with train/ and val/ class folders (the runs')")
    p.add_argument("--per-image", help="two training-set sizes, comma-separated: bytes per image (no runs)")
    p.add_argument("--runs", default="jpeg,peer", help=f"comma-separated, of: {', '.join(RUNS)}")
    p.add_argument("--epochs", type=whole(3), default=8)
    p.add_argument("--batch-size", type=whole(1), default=32)
    p.add_argument("--input-size", type=whole(32), default=64)
    p.add_argument("--workers", type=whole(0), default=2)
    p.add_argument("--threads", type=whole(0), default=0, help="torch threads of each run (0: its default)")
    p.add_argument("--train-images", type=whole(0), default=0, help="a subset of links: this many training images (0: all)")
    p.add_argument("--val-images", type=whole(0), default=0, help="and this many validation images (0: all)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    p.add_argument("--work", required=True, help="folder for the pack, the runs, their logs and timelines")
    p.add_argument("--peer", help=argparse.SUPPRESS)  # the peer's own process: its run folder
    p.add_argument("--listing-child", help=argparse.SUPPRESS)  # --per-image's own process: its folder
    p.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)  # that process only counts tracemalloc's bytes
    args = p.parse_args(argv)
    args.per_image = [int(n) for n in args.per_image.split(",")] if args.per_image else []
    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if unknown := [r for r in args.runs if r not in RUNS]:
        p.error(f"--runs: unknown run {unknown[0]!r}; choose from: {', '.join(RUNS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.peer:
        run_peer(args, Path(args.peer))
        return
    if args.listing_child:
        listing_child(args)
        return
    if args.per_image:
        print(f"machine: {machine_description()}", flush=True)
        per_image(args, Path(args.work))
        return
    if not args.data:
        raise DataError("--data: an image folder with train/ and val/ class folders is needed for the runs (or give --per-image)")
    if not (Path(args.data) / "train").is_dir() or not (Path(args.data) / "val").is_dir():
        raise DataError(f"--data {args.data}: needs train/ and val/ class folders")
    print(f"machine: {machine_description()}", flush=True)
    settings(epochs=args.epochs, batch_size=args.batch_size, input_size=args.input_size, workers=args.workers,
             threads=args.threads or "default", interval=args.interval, train_images=args.train_images or "all",
             val_images=args.val_images or "all")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.train_images or args.val_images:  # links to a part of --data, taken in turn from each class
        if not (work / "data").is_dir():
            subset(Path(args.data), work / "data", args.train_images, args.val_images)
        args.data = str(work / "data")
    for name in args.runs:
        run_one(name, args, work)


if __name__ == "__main__":
    _common.run(main)
