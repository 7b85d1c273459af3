"""The other commands: import, export, summary, models, download, prepare, benchmark."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import _check_output, _key_values, _not_the_input, _progress_flag


def cmd_import(args: argparse.Namespace) -> int:
    """``alexnet import``: torchvision's or BVLC's AlexNet weights (``file``, default the published ones,
    downloaded once) as a checkpoint at ``--out``; prints its class count, widths and input size, returns 0."""
    from ..checkpoint import save_atomic
    from ..interop import import_caffe, import_torchvision

    _check_output(args.out, "--out")
    if args.file is None:  # the publisher's file: torchvision's alexnet or BVLC's bvlc_alexnet
        from ..pretrained import weights_file

        args.file = str(weights_file("alexnet_owt" if args.source == "torchvision" else "alexnet_caffe", _progress_flag(args)))
    _not_the_input(args.out, args.file, "file")
    if args.source == "torchvision":
        ckpt = import_torchvision(args.file)
    else:
        ckpt = import_caffe(args.file, _caffe_mean(args.mean_file), allow_pickle=args.allow_pickle)
    save_atomic(ckpt, args.out)
    cfg = ckpt["model_config"]
    print(f"{args.file} -> {args.out}: {cfg['num_classes']} classes, widths {list(cfg['widths'])}, input {cfg['input_size']} px (RGB)")
    return 0


def _caffe_mean(mean_file: str | None) -> tuple[float, ...] | list[float]:
    """The B, G, R mean of ``--mean-file`` (default: ILSVRC-2012's); its errors name the option."""
    from ..errors import CheckpointError
    from ..interop import CAFFE_MEAN_BGR, read_binaryproto_mean

    if not mean_file:
        return CAFFE_MEAN_BGR
    try:
        return read_binaryproto_mean(mean_file)
    except CheckpointError as e:
        raise CheckpointError(f"--mean-file {e}") from None


def cmd_export(args: argparse.Namespace) -> int:
    """``alexnet export``: write a checkpoint's model to ``--out`` in ``--format`` (default: as its suffix
    says, else safetensors), with the recipe and the checkpoint's path and sha256 where the format has
    room; prints the files written, returns 0."""
    from ..checkpoint import load
    from ..export import Source, export, resolve_format, unnamed_default

    resolve_format(args.format, args.out)  # a bad --out is refused before the checkpoint is read
    _check_output(args.out, "--out")
    _not_the_input(args.out, args.checkpoint, "checkpoint")
    model = load(args.checkpoint)
    written = export(model, args.format, args.out, source=Source.of(args.checkpoint))
    print("wrote " + ", ".join(str(p) for p in written) + unnamed_default(args.format, args.out))
    return 0


# -- summary / models / download ------------------------------------------------------------------
def cmd_summary(args: argparse.Namespace) -> int:
    """``alexnet summary``: print the per-layer table (or ``--json``) of a registered model with its
    ``--model-option`` overrides, or of ``--checkpoint``'s network; returns 0. ConfigError for
    --model/--model-option/--num-classes with --checkpoint, two differing class counts, or an
    ``--input-size`` the network cannot take."""
    from ..errors import ConfigError
    from ..model import create_model, describe_model
    from ..summary import format_summary, summary_record

    options = _key_values(args.model_option, "--model-option")
    if args.checkpoint:  # the network a checkpoint holds (a trained run, a fine-tuned or imported one)
        from .. import load

        if args.model or options or args.num_classes:
            raise ConfigError("summary --checkpoint describes the checkpoint's own network: drop --model, --model-option and --num-classes")
        model = load(args.checkpoint)
        name = f"{describe_model(model.config)} ({args.checkpoint})"
    else:
        base = args.model or "alexnet_paper"
        size = {"input_size": args.input_size} if args.input_size and "input_size" not in options else {}
        # --model-option num_classes=N is --num-classes N (passed twice to create_model it was a TypeError)
        name = base + "".join(f" {k}={v}" for k, v in options.items())  # the ablation in its header
        classes = options.pop("num_classes", None)
        if classes is not None and args.num_classes and classes != args.num_classes:
            raise ConfigError(f"--model-option num_classes={classes} and --num-classes {args.num_classes} differ: pass one")
        model = create_model(base, num_classes=args.num_classes or (1000 if classes is None else classes), **options, **size)
    try:
        text = json.dumps(summary_record(model, name, args.input_size)) if args.json else format_summary(model, name, args.input_size)
    except ValueError as e:  # a checkpoint's fc6 takes one size (adaptive pooling: any large enough)
        if args.input_size is None:
            raise
        raise ConfigError(f"--input-size {args.input_size}: {e}") from None
    print(text)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """``alexnet models``: print each registered model, its description and its published weights' scores
    (or one JSON list with ``--json``); returns 0."""
    from ..model import describe_models
    from ..pretrained import describe

    models = describe_models()
    if args.json:
        from ..pretrained import PRETRAINED

        weights = {n: {"publisher": c.publisher, "top1": c.top1, "top5": c.top5} for n, c in PRETRAINED.items()}
        print(json.dumps([{"name": n, "description": text, "weights": weights.get(n)} for n, text in models.items()]))
        return 0
    width = max(map(len, models))
    for name, text in models.items():
        print(f"{name:<{width}}  {text}")
        if describe(name):  # create_model(name, pretrained=True), alexnet import
            print(f"{'':<{width}}  {describe(name)}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """``alexnet download``: fetch Fashion-MNIST or a fast.ai Imagenette/Imagewoof set into ``--out`` and print
    the ``alexnet train --data`` line for it; returns 0. A failed download removes the empty folders it made."""
    _check_output(args.out, "--out", folder=True)
    out = Path(args.out)
    new = _missing_folders(out / "FashionMNIST" / "raw" if args.dataset == "fashion-mnist" else out)
    try:
        root = _download(args)
    except BaseException:  # offline, Ctrl-C, ...: leave no empty folders behind, keep what existed
        _remove_empty(new)
        raise
    from ..runtime import shell_arg

    print(f"{args.dataset} is in {root}; train on it with: alexnet train --data {shell_arg(root)}")
    return 0


def _download(args: argparse.Namespace) -> Path:
    """Download ``args.dataset`` into ``args.out``; the folder to pass as --data."""
    if args.dataset == "fashion-mnist":
        from ..data.fashion_mnist import download_fashion_mnist

        return download_fashion_mnist(args.out)
    from ..data.imagenette import download

    return download(args.dataset, args.out, _progress_flag(args))


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    return [p for p in (path, *path.parents) if not p.exists()]


def _remove_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that is empty; one holding a file stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty, or already gone
            pass


# -- prepare --------------------------------------------------------------------------------------
def cmd_prepare(args: argparse.Namespace) -> int:
    """``alexnet prepare``: pack ``--data``'s photos, decoded at ``--size`` px, into uint8 shards in ``--out``
    (:func:`alexnet.data.packed.prepare`); prints the counts and the ``alexnet train`` line, returns 0."""
    from ..data.packed import prepare
    from ..runtime import counted

    index = prepare(
        args.data,
        args.out,
        strict=args.strict,
        workers=args.workers,
        size=args.size,
        shard_size=args.shard_size,
        show_progress=_progress_flag(args),
        force=args.force,
    )
    counts = ", ".join(f"{name} {info['count']}" for name, info in index["splits"].items())
    bad = ""
    if index["bad_files"]:
        bad = f"; {counted(index['bad_files'], 'unreadable image')} skipped (listed in {Path(args.out) / 'bad_files.txt'})"
    print(f"packed {counts} images of {len(index['classes'])} classes into {args.out}{bad}")
    for line in _train_hint(args.out, args.size).splitlines():  # a note on stderr, as train's; the command on stdout
        print(line, file=sys.stderr if line.startswith("note: ") else sys.stdout)
    return 0


def _train_hint(out: str, size: int) -> str:
    """The 'alexnet train' line for a pack of ``size`` px images: under the paper's 224 crops, the input that keeps
    their ratio of 224 to 256, but not below the smallest that alexnet_paper (the default for photos) takes; where
    that smallest input's crops cannot keep the ratio, first the note train will give (the size that keeps it),
    rather than suggest a command whose run then advises another pack."""
    from pathlib import Path

    from ..data.loaders import crop_ratio_note
    from ..model import model_config

    smallest = model_config("alexnet_paper").smallest_input()
    if size < smallest:
        return f"note: alexnet_paper, the default for photos, takes images of {smallest} px or more; pack with --size {smallest} or more"
    crop = max(size * 224 // 256, smallest) if size < 224 else 224
    fit = f" --model-option input_size={crop}" if size < 224 else ""
    from ..runtime import shell_arg

    note = crop_ratio_note(Path(out), size, crop)
    return (f"note: {note}\n" if note else "") + f"train on it with: alexnet train --data {shell_arg(out)}{fit}"


# -- benchmark ------------------------------------------------------------------------------------
BENCHMARKS = ("lrn", "train_step", "inference")


def cmd_benchmark(args: argparse.Namespace) -> int:
    """``alexnet benchmark``: run each chosen script of ``benchmarks/`` in a process of its own and print
    their RESULT lines; returns 1 if any failed, else 0. ConfigError for a ``--dir`` without the
    benchmarks, an unknown ``--only`` name or a missing ``--data`` folder."""
    import subprocess

    from ..errors import ConfigError

    folder = Path(args.dir) if args.dir else Path(__file__).resolve().parents[3] / "benchmarks"  # src/alexnet/cli/tools.py
    if not (folder / "_common.py").is_file():
        raise ConfigError(f"--dir: no benchmarks in {folder} (they ship with the source checkout, not the wheel)")
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ConfigError(f"--only: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    from ..runtime import resolve_device

    resolve_device(args.device)  # a missing GPU is one line here, not a failure of every benchmark
    if args.data is not None and not Path(args.data).is_dir():
        raise ConfigError(f"--data: folder not found: {args.data}")
    extra = ["--quick"] * args.quick + ["--device", args.device]
    extra += (["--repeats", str(args.repeats)] if args.repeats else []) + (["--threads", str(args.threads)] if args.threads else [])
    results, failed = [], []
    for name in names:
        print(f"== {name} ==", flush=True)
        # One process each: no benchmark inherits another's allocator state, threads or compiled code.
        photos = ["--data", args.data] if name == "inference" and args.data else []
        proc = subprocess.run([sys.executable, str(folder / f"{name}.py"), *extra, *photos], stdout=subprocess.PIPE, text=True)
        print(proc.stdout, end="", flush=True)
        results += [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode:
            failed.append(name)
    print("== results ==")
    print("\n".join(results))
    if failed:
        print(f"alexnet: error: benchmark(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
