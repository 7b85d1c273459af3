"""Start-up at ImageNet's size: what a command does between its start and its first training step or batch.

Every ``alexnet train --data IMAGENET`` (and each ``--resume``), ``evaluate``, ``features`` and ``prepare``
first lists the folder and checks it. This script builds a folder of ILSVRC-2012's shape out of hard
links (no space, no inodes): ``train/`` of ``--classes`` synset folders of ``--per-class`` images named as
ILSVRC's (``n01440764/n01440764_7.JPEG``), a flat ``val/`` of ``--val`` images
(``ILSVRC2012_val_00000001.JPEG``) and Kaggle's ``LOC_val_solution.csv`` labelling them, all links to
a few dozen real photos (``--photos``, by default imagewoof-mini's). Then it runs, one after another, each
command in a child process of its own, the package's functions that list, check and key the folder timed
in it (total seconds and calls of each; they nest, so they do not add up), up to its first step or batch:

  train     a first run: the statistics pass runs over the first --stats-images training images only
            (its rate, and so the time it would take over all of them, is reported), and the statistics
            are cached under the whole folder's key, as if it had read them all
  cached    a second run into another folder: the statistics come from the cache
  resume    ``--resume`` of the first run (stopped at its first step, as Ctrl-C stops it)
  evaluate  its first batch's images and labels in hand
  features  ``features --data ROOT/val``: its first batch through fc7
  prepare   its first batch decoded

Each runs with ``--workers 0 --threads 1 --batch-size 16`` (the loader's processes would blur the
figures); the times are wall seconds from the child's start (Python's and torch's imports included).

    python benchmarks/startup.py --work /tmp/big --wnids wnids.txt     # 1000 x 1281 + 50,000 val links
    python benchmarks/startup.py --work /tmp/big --runs train,cached   # the folder built before is reused
    python benchmarks/startup.py --quick --work W                      # 4 classes of 5: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _common  # also puts src/ on the path
from _common import child_env, whole

RUNS = ("train", "cached", "resume", "evaluate", "features", "prepare")
PHOTOS = _common.ROOT.parent / "shared" / "data" / "imagewoof-mini" / "train"
# module, attribute (a function, or Class.method), what it is: the parts of a start timed in the child
PHASES = (
    ("alexnet.data.sources", "detect", "detect the kind of --data"),
    ("alexnet.data.folder", "find_classes", "class folders (one scandir)"),
    ("alexnet.data.folder", "class_names_from", "class names"),
    ("alexnet.data.folder", "list_images", "list every image (scandir of each class)"),
    ("alexnet.data.folder", "ImageList.__init__", "the listing as arrays (ImageList)"),
    ("alexnet.data.ilsvrc", "val_samples", "flat val/ and its labels"),
    ("alexnet.data.sources", "ClassFolders.of", "train/'s classes without its images (evaluate)"),
    ("alexnet.data.sources", "open_folder_splits", "open train/ and val/"),
    ("alexnet.data.stats", "cache_key", "digests of the listing (stats key: a stat per file)"),
    ("alexnet.data.stats", "compute_stats", "statistics pass"),
    ("alexnet.data.stats", "folder_stats", "mean image and PCA (cache key, cache, pass)"),
    ("alexnet.data.loaders", "_check_every_class_trains", "every class trains"),
    ("alexnet.data.loaders", "listing", "held-out listing's record"),
    ("alexnet.data.loaders", "load_data", "load_data (all of the data's start)"),
    ("alexnet.data.loaders", "load_eval_data", "load_eval_data (all of the data's start)"),
    ("alexnet.resume", "read_checkpoint", "read the checkpoint resumed"),
    ("alexnet.train", "build_model", "build the model"),
    ("alexnet.train", "_start_files", "config.json and metrics.jsonl"),
    ("alexnet.train", "_save", "write a checkpoint"),
)


def build(root: Path, photos: list[Path], wnids: list[str], per_class: int, val: int) -> None:
    """ILSVRC-2012's layout at ``root`` in hard links to ``photos``; a folder built before (``root/.built``
    says its shape) is kept."""
    shape = f"{len(wnids)} {per_class} {val} {wnids[0]} {wnids[-1]}\n"
    if (root / ".built").is_file() and (root / ".built").read_text() == shape:
        return
    if root.exists():
        shutil.rmtree(root)
    started, k = time.perf_counter(), 0
    for wnid in wnids:
        folder = root / "train" / wnid
        folder.mkdir(parents=True)
        for i in range(per_class):
            os.link(photos[k % len(photos)], folder / f"{wnid}_{i + 1}.JPEG")
            k += 1
    (root / "val").mkdir()
    rows = ["ImageId,PredictionString"]
    for i in range(1, val + 1):
        name = f"ILSVRC2012_val_{i:08d}"
        os.link(photos[i % len(photos)], root / "val" / f"{name}.JPEG")
        rows.append(f"{name},{wnids[(i * 7) % len(wnids)]} 1 2 30 40")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    (root / ".built").write_text(shape)
    print(f"built {root}: {len(wnids)} x {per_class} training and {val} validation links in "
          f"{time.perf_counter() - started:.0f} s", flush=True)


def commands(name: str, root: Path, work: Path, quick: bool = False) -> list[str]:
    """The ``alexnet`` arguments of run ``name``; ``quick``: its first run ended its one epoch at its first step."""
    more = ["--epochs", "2"] if quick else []
    common = ["--workers", "0", "--threads", "1", "--progress", "off"]
    train = ["train", "--data", str(root), "--epochs", "1", "--batch-size", "16", *common]
    run = str(work / "run")
    return {
        "train": [*train, "--out", run],
        "cached": [*train, "--out", str(work / "run-cached")],
        "resume": ["train", "--resume", run, *common, *more],
        "evaluate": ["evaluate", f"{run}/last.pt", "--data", str(root), "--batch-size", "16", *common],
        "features": ["features", "--checkpoint", f"{run}/last.pt", "--data", str(root / "val"), "--out",
                     str(work / "index.safetensors"), "--batch-size", "16", *common],
        "prepare": ["prepare", "--data", str(root), "--out", str(work / "packed"), *common],
    }[name]


# -- the child: the command in this process, its phases timed -------------------------------------------
class Clock:
    """Totals and calls of the timed phases, and the moments (seconds since the child's start) it reached."""

    def __init__(self, out: Path, start: float) -> None:
        self.out, self.start = out, start
        self.phases: dict[str, list[float]] = {}
        self.moments: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def mark(self, moment: str) -> None:
        self.moments.setdefault(moment, time.time() - self.start)

    def dump(self) -> None:
        self.out.write_text(json.dumps({"phases": self.phases, "moments": self.moments, "calls": self.calls}))

    def timed(self, label: str, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                total = self.phases.setdefault(label, [0.0, 0])
                total[0] += time.perf_counter() - t
                total[1] += 1
        return wrapper


def replace(module_name: str, attr: str, make) -> None:
    """Replace the function ``module_name.attr`` (or a class's method) by ``make(it)``, in every module of
    the package that imported it by name."""
    import importlib

    module = importlib.import_module(module_name)
    owner, name = (getattr(module, attr.split(".")[0]), attr.split(".")[1]) if "." in attr else (module, attr)
    old = getattr(owner, name)
    new = make(old)
    setattr(owner, name, new)
    if owner is module:
        for other in [m for n, m in sys.modules.items() if n.startswith("alexnet.") and m is not None]:
            for key, value in list(vars(other).items()):
                if value is old:
                    setattr(other, key, new)


def count_calls(clock: Clock) -> None:
    """Count the calls of os.stat, os.lstat and os.scandir (what a network file system answers slowly; a
    DirEntry's own is_dir/is_file ask nothing where the file system gives each entry's type). Each count
    costs ~0.2 us a call, which the phases' times then include."""
    for name in ("stat", "lstat", "scandir"):
        real, key = getattr(os, name), f"os.{name} calls"

        def counted(*args, real=real, key=key, **kwargs):
            clock.calls[key] = clock.calls.get(key, 0) + 1
            return real(*args, **kwargs)
        setattr(os, name, counted)


def child(argv: list[str], out: Path, stats_images: int, calls: bool) -> int:
    """Run ``alexnet ARGV`` here with its phases timed, until its first step or batch (then stopped)."""
    start = float(os.environ["STARTUP_T0"])
    import alexnet.cli
    import alexnet.data.loaders
    import alexnet.data.packed
    import alexnet.evaluate
    import alexnet.retrieval
    import alexnet.train  # noqa: F401 - imported so that their names can be replaced

    clock = Clock(out, start)
    clock.mark("imports")
    if calls:
        count_calls(clock)
    for module, attr, label in PHASES:
        replace(module, attr, lambda fn, label=label: clock.timed(label, fn))
    if stats_images:  # the pass reads the first images only; the cache is keyed (and kept) for all of them
        replace("alexnet.data.stats", "compute_stats", lambda fn: lambda ds, idx, *a, **k: fn(ds, idx[:stats_images], *a, **k))

    def first(moment: str, then):
        def stop(*args, **kwargs):
            clock.mark(moment)
            return then(*args, **kwargs)
        return stop

    def stopped(*_args, **_kwargs):
        clock.dump()
        os._exit(0)

    # train: its first step saves last.pt and stops, as Ctrl-C does (exit 130)
    replace("alexnet.train", "_on_step", lambda fn: first("first step", lambda run, p, stop: fn(run, p, True)))

    def first_batch(fn):
        def evaluate(models, loader, *args, **kwargs):
            clock.mark("data ready")
            next(iter(loader))
            clock.mark("first batch")
            stopped()
        return evaluate
    replace("alexnet.evaluate", "evaluate", first_batch)
    replace("alexnet.retrieval", "fc7", lambda fn: first("first batch", lambda *a, **k: stopped()))
    replace("alexnet.data.packed", "_ShardWriter.add", lambda fn: first("first batch", lambda *a, **k: stopped()))
    try:
        return alexnet.cli.main(argv)
    finally:
        clock.dump()


# -- the parent -------------------------------------------------------------------------------------------
def run_one(name: str, root: Path, work: Path, stats_images: int, calls: bool, quick: bool) -> dict:
    out = work / f"{name}.json"
    argv = commands(name, root, work, quick)
    cmd = [sys.executable, __file__, "--child", str(out), "--stats-images", str(stats_images if name == "train" else 0),
           *(["--count-calls"] if calls else []), "--", *argv]
    env = child_env(STARTUP_T0=repr(time.time()), ALEXNET_CACHE=str(work / "cache"))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode not in (0, 130) or not out.is_file():
        sys.exit(f"startup.py: {name} failed ({proc.returncode}): {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return {**json.loads(out.read_text()), "argv": argv}


def report(name: str, figures: dict, root: Path, work: Path, stats_images: int, train_images: int) -> None:
    moments = figures["moments"]
    end = moments.get("first step", moments.get("first batch"))
    print(f"\n{name}: alexnet {' '.join(figures['argv'])}", flush=True)
    print(f"  {end:7.2f} s to the {'first step' if 'first step' in moments else 'first batch'} "
          f"(imports {moments['imports']:.2f} s)", flush=True)
    for label, (seconds, calls) in sorted(figures["phases"].items(), key=lambda kv: -kv[1][0]):
        print(f"  {seconds:7.2f} s  {calls:>3} call{'s' * (calls != 1)}  {label}", flush=True)
    if figures["calls"]:
        print("  " + ", ".join(f"{n:,} {key}" for key, n in sorted(figures["calls"].items())), flush=True)
    if name == "train" and "statistics pass" in figures["phases"]:
        seconds = figures["phases"]["statistics pass"][0]
        rate = stats_images / seconds
        print(f"  statistics pass: {stats_images} images in {seconds:.1f} s, {rate:.0f} images/s: "
              f"{train_images / rate / 60:.0f} min for all {train_images} training images", flush=True)


def sizes(work: Path) -> None:
    """The run folder's and the statistics cache's files, by size."""
    for path in sorted([*(work / "run").glob("*"), *(work / "cache").glob("*.json")]):
        if path.is_file():
            print(f"  {path.stat().st_size:>12,} bytes  {path.relative_to(work)}", flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, help="the folder built (WORK/data) and the runs' files")
    p.add_argument("--photos", type=Path, default=PHOTOS, help="real photos to link to (class folders of JPEGs)")
    p.add_argument("--n-photos", type=whole(1), default=40, help="how many of them (the first by name)")
    p.add_argument("--wnids", type=Path, help="a file of --classes WNIDs, one a line (default: n00000000, n00000001, ...)")
    p.add_argument("--classes", type=whole(2), default=1000)
    p.add_argument("--per-class", type=whole(1), default=1281, help="training images a class (ILSVRC-2012: 732-1300)")
    p.add_argument("--val", type=whole(1), default=50_000)
    p.add_argument("--stats-images", type=whole(0), default=2000, help="images the first run's statistics pass reads")
    p.add_argument("--runs", default=",".join(RUNS), help=f"some of {','.join(RUNS)} (resume, evaluate and features need train's)")
    p.add_argument("--count-calls", action="store_true", help="also count os.stat, os.lstat and os.scandir calls "
                   "(a Python wrapper each: the times include it)")
    p.add_argument("--quick", action="store_true", help="4 classes of 5 images, 8 in val/: checks that it runs")
    p.add_argument("--device", default="cpu", help="accepted for alexnet benchmark; the commands run on the CPU")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("argv", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.work is None and args.child is None:
        p.error("the following arguments are required: --work")
    if args.quick:
        args.classes, args.per_class, args.val, args.stats_images = 4, 5, 8, 16
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        return child(args.argv, args.child, args.stats_images, args.count_calls)
    photos = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[: args.n_photos]
    if not photos:
        sys.exit(f"startup.py: --photos {args.photos}: no JPEG files")
    wnids = args.wnids.read_text().split()[: args.classes] if args.wnids else [f"n{i:08d}" for i in range(args.classes)]
    root, work = args.work / "data", args.work
    build(root, photos, sorted(wnids), args.per_class, args.val)
    runs = [r for r in RUNS if r in args.runs.split(",")]
    for stale in ("run", "cache") * ("train" in runs) + ("run-cached", "packed", "index.safetensors"):  # made again
        shutil.rmtree(work / stale, ignore_errors=True) if (work / stale).is_dir() else (work / stale).unlink(missing_ok=True)
    for name in runs:
        figures = run_one(name, root, work, args.stats_images, args.count_calls, args.quick)
        report(name, figures, root, work, args.stats_images, len(wnids) * args.per_class)
        if name == "train":
            sizes(work)
    return 0


if __name__ == "__main__":
    _common.run(main)
