"""Memory: the peak of each command at its defaults, on real photos, against the peer.

Each command runs as a subprocess; its whole process tree (the command and its data-loading worker
processes) is sampled every --interval seconds from /proc: the peak of the tree's summed PSS
(``/proc/PID/smaps_rollup``: a page shared by forked workers counts once, split between them, where
RSS counts it in each) and the main process's peak RSS (``VmHWM``, the kernel's own high-water mark).
The peer runs in the same way, in the same run, one after the other.

Commands (``--only``), on a subset of --data made of links (``--steps`` x the batch size training
images spread over the classes, ``--val-images`` validation images):
  train          alexnet train at its defaults (preset photos: batch, workers and --amp as they resolve), 1 epoch
                 peer: torchvision's reference-style loop (torchvision.models.alexnet, ImageFolder +
                 RandomResizedCrop/flip/ToTensor/Normalize, DataLoader of the same batch and workers,
                 SGD with Nesterov momentum, the same autocast and memory format), then its validation
  train_system   the same run with ALEXNET_MALLOC=system (glibc's own thresholds; train's peer)
  prepare        alexnet prepare of the subset (no peer)
  train_packed   alexnet train from that pack (train's peer, measured once)
  evaluate       alexnet evaluate of train's best.pt on the subset's val/; peer: torchvision eval loop
                 (Resize 256, CenterCrop 224) at the same batch and workers
  ten_crop       the same with --ten-crop; peer: TenCrop, the ten views of a batch in one forward
  predict        alexnet predict of the subset's val/ (no peer)
  features       alexnet features of the subset's val/ (no peer)

    python benchmarks/memory.py --data ~/data/imagenette [--only train,evaluate] [--steps 60] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import _common  # also puts src/ on the path
from _common import ROOT, child_env, machine_description, result, settings, whole

from alexnet.data.folder import IMAGE_EXTENSIONS
from alexnet.errors import DataError

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "imagewoof-mini"
COMMANDS = ("train", "train_system", "prepare", "train_packed", "evaluate", "ten_crop", "predict", "features")
DEFAULT_ONLY = ("train", "prepare", "train_packed", "evaluate", "ten_crop", "predict", "features")
PEERS = {"train": "train", "train_packed": "train", "evaluate": "evaluate", "ten_crop": "ten_crop"}
NO_PEER = {"train_system": "train's (the peer uses glibc's thresholds anyway)"}
MIB = 1024.0


@dataclass
class Peak:
    """What one run of a command held at most: the tree's summed PSS, the main process's RSS (MiB)."""

    pss: float = 0.0
    main_pss: float = 0.0  # the main process's share at the tree's peak (the rest: its workers')
    rss: float = 0.0
    processes: int = 0
    seconds: float = 0.0
    returncode: int = 0
    stopped: bool = False
    samples: int = 0


def _children() -> dict[int, list[int]]:
    """Each process's children, from /proc/*/stat (the parent pid follows the name's closing parenthesis)."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # gone since the listing
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants alive now."""
    tree, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, []))
    return out


def _field_kib(path: str, name: str) -> int | None:
    """A ``Name:  N kB`` field of a /proc file, or None where the process is gone."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def sample(root: int) -> tuple[int, int, int, int]:
    """(summed PSS of the tree, the root's PSS, the root's peak RSS so far, processes), PSS and RSS in KiB."""
    pids = process_tree(root)
    pss = [_field_kib(f"/proc/{p}/smaps_rollup", "Pss") or 0 for p in pids]
    return sum(pss), pss[0], _field_kib(f"/proc/{root}/status", "VmHWM") or 0, len(pids)


def measure(what: str, cmd: list[str], env: dict[str, str], interval: float, limit: float) -> Peak:
    """Run ``cmd`` (niced), sampling its tree every ``interval`` seconds (or four times a sample's cost,
    if longer) until it ends; past ``limit`` seconds it is sent SIGINT (a training run saves and stops),
    then killed 60 s later."""
    peak, t0 = Peak(), time.monotonic()
    proc = subprocess.Popen(["nice", "-n", "10", *cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = t0 + limit if limit else None
    try:
        while proc.poll() is None:
            t = time.monotonic()
            pss, main_pss, hwm, n = sample(proc.pid)
            cost = time.monotonic() - t  # smaps_rollup walks the page tables: ~40 ms for a 2 GB process
            peak.samples += 1
            if pss / MIB > peak.pss:
                peak.pss, peak.main_pss = pss / MIB, main_pss / MIB
            peak.rss, peak.processes = max(peak.rss, hwm / MIB), max(peak.processes, n)
            if deadline and time.monotonic() > deadline and not peak.stopped:
                peak.stopped = True
                proc.send_signal(signal.SIGINT)
                deadline = time.monotonic() + 60
            elif peak.stopped and time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(max(interval, 4 * cost))  # the sampler takes at most a fifth of a core from the command
    finally:
        if proc.poll() is None:  # this script stopped (Ctrl-C): so does the command, in its own session
            os.killpg(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    peak.seconds, peak.returncode = time.monotonic() - t0, proc.returncode
    if proc.returncode != 0 and not peak.stopped:
        tail = (err.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        sys.exit(f"memory.py: {what} failed: {tail}")
    return peak


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def subset(data: Path, out: Path, n_train: int, n_val: int, n_classes: int = 0) -> Path:
    """train/ and val/ of links: ``n_train`` and ``n_val`` images (0: all) taken in turn from each class
    (the first ``n_classes``; 0: all)."""
    train = data / "train" if (data / "train").is_dir() else data
    val = data / "val" if (data / "val").is_dir() else train
    classes = sorted(d.name for d in train.iterdir() if d.is_dir() and not d.name.startswith(".") and _images(d))[: n_classes or None]
    if not classes:
        raise DataError(f"--data {data}: no class folders of images (the layout of `alexnet train --data`)")
    for split, source, n in (("train", train, n_train), ("val", val, n_val)):
        lists = [_images(source / c) if (source / c).is_dir() else [] for c in classes]
        picked = [(c, f) for k in range(max(map(len, lists))) for c, files in zip(classes, lists) if k < len(files) for f in [files[k]]]
        for c, f in picked[: n or None]:
            (out / split / c).mkdir(parents=True, exist_ok=True)
            (out / split / c / f.name).symlink_to(f.resolve())
    return out


def ours(name: str, work: Path, args) -> tuple[list[str], dict[str, str]]:
    """Our command line (and extra environment) for ``name``, at its defaults."""
    alexnet = [sys.executable, "-m", "alexnet"]
    common = ["--threads", str(args.threads)] if args.threads else []
    data, ckpt = str(work / "data"), str(work / "run-train" / "best.pt")
    quick = ["--model-option", "input_size=64", "--batch-size", "4", "--lr", "0.001", "--health", "warn"] if args.quick else []
    train = [*alexnet, "train", "--epochs", "1", "--progress", "off", *quick, *common]
    use = {"evaluate": ["evaluate", ckpt, "--data", data], "ten_crop": ["evaluate", ckpt, "--data", data, "--ten-crop"],
           "predict": ["predict", str(work / "data" / "val"), "--checkpoint", ckpt],
           "features": ["features", ckpt, "--data", str(work / "data" / "val"), "--out", str(work / "index.safetensors")]}
    if name in ("train", "train_system"):
        return [*train, "--data", data, "--out", str(work / f"run-{name}")], {"ALEXNET_MALLOC": "system"} if name == "train_system" else {}
    if name == "train_packed":
        return [*train, "--data", str(work / "packed"), "--out", str(work / "run-packed")], {}
    if name == "prepare":
        return [*alexnet, "prepare", "--data", data, "--out", str(work / "packed"), *common], {}
    return [*alexnet, *use[name], "--progress", "off", *common], {}


def resolved(run: Path) -> dict:
    """What our training run resolved: batch size, workers, amp, channels_last (its config.json)."""
    import json

    config = json.loads((run / "config.json").read_text())
    train = config["train"]
    return {**{k: train[k] for k in ("batch_size", "eval_batch_size", "workers", "channels_last", "momentum", "nesterov",
                                     "weight_decay", "label_smoothing", "lr")},
            "amp": config["environment"]["amp"]}  # the precision it ran in: none (float32), bfloat16


def peer_command(kind: str, work: Path, args, cfg: dict) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peer", kind, "--work", str(work), "--threads", str(args.threads),
           "--peer-config", repr(cfg)]
    return cmd + (["--quick"] if args.quick else [])


def _peer_model(classes: int, cfg: dict, train: bool):
    """torchvision's alexnet in ours' memory format; autocast's dtype: the precision ours ran in."""
    import torch
    import torchvision

    model = torchvision.models.alexnet(num_classes=classes).train(train)
    if cfg.get("channels_last", True):
        model = model.to(memory_format=torch.channels_last)
    return model, None if cfg["amp"] in ("none", "float32") else getattr(torch, cfg["amp"])  # environment.amp: none, bfloat16


def _image_folder(folder: Path, transform=None):
    """torchvision's ImageFolder, minus hidden folders (ours caches its mean image in ``.alexnet-cache/``)."""
    from torchvision.datasets import ImageFolder

    class Visible(ImageFolder):
        def find_classes(self, directory):
            classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
            return classes, {c: i for i, c in enumerate(classes)}

    return Visible(str(folder), transform)


def _peer_eval(model, folder: Path, transform, batch: int, workers: int, amp, ten: bool) -> None:
    """torchvision's evaluation loop: the predicted class of each image (of its ten views averaged)."""
    import torch

    loader = torch.utils.data.DataLoader(_image_folder(folder, transform), batch_size=batch, num_workers=workers)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
        for x, _ in loader:
            x = x.flatten(0, 1) if ten else x  # (B, 10, 3, H, W): the views of a batch in one forward
            p = model(x.contiguous(memory_format=torch.channels_last)).float().softmax(1)
            (p.unflatten(0, (-1, 10)).mean(1) if ten else p).argmax(1)


def run_peer(kind: str, work: Path, cfg: dict, quick: bool) -> None:
    """The peer of ``kind`` (train, evaluate, ten_crop) on ``work``'s data, as torchvision's references run it."""
    import torch
    from torchvision import transforms as T

    size, resize = (64, 73) if quick else (224, 256)
    norm = [T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    ten = T.Compose([T.Resize(resize), T.TenCrop(size), T.Lambda(lambda views: torch.stack([T.Compose(norm)(v) for v in views]))])
    centre = T.Compose([T.Resize(resize), T.CenterCrop(size), *norm])
    val = work / "data" / "val"
    if kind != "train":
        model, amp = _peer_model(len(_image_folder(val).classes), cfg, train=False)
        _peer_eval(model, val, ten if kind == "ten_crop" else centre, cfg["batch_size"], cfg["workers"], amp, kind == "ten_crop")
        return
    data = _image_folder(work / "data" / "train", T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *norm]))
    loader = torch.utils.data.DataLoader(data, batch_size=cfg["batch_size"], shuffle=True, num_workers=cfg["workers"])
    model, amp = _peer_model(len(data.classes), cfg, train=True)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"],
                          weight_decay=cfg["weight_decay"])
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
    for x, y in loader:
        with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
            loss = loss_fn(model(x.contiguous(memory_format=torch.channels_last)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _peer_eval(model, val, centre, cfg["eval_batch_size"], cfg["workers"], amp, ten=False)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny setting for CI: checks it runs, not what it measures")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="an image folder: train/ and val/, or class folders")
    p.add_argument("--only", default=",".join(DEFAULT_ONLY), help=f"commands, comma-separated, of: {', '.join(COMMANDS)}")
    p.add_argument("--steps", type=whole(1), default=60, help="training steps (the training subset: steps x our batch size)")
    p.add_argument("--val-images", type=whole(0), default=500, help="validation images (0: all)")
    p.add_argument("--threads", type=whole(0), default=0, help="torch threads of each command (0: its default)")
    p.add_argument("--interval", type=float, default=0.1, help="seconds between samples")
    p.add_argument("--seconds", type=float, default=0, help="stop a command (SIGINT) after this long (0: never)")
    p.add_argument("--work", help="folder for the subset, pack and runs (default: a temporary one)")
    p.add_argument("--peer", choices=("train", "evaluate", "ten_crop"), help=argparse.SUPPRESS)
    p.add_argument("--peer-config", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.only = [c.strip() for c in args.only.split(",") if c.strip()]
    if unknown := [c for c in args.only if c not in COMMANDS]:
        p.error(f"--only: unknown command {unknown[0]!r}; choose from: {', '.join(COMMANDS)}")
    if args.quick:
        args.steps, args.val_images = 2, 4
    return args


def report(name: str, mine: Peak, peer: Peak | None) -> None:
    def said(p: Peak) -> str:
        end = (f"stopped after {p.seconds:.0f} s" if p.stopped else f"{p.seconds:.0f} s") + f", {p.samples} samples"
        return (f"peak PSS {p.pss:7.1f} MiB (main {p.main_pss:.0f} + the rest {p.pss - p.main_pss:.0f}; at most {p.processes} "
                f"processes), main RSS {p.rss:7.1f} MiB, {end}")

    print(f"{name:<13} ours: {said(mine)}", flush=True)
    if peer is not None:
        print(f"{'':<13} peer: {said(peer)}", flush=True)
    else:
        print(f"{'':<13} peer: {NO_PEER.get(name, 'none (no natural peer: our figure alone)')}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.peer:
        import ast

        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        run_peer(args.peer, Path(args.work), ast.literal_eval(args.peer_config), args.quick)
        return
    if not Path(args.data).is_dir():
        raise DataError(f"--data: folder not found: {args.data}")
    if not Path("/proc/self/smaps_rollup").is_file():
        raise DataError("memory.py reads /proc/PID/smaps_rollup (Linux 4.14 and later): not found here")
    print(f"machine: {machine_description()}; {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.1f} GiB")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        batch = 4 if args.quick else 128  # the photos preset's; the run's config.json says what it resolved
        if not (work / "data").exists():
            subset(Path(args.data), work / "data", args.steps * batch, args.val_images, 2 if args.quick else 0)
        figures = measure_all(args, work)
    cfg = figures.pop("_cfg", {})
    settings(threads=args.threads or "default", interval=args.interval, steps=args.steps, val_images=args.val_images,
             **{k: cfg.get(k) for k in ("batch_size", "eval_batch_size", "workers", "amp", "channels_last")})
    for name, (mine, peer) in figures.items():
        if peer is not None:
            result(f"memory_{name}_pss", mine.pss, peer.pss, "MiB")
            result(f"memory_{name}_main_rss", mine.rss, peer.rss, "MiB")


def measure_all(args, work: Path) -> dict:
    """Each command of --only, then its peer; train first (its best.pt is the others' checkpoint)."""
    trained, packed = (work / "run-train" / "best.pt").is_file(), (work / "packed" / "index.json").is_file()  # a --work reused
    uses = set(args.only) & {"evaluate", "ten_crop", "predict", "features"}
    order = [c for c in COMMANDS if c in args.only or (c == "train" and uses and not trained)
             or (c == "prepare" and "train_packed" in args.only and not packed)]
    figures: dict = {}
    peers: dict[str, Peak] = {}
    for name in order:
        cmd, extra = ours(name, work, args)
        mine = measure(f"ours' {name}", cmd, child_env(**extra), args.interval, args.seconds)
        runs = [work / f"run-{r}" for r in ("train", "packed", "train_system") if (work / f"run-{r}" / "config.json").is_file()]
        cfg = figures.setdefault("_cfg", resolved(runs[0])) if runs else {}
        peer = None
        if name in PEERS and name in args.only:
            if name in ("evaluate", "ten_crop"):  # ours' evaluate defaults: batch 256, no workers
                cfg = {**cfg, "batch_size": 256, "workers": 0}
            if PEERS[name] not in peers:  # train_packed's is train's: the peer reads the JPEGs either way
                peers[PEERS[name]] = measure(f"the peer of {name}", peer_command(PEERS[name], work, args, cfg), child_env(),
                                             args.interval, args.seconds)
            peer = peers[PEERS[name]]
        if name in args.only:
            report(name, mine, peer)
            figures[name] = (mine, peer)
    return figures


if __name__ == "__main__":
    _common.run(main)
