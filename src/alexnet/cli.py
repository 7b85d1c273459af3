"""The ``alexnet`` command line: one sub-command per job, each a thin layer over the Python API."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import io
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .config import AT_LEAST_1, FRACTION
from .errors import AlexNetError, Interrupted, StoppedAtOnce

if TYPE_CHECKING:  # for annotations only: the commands import what they need when they run
    from .config import TrainConfig
    from .data.presets import Preprocess


def _config_type(kind: type, check: tuple | None):
    """An argparse type: ``kind`` (int or float), finite, and passing ``check`` (see config.opt)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value):  # NaN passes every range test
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if check is not None and not check[0](value):
            raise argparse.ArgumentTypeError(f"expected a number {check[1]}, got {value}")
        return value

    return parse


_positive_int = _config_type(int, AT_LEAST_1)
_fraction = _config_type(float, FRACTION)


def _progress_flag(args: argparse.Namespace) -> bool | None:
    return {"auto": None, "on": True, "off": False}[args.progress]


# -- train ----------------------------------------------------------------------------------------
def _key_values(items: list[str] | None, flag: str, parse=json.loads) -> dict:
    """KEY=VALUE pairs; VALUE is JSON when it parses (numbers, true/false, lists), else a string."""
    from .errors import ConfigError

    out = {}
    for item in items or []:
        for part in item.split(",") if flag == "--lr-mult" else [item]:
            key, eq, value = part.partition("=")
            if not eq or not key:
                raise ConfigError(f"{flag}: expected KEY=VALUE, got {part!r}")
            try:
                out[key.strip()] = parse(value)
            except (ValueError, json.JSONDecodeError):
                if parse is float:
                    raise ConfigError(f"{flag}: {key} needs a number, got {value!r}") from None
                out[key.strip()] = value
    return out


def _add_config_options(parser: argparse.ArgumentParser, names: list[str] | None = None) -> None:
    """``alexnet train``'s options, generated from the TrainConfig fields (``names``: only these):
    each option's default, range, choices and help are declared once, in config.py."""
    import typing

    from .config import _FIELDS, field_types, flag

    for name, kind in field_types().items():
        meta = _FIELDS[name].metadata
        if not meta.get("cli", True) or (names is not None and name not in names):
            continue
        base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        extra: dict = {"help": _with_default(name, meta.get("help")), "metavar": meta.get("metavar"), "default": None, "dest": name}
        if typing.get_origin(kind) in (list, dict):
            extra["action"] = "append"  # comma lists and KEY=VALUE tables are parsed by _config_overrides
        elif base is bool:
            extra["action"] = argparse.BooleanOptionalAction
            extra.pop("metavar")
        elif meta.get("choices"):
            extra["choices"] = meta["choices"]
        elif base in (int, float):
            extra["type"] = _config_type(base, meta.get("check"))
        if extra.get("metavar") is None and "action" not in extra and "choices" not in extra:
            extra["metavar"] = flag(name).lstrip("-").replace("-", "_").upper()
        parser.add_argument(flag(name), **extra)


def _with_default(name: str, help: str | None) -> str | None:
    """An option's help with its default: each preset's value where the presets differ."""
    from .config import _FIELDS, PRESETS

    default = _FIELDS[name].default
    if help is None or "default" in help or default is dataclasses.MISSING or isinstance(default, (list, dict)):
        return help
    values = {p: recipe.get(name, default) for p, recipe in PRESETS.items()}
    said = f"the preset's: {', '.join(f'{p} {v}' for p, v in values.items())}" if len({repr(v) for v in values.values()}) > 1 else None
    if name == "workers":  # shared by every command, whose defaults differ
        return f"{help} (train: {said or default}, at most one per core; prepare: one per core, at most 8; others: 0)"
    if said:
        return f"{help} (default: {said})"
    return help if default is None or default is False else f"{help} (default: {default})"


def _train_option_names() -> list[str]:
    from .config import field_types

    return list(field_types())


def _config_overrides(args: argparse.Namespace) -> dict:
    """The TrainConfig values given on the command line (unset ones are None)."""
    from .config import field_types, flag

    out = {name: getattr(args, name, None) for name in field_types()}
    for name in ("freeze", "tower_devices"):  # comma-separated lists
        if out[name] is not None:
            out[name] = [v for item in out[name] for v in item.split(",") if v]
    out["lr_mult"] = _key_values(out["lr_mult"], flag("lr_mult"), float) or None
    model_options = _key_values(out["model_options"], flag("model_options"))
    if args.dropout is not None:
        model_options["dropout"] = args.dropout
    out["model_options"] = model_options or None
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from .config import resolve_config
    from .resume import resume_config
    from .train import fit

    overrides = _config_overrides(args)
    if args.resume and args.force:
        from .errors import ConfigError

        raise ConfigError("--resume continues a run and --force replaces one: pass one of them")
    if args.resume:
        if args.config:
            from .errors import ConfigError

            raise ConfigError("--config with --resume: a resumed run keeps its own configuration (config.json in its folder)")
        # the checkpoint read here serves fit, unless torchrun's processes train (they read their own)
        cfg = resume_config(args.resume, overrides, keep=not (args.nproc and args.nproc > 1))
    else:
        cfg = resolve_config(overrides.pop("preset", None), overrides, args.config)
        if cfg.init_from and overrides.get("model"):
            _check_init_model(overrides["model"], cfg.init_from)
    if args.nproc and args.nproc > 1:
        return _launch(args, cfg)
    result = fit(cfg, show_progress=_progress_flag(args), force=args.force)
    if "val_top1" in result and os.environ.get("RANK", "0") == "0":  # one report per distributed run
        print(
            f"done: val top-1 {result['val_top1']:.4f} (error {result['val_top1_error']:.4f}), "
            f"top-5 {result['val_top5']:.4f}, {result['elapsed_seconds']:.0f}s of training; run folder {result['run_dir']}"
        )
    return 0


def _check_init_model(model: str, init_from: str) -> None:
    """ConfigError for a typed --model other than the network --init-from holds (its architecture is
    the one trained: the --model would be dropped without a word)."""
    from .checkpoint import config_from_file, load_checkpoint
    from .errors import ConfigError
    from .model import describe_model, model_family

    saved = load_checkpoint(init_from, torchvision=True).get("model_config")
    if saved is None:  # another bare state dict: its weights go into --model
        return
    config = config_from_file(saved, init_from)
    if model_family(config)[0] != model:  # the paper's net trained at 112 px is still --model alexnet_paper
        raise ConfigError(f"--model {model}: --init-from {init_from} holds {describe_model(config)}, whose architecture "
                          "the run trains; drop --model (or start from weights of that network)")


def _launch(args: argparse.Namespace, cfg: TrainConfig) -> int:
    """``train --nproc N``: the checks that would otherwise fail once per rank, then torchrun."""
    from . import distributed
    from .errors import ConfigError

    if distributed.launched():
        raise ConfigError("--nproc: this process was already started by torchrun; drop --nproc")
    if cfg.batch_size % args.nproc:
        raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch: it must divide evenly over --nproc {args.nproc}")
    from .parallel import tower_devices

    for rank in range(args.nproc):  # each rank's towers, as the ranks would check them on this machine
        tower_devices(cfg.tower_devices, distributed.DistInfo(rank, args.nproc, rank, args.nproc))
    argv = distributed.without_option(args.argv, "--nproc")
    out = cfg.out
    if not out:  # named here, so that the launcher's last line can say which folder to resume
        from .train import default_run_dir

        out = str(default_run_dir(cfg.model))
        argv += ["--out", out]
    from .atomic import check_writable
    from .runfolder import check  # rank 0 claims the folder (runfolder.py); a refusal is one line here instead

    check(Path(out), bool(cfg.resume), args.force)
    check_writable(out, "--out" if cfg.out else "the run folder", folder=True)
    return distributed.launch(args.nproc, argv, out)


# -- evaluate -------------------------------------------------------------------------------------
def _check_output(path: str | None, option: str, figure: bool = False, image: bool = False, folder: bool = False) -> None:
    """Refuse, before the work, an output that cannot be written: a figure's format (by its suffix),
    then its folder (a file in the way, no permission, a read-only file system)."""
    if not path:
        return
    from .atomic import check_writable
    from .errors import ConfigError

    if figure or image:
        from . import figures

        try:
            figures.figure_format(path, figures.IMAGE_FORMATS if image else figures.PLOT_FORMATS)
        except ConfigError as e:
            raise ConfigError(f"{option} {e}") from None
    check_writable(path, option, folder)


def _not_the_input(out: str, given: str, what: str) -> None:
    """ConfigError where ``--out`` names the file ``given`` (by any path): the output would replace
    the input it is made from (a training checkpoint by a weights-only export, say)."""
    from .errors import ConfigError

    if Path(out).is_file() and Path(given).is_file() and os.path.samefile(out, given):
        raise ConfigError(f"--out {out}: is the {what} it reads ({given}), which writing would replace; give another name")


def _same_folder(data: object, trained_on: object) -> bool:
    """Whether ``data`` is the folder a checkpoint recorded as its training data."""
    return isinstance(data, str) and isinstance(trained_on, str) and Path(data).resolve() == Path(trained_on).resolve()


def _has_val_split(data: str) -> bool:
    """Whether the folder ``data`` has a validation split of its own (train/ and val/, a packed val
    split, Fashion-MNIST's or CIFAR's test set): training on it then held none of its training images out."""
    from .data.packed import read_index
    from .data.sources import detect, has_split_folders

    root = Path(data)
    kind = detect(root)
    if kind in ("fashion_mnist", "cifar"):
        return True
    if kind == "packed":
        return "val" in read_index(root)["splits"]
    return has_split_folders(root)


def _warn_trained_on_scored(paths: list[str], data: object, held_out_seed: int | None) -> None:
    """Warn for each checkpoint that trained on images evaluate scores: a member of an ensemble trained
    on ``data`` (a folder without a val split) with another held-out seed than the one scored
    (``held_out_seed``; None: every image is scored). Its figures would count images it learnt."""
    import warnings

    from .checkpoint import read_entry

    if not isinstance(data, str) or _has_val_split(data):
        return
    for p in paths:
        rec = read_entry(p, "train_config") or {}
        seed = rec.get("seed", 0)
        if _same_folder(data, rec.get("data")) and seed != held_out_seed:
            scored = "all of its images" if held_out_seed is None else f"those held out with seed {held_out_seed}"
            warnings.warn(f"{p} trained on {data} holding out the images of seed {seed}: the images scored ({scored}) include "
                          "ones it trained on, so the figures are optimistic; give --data a folder none of the models trained on",
                          stacklevel=2)


def _evaluation_data(args: argparse.Namespace, recorded: dict) -> str | None:
    """What evaluate scores: ``--data``, else the data set the checkpoint trained on (``recorded``, its
    train_config; None: the default data set), which must still be there."""
    from .errors import ConfigError

    if args.data is not None:
        return args.data
    if not recorded:  # imported or exported weights: the default data set may not be theirs
        raise ConfigError(f"{args.checkpoint} records no data set (it was imported or exported, not trained here): give --data")
    data = recorded.get("data")
    if isinstance(data, str) and not os.path.exists(data):  # moved since, or the checkpoint copied elsewhere
        raise ConfigError(f"{args.checkpoint}: the data it was trained on, {data}, is not there: give --data")
    return data


def _write_evaluation(out: Path, record: dict, confusion, classes: list[str], columns: list[str]) -> None:
    """``evaluate --out``: per_class.csv, confusion.png, confusion.csv and evaluate.json (``record``)."""
    import shutil
    import tempfile

    from .atomic import write_text
    from .evaluate import per_class_accuracy, write_confusion_csv, write_per_class_csv
    from .figures import plot_confusion

    out.mkdir(parents=True, exist_ok=True)
    # All four are made in a hidden folder, then moved in: a failure on the third (a full disk) left
    # the first two of this evaluation beside the last two of an earlier one, which its evaluate.json
    # described. Each move is a rename within out/, so a failure now costs nothing already there.
    stage = Path(tempfile.mkdtemp(prefix=".evaluate-", dir=out))
    try:
        write_per_class_csv(per_class_accuracy(confusion, classes), stage / "per_class.csv")
        plot_confusion(confusion, classes, stage / "confusion.png", columns)
        write_confusion_csv(confusion, classes, stage / "confusion.csv", columns)
        write_text(stage / "evaluate.json", json.dumps(record, indent=2) + "\n")
        for name in ("per_class.csv", "confusion.png", "confusion.csv", "evaluate.json"):
            os.replace(stage / name, out / name)
    except OSError as e:  # named by the file asked for in out/, not the hidden folder's
        name = Path(e.filename).name if e.filename else None
        raise OSError(e.errno, e.strerror, str(out / name) if name else None) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .checkpoint import read_entry
    from .data.device_decode import decode_device
    from .data.loaders import load_eval_data
    from .errors import CheckpointError
    from .evaluate import data_confusion, evaluate, load_models
    from .runtime import resolve_amp, resolve_device

    paths = [args.checkpoint, *(args.ensemble or [])]
    device = resolve_device(args.device)
    _check_output(args.out, "--out", folder=True)
    models = load_models(paths, device)
    n_classes = models[0].config.num_classes
    if args.num_classes is not None and args.num_classes != n_classes:
        raise CheckpointError(f"--num-classes {args.num_classes} does not match {args.checkpoint}, which has {n_classes} classes")
    recorded = read_entry(args.checkpoint, "train_config") or {}  # load_models read the file
    data = _evaluation_data(args, recorded)
    own = _same_folder(data, recorded.get("data"))  # a folder without a val split: score what training held out
    _warn_trained_on_scored([str(p) for p in paths], data, recorded.get("seed", 0) if own else None)
    decode = decode_device(args.decode or "auto", device)
    loader, classes, n_images, source = load_eval_data(
        data, models[0].preprocess, args.batch_size, args.workers, decode_device=decode,
        pin_memory=device.type == "cuda", held_out_seed=recorded.get("seed", 0) if own else None,
        held_out_of=read_entry(args.checkpoint, "held_out_of") if own else None,
    )
    channels_last = args.channels_last is not False  # NHWC, as training runs: pooling is several times faster on a CPU
    amp = resolve_amp(args.amp, device)
    stats = evaluate(models, loader, device, amp, args.ten_crop, channels_last, _progress_flag(args), list(classes),
                     (source, args.checkpoint))  # the data's classes matched to the model's by name
    confusion, columns = data_confusion(stats.pop("confusion"), stats.pop("label_map"), list(classes))
    stats.update({"ten_crop": args.ten_crop, "models": [str(p) for p in paths], "data": source})
    if args.out:
        import torch

        from .runtime import versions

        # the resolved settings, so that evaluate.json says how the figures were computed; the data by
        # absolute path too: "data" in stats is as typed, which names nothing once its folder is unknown
        settings = {"checkpoints": [str(Path(p).resolve()) for p in paths], "data": str(Path(data).resolve()) if data else source,
                    "device": str(device), "amp": str(amp).replace("torch.", "") if amp else "none",
                    "decode": "workers" if decode is None else str(decode), "batch_size": args.batch_size,
                    "channels_last": channels_last, "threads": torch.get_num_threads(), **versions()}
        _write_evaluation(Path(args.out), {**stats, "settings": settings, "argv": sys.argv[1:]}, confusion, list(classes), columns)
    if args.json:
        print(json.dumps(stats))
    else:
        how = ("10 crops" if args.ten_crop else "centre crop") + (f", {len(models)} models averaged" if len(models) > 1 else "")
        print(f"{source}: {stats['images']} image{'s' * (stats['images'] != 1)} ({how})")
        print(f"top-1 accuracy {stats['top1']:.4f}  error {stats['top1_error']:.4f}")
        print(f"top-5 accuracy {stats['top5']:.4f}  error {stats['top5_error']:.4f}")
        if args.out:
            print(f"per-class accuracy and confusion matrix in {args.out}")
    return 0


# -- predict / features / retrieve ------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:
    from .checkpoint import load, require_recipe
    from .predict import predict
    from .runtime import resolve_amp, resolve_device

    device = resolve_device(args.device)
    amp = resolve_amp(args.amp, device)  # before loading: a refused --amp fails at once, as in evaluate
    _check_output(args.figure, "--figure", figure=True)
    model = require_recipe(load(args.checkpoint, device), args.checkpoint)
    results, images = predict(model, args.images, top=args.top, return_images=True, show_progress=_progress_flag(args), amp=amp)
    if args.figure:
        from .figures import plot_predictions

        plot_predictions(images, results, args.figure)
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            truth = f"  (true: {r['label']})" if r["label"] is not None else ""
            print(f"{r['path']}{truth}")
            for t in r["top"]:
                print(f"  {t['probability']:7.2%}  {t['class']}")
    if args.figure:
        print(f"figure: {args.figure}", file=sys.stderr)
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from .checkpoint import load, require_recipe
    from .errors import ConfigError
    from .retrieval import build_index, save_index
    from .runtime import resolve_amp, resolve_device

    device = resolve_device(args.device)
    amp = resolve_amp(args.amp, device)
    if Path(args.out).suffix.lower() != ".safetensors":  # it wrote safetensors under any name, e.g. e.npz
        raise ConfigError(f"--out {args.out}: the index is a safetensors file: name it NAME.safetensors")
    _check_output(args.out, "--out")
    model = require_recipe(load(args.checkpoint, device), args.checkpoint)
    index = build_index(model, args.data, args.batch_size, args.workers or 0, Path(args.checkpoint).resolve(), _progress_flag(args), amp)
    save_index(index, args.out)
    n, d = index["features"].shape
    print(f"{n} images, {d}-d fc7 features -> {args.out}")
    return 0


def cmd_retrieve(args: argparse.Namespace) -> int:
    from .checkpoint import load, require_recipe
    from .errors import DataError
    from .retrieval import check_index_model, load_index, retrieve
    from .runtime import resolve_amp, resolve_device

    device = resolve_device(args.device)
    amp = resolve_amp(args.amp, device)
    _check_output(args.figure, "--figure", figure=True)
    index = load_index(args.index)
    checkpoint = args.checkpoint or index["checkpoint"]
    if not checkpoint:
        raise DataError(f"{args.index} does not name its checkpoint; pass --checkpoint")
    model = require_recipe(load(checkpoint, device), checkpoint)
    check_index_model(model, index, checkpoint, args.index)
    hits = retrieve(model, index, args.image, args.k, amp, check=False)  # checked above
    if args.json:
        print(json.dumps(hits))
    else:
        for h in hits:
            print(f"{h['distance']:10.4f}  {h['path']}" + (f"  ({h['label']})" if h["label"] else ""))
    if args.figure:
        _retrieval_figure(args.image, hits, model.preprocess, args.figure, args.index)
    return 0


def _retrieval_figure(query: str, hits: list[dict], preprocess: Preprocess, figure: str, index: str) -> None:
    """The query and its neighbours' photos; a neighbour no longer readable (moved or deleted since
    the index was built) is an empty tile, and a note says which: the listing above stands."""
    from .errors import DataError
    from .figures import plot_retrieval
    from .predict import load_image

    neighbours, unread = [], []
    for h in hits:
        try:
            neighbours.append((load_image(h["path"], preprocess), h))
        except DataError as e:
            neighbours.append((None, h))
            unread.append(f"{h['path']}, not found" if not os.path.exists(h["path"]) else str(e))
    plot_retrieval(load_image(query, preprocess), neighbours, figure)
    print(f"figure: {figure}", file=sys.stderr)  # as predict's
    if unread:
        print(f"note: --figure {figure}: the images of {len(unread)} of the {len(hits)} neighbours cannot be read now "
              f"(first: {unread[0]}): their tiles are empty; moved since {index} was built? 'alexnet features' indexes "
              "them where they are", file=sys.stderr)


# -- visualize / import / export ------------------------------------------------------------------
def cmd_visualize(args: argparse.Namespace) -> int:
    from . import figures
    from .errors import ConfigError

    if args.what == "filters":
        from .checkpoint import load

        if not args.checkpoint:
            raise ConfigError("visualize filters needs --checkpoint FILE")
        _check_output(args.out or "filters.png", "--out", image=True)
        out = figures.plot_filters(load(args.checkpoint), args.out or "filters.png")
    else:
        if not args.run_dir:
            raise ConfigError("visualize curves needs RUN_DIR (a folder written by 'alexnet train'), or several")
        _check_output(args.out, "--out", figure=True)
        out = figures.plot_curves(args.run_dir, args.out)
    print(f"wrote {out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .checkpoint import save_atomic
    from .interop import import_caffe, import_torchvision

    _check_output(args.out, "--out")
    if args.file is None:  # the publisher's file: torchvision's alexnet or BVLC's bvlc_alexnet
        from .pretrained import weights_file

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
    from .errors import CheckpointError
    from .interop import CAFFE_MEAN_BGR, read_binaryproto_mean

    if not mean_file:
        return CAFFE_MEAN_BGR
    try:
        return read_binaryproto_mean(mean_file)
    except CheckpointError as e:
        raise CheckpointError(f"--mean-file {e}") from None


def cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import load
    from .export import Source, export, resolve_format

    resolve_format(args.format, args.out)  # a bad --out is refused before the checkpoint is read
    _check_output(args.out, "--out")
    _not_the_input(args.out, args.checkpoint, "checkpoint")
    model = load(args.checkpoint)
    written = export(model, args.format, args.out, source=Source.of(args.checkpoint))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


# -- summary / models / download ------------------------------------------------------------------
def cmd_summary(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .model import create_model, describe_model
    from .summary import format_summary

    options = _key_values(args.model_option, "--model-option")
    if args.checkpoint:  # the network a checkpoint holds (a trained run, a fine-tuned or imported one)
        from . import load

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
        text = format_summary(model, name, args.input_size)
    except ValueError as e:  # a checkpoint's fc6 takes one size (adaptive pooling: any large enough)
        if args.input_size is None:
            raise
        raise ConfigError(f"--input-size {args.input_size}: {e}") from None
    print(text)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .model import describe_models
    from .pretrained import describe

    models = describe_models()
    width = max(map(len, models))
    for name, text in models.items():
        print(f"{name:<{width}}  {text}")
        if describe(name):  # create_model(name, pretrained=True), alexnet import
            print(f"{'':<{width}}  {describe(name)}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    _check_output(args.out, "--out", folder=True)
    out = Path(args.out)
    new = _missing_folders(out / "FashionMNIST" / "raw" if args.dataset == "fashion-mnist" else out)
    try:
        root = _download(args)
    except BaseException:  # offline, Ctrl-C, ...: leave no empty folders behind, keep what existed
        _remove_empty(new)
        raise
    print(f"{args.dataset} is in {root}; train on it with: alexnet train --data {root}")
    return 0


def _download(args: argparse.Namespace) -> Path:
    """Download ``args.dataset`` into ``args.out``; the folder to pass as --data."""
    if args.dataset == "fashion-mnist":
        from .data.fashion_mnist import download_fashion_mnist

        return download_fashion_mnist(args.out)
    from .data.imagenette import download

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
    from .data.packed import prepare

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
        bad = f"; {index['bad_files']} unreadable images skipped (listed in {Path(args.out) / 'bad_files.txt'})"
    print(f"packed {counts} images of {len(index['classes'])} classes into {args.out}{bad}")
    print(_train_hint(args.out, args.size))
    return 0


def _train_hint(out: str, size: int) -> str:
    """The 'alexnet train' line for a pack of ``size`` px images: under the paper's 224 crops, the input that keeps
    their ratio of 224 to 256, but not below the smallest that alexnet_paper (the default for photos) takes."""
    from .model import model_config

    config = model_config("alexnet_paper")
    smallest = next(n for n in range(1, 225) if config.pooled_size(n) >= 1)
    if size < smallest:
        return f"note: alexnet_paper, the default for photos, takes images of {smallest} px or more; pack with --size {smallest} or more"
    fit = f" --model-option input_size={max(size * 224 // 256, smallest)}" if size < 224 else ""
    return f"train on it with: alexnet train --data {out}{fit}"


# -- benchmark ------------------------------------------------------------------------------------
BENCHMARKS = ("lrn", "train_step", "inference")


def cmd_benchmark(args: argparse.Namespace) -> int:
    import subprocess

    from .errors import ConfigError

    folder = Path(args.dir) if args.dir else Path(__file__).resolve().parents[2] / "benchmarks"
    if not (folder / "_common.py").is_file():
        raise ConfigError(f"--dir: no benchmarks in {folder} (they ship with the source checkout, not the wheel)")
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ConfigError(f"--only: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    from .runtime import resolve_device

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


# -- parser ---------------------------------------------------------------------------------------
def _add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=_positive_int, metavar="N",
        help="CPU threads for the computation (default: one per core); give each of two jobs on one machine half",
    )


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", choices=("auto", "on", "off"), default="auto", help="progress bars (auto: on a terminal)")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no wrapped usage block) and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """An unknown option is the command's error: named by it, with the option it resembles."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            import difflib

            command = next((a._name_parser_map.get(parsed.command) for a in self._actions
                            if isinstance(a, argparse._SubParsersAction)), None) or self
            known = [o for a in command._actions for o in a.option_strings]
            close = [m for e in extra if e.startswith("--") for m in difflib.get_close_matches(e.split("=")[0], known, 1)]
            hint = f"; did you mean {' '.join(dict.fromkeys(close))}?" if close else ""
            command.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
        return parsed


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(
        prog="alexnet",
        description="AlexNet (Krizhevsky, Sutskever & Hinton 2012): train, evaluate and inspect it.",
    )
    p.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    common = _Parser(add_help=False)
    _add_config_options(common, ["device", "workers", "amp"])
    _add_progress(common)
    _add_threads(common)

    _add_train(sub, common)
    _add_use_commands(sub, common)
    _add_tool_commands(sub, common)
    return p


def _add_train(sub, common: argparse.ArgumentParser) -> None:
    """``alexnet train``: its options are generated from TrainConfig (config.py)."""
    t = sub.add_parser(
        "train",
        parents=[common],
        help="train a model (default: AlexNet on Fashion-MNIST)",
        description="Train a model. With no arguments: alexnet_small on Debian's Fashion-MNIST (5 epochs, about 4-9 minutes "
        "on 2 CPU cores). Options override the preset, which --config FILE (TOML/YAML) may also override.",
    )
    t.add_argument("--config", help="TOML or YAML file of training options (command-line options win), or a run's "
                   "config.json: that run again (its thread count too, unless --threads)")
    t.add_argument("--force", action="store_true", help="replace the run that --out holds (its own files only)")
    t.add_argument("--dropout", type=_fraction, help="dropout probability of fc6/fc7 (paper: 0.5); a model option")
    _add_config_options(t, [name for name in _train_option_names() if name not in ("device", "workers", "amp")])
    t.add_argument(
        "--nproc", type=_positive_int, metavar="N",
        help="data-parallel over N processes on this machine (runs torchrun; one per GPU, or CPU processes with gloo); "
        "--batch-size stays the global batch and must divide by N. Many machines: see docs/distributed.md",
    )
    t.set_defaults(func=cmd_train)


def _add_use_commands(sub, common: argparse.ArgumentParser) -> None:
    """The commands that use a trained model: evaluate, predict, features, retrieve."""
    e = sub.add_parser("evaluate", parents=[common], help="top-1/top-5 accuracy and error of a checkpoint")
    e.add_argument("--checkpoint", required=True, help="a .pt or .safetensors file from 'alexnet train', 'import' or 'export'")
    e.add_argument("--data", help="data to evaluate on (default: the data set the checkpoint was trained on; needed for imports, "
                   "exports): its val split; a folder without one, the images training held out if the checkpoint "
                   "trained on it (an ensemble: the first checkpoint's; a warning names a member that trained on "
                   "some of them), else every image")
    e.add_argument("--num-classes", type=_positive_int, help="check that the checkpoint has this many classes")
    e.add_argument("--batch-size", type=_positive_int, default=256, help="images per batch (default: 256)")
    _add_config_options(e, ["decode", "channels_last"])
    e.add_argument("--ten-crop", action="store_true", help="average the softmax of the 4 corner + centre crops and their mirrors")
    e.add_argument("--ensemble", nargs="+", metavar="FILE", help="more checkpoints: average the softmax of all models")
    e.add_argument("--out", help="folder for per_class.csv, confusion.png, confusion.csv and evaluate.json")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", parents=[common], help="top-K classes of your own images")
    pr.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    pr.add_argument("--checkpoint", required=True, help="a checkpoint (.pt) or an exported .safetensors")
    pr.add_argument("--top", type=_positive_int, default=5, help="classes per image (default: 5)")
    pr.add_argument("--json", action="store_true", help="print a JSON list")
    pr.add_argument("--figure", help="figure file (.png, .pdf, .svg, .jpg): each image with bars for its --top classes, "
                    "at most 5 (the paper's figure 4, left)")
    pr.set_defaults(func=cmd_predict)

    fe = sub.add_parser("features", parents=[common], help="fc7 features of every image of a folder (an index for 'retrieve')")
    fe.add_argument("--checkpoint", required=True, help="a checkpoint (.pt) or an exported .safetensors")
    fe.add_argument("--data", required=True, help="a folder of CLASS/IMAGE files")
    fe.add_argument("--out", required=True, help="index file, NAME.safetensors")
    fe.add_argument("--batch-size", type=_positive_int, default=64, help="images per batch (default: 64)")
    fe.set_defaults(func=cmd_features)

    rt = sub.add_parser("retrieve", parents=[common], help="the indexed images nearest to a query in fc7 space")
    rt.add_argument("image", metavar="QUERY_IMAGE")
    rt.add_argument("--index", required=True, help="a file written by 'alexnet features'")
    rt.add_argument("--checkpoint", help="default: the checkpoint the index was built with")
    rt.add_argument("--k", type=_positive_int, default=6, help="neighbours to list (default: 6)")
    rt.add_argument("--json", action="store_true", help="print a JSON list")
    rt.add_argument("--figure", help="figure file (.png, .pdf, .svg, .jpg): the query and its neighbours (the paper's figure 4, right)")
    rt.set_defaults(func=cmd_retrieve)


def _add_tool_commands(sub, common: argparse.ArgumentParser) -> None:
    """Figures, weights in and out, data preparation and download, summaries, benchmarks."""
    v = sub.add_parser("visualize", help="figures: conv1 filters (paper fig. 3) or training curves")
    v.add_argument("what", choices=("filters", "curves"))
    v.add_argument("run_dir", nargs="*", help="run folder(s) (for curves: several share one figure, a colour each)")
    v.add_argument("--checkpoint", help="checkpoint (for filters)")
    v.add_argument("--out", help="figure file, .png, .pdf, .svg or .jpg (filters: .png or .jpg) (default: filters.png; "
                   "RUN_DIR/curves.png for one run, curves.png for several)")
    v.set_defaults(func=cmd_visualize)

    im = sub.add_parser("import", help="convert torchvision or Caffe (bvlc_alexnet) weights into a checkpoint")
    im.add_argument("source", choices=("torchvision", "caffe"))
    im.add_argument("file", nargs="?", help="torchvision: a saved state dict; caffe: a .caffemodel or a bvlc_alexnet.npy "
                    "(default: the published ImageNet weights, downloaded once into torch.hub's cache)")
    im.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    im.add_argument("--mean-file", help="caffe: a mean .binaryproto (default: the ILSVRC-2012 mean)")
    im.add_argument("--allow-pickle", action="store_true", help="caffe .npy: unpickle anything (only for files you trust)")
    _add_progress(im)
    im.set_defaults(func=cmd_import)

    ex = sub.add_parser("export", help="write a checkpoint as safetensors (+ JSON), ONNX, torch.export (.pt2), TorchScript "
                        "or torchvision's state dict")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument(
        "--format",
        choices=("safetensors", "onnx", "pt2", "torchscript", "torchvision"),  # export.FORMATS (a test checks), without importing torch
        help="default: the one --out's name says (.safetensors, .onnx, .pt2, .ts or .torchscript, .pth: torchvision's "
             "alexnet state dict, for alexnet_owt networks), else safetensors",
    )
    ex.add_argument("--out", required=True, help="the file to write (safetensors: its JSON config goes beside it)")
    _add_threads(ex)
    ex.set_defaults(func=cmd_export)

    pp = sub.add_parser("prepare", help="decode an image folder once into the packed 256x256 format (with mean image and PCA)")
    _add_config_options(pp, ["workers"])  # no --device or --amp: it decodes on the CPU and computes in float64
    _add_progress(pp)
    _add_threads(pp)
    pp.add_argument("--data", required=True, help="image folder (CLASS/IMAGE, or train/ and val/; ILSVRC-2012 layout)")
    pp.add_argument("--out", required=True, help="folder for the packed shards and index.json")
    pp.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    pp.add_argument("--size", type=_positive_int, default=256, help="side of the stored square images (paper: 256)")
    pp.add_argument("--shard-size", type=_positive_int, default=1024, help="images per shard file")
    pp.add_argument("--force", action="store_true", help="replace the packed data set --out holds")
    pp.set_defaults(func=cmd_prepare)

    s = sub.add_parser("summary", help="per-layer shapes, neurons, parameters and multiply-accumulates")
    s.add_argument("--model", help="a registered model (default: alexnet_paper)")
    s.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                   help="model config override, as for train: e.g. towers=1, lrn=false, input_size=227")
    s.add_argument("--checkpoint", help="describe the network of this checkpoint (.pt or .safetensors)")
    s.add_argument("--num-classes", type=_positive_int, help="outputs of fc8 (default: 1000)")
    s.add_argument("--input-size", type=_positive_int, help="input side in pixels (default: the model's): --model's network built "
                   "for it, as --model-option input_size=N; a checkpoint's network must fit it")
    s.set_defaults(func=cmd_summary)

    m = sub.add_parser("models", help="list the registered models")
    m.set_defaults(func=cmd_models)

    d = sub.add_parser("download", help="download a data set (needs the internet): Fashion-MNIST, Imagenette, Imagewoof")
    d.add_argument("dataset", choices=("fashion-mnist", "imagenette", "imagenette-320", "imagenette-160", "imagewoof"),
                   help="imagenette: fast.ai's imagenette2 (full-size photos; -320/-160: shorter side 320/160 px)")
    d.add_argument("--out", required=True, help="folder to download and unpack into")
    _add_progress(d)
    d.set_defaults(func=cmd_download)

    b = sub.add_parser("benchmark", help="speed against torchvision/torch: LRN, training step, inference")
    b.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    b.add_argument("--quick", action="store_true", help="tiny settings: checks they run, figures mean nothing")
    b.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    b.add_argument("--repeats", type=_positive_int, help="timed rounds per benchmark (default: each one's own)")
    b.add_argument("--threads", type=_positive_int, metavar="N", help="CPU threads for both sides (default: one per core)")
    b.add_argument("--dir", help="the benchmarks/ folder (default: the one beside src/ in this checkout)")
    b.add_argument("--data", help="photos for inference's agreement and accuracy, CLASS/IMAGE (default: "
                   "../shared/data/imagewoof-mini/val beside the checkout if there; else timings on synthetic images)")
    b.set_defaults(func=cmd_benchmark)



# Commands that run the network on batches: big tensors are allocated and freed every step.
_COMPUTING = {"train", "evaluate", "predict", "features", "retrieve", "prepare", "export"}


def _stdout_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it (poll reports an error on it)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no file descriptor
        return False


def _resumed_threads(args: argparse.Namespace) -> int | None:
    """A resume without --threads takes the count its run started with, where this machine has as many
    cores: CPU sums then round as they did, and the run goes on bitwise (the --resume line it printed
    has no --threads; with every core it went on otherwise, and on a shared machine slowly). So does a
    run started again from a run's config.json (--config RUN/config.json): it repeats that run bitwise."""
    if args.command != "train" or not (getattr(args, "resume", None) or getattr(args, "config", None)):
        return None
    from .resume import recorded_threads, started_threads

    n = started_threads(args.resume) if args.resume else recorded_threads(args.config)
    return n if n is not None and n <= (os.cpu_count() or 1) else None


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """A warning as one line (Python adds the source line that raised it, which says nothing to a
    user of the command line; ALEXNET_DEBUG=1 keeps Python's format)."""
    return f"warning: {message}\n"


def _import_torch() -> None:
    """Import torch with Ctrl-C and SIGTERM held until it has loaded: a KeyboardInterrupt raised
    inside its C++ start-up aborted the process ('terminate called after throwing an instance of
    pybind11::error_already_set'), and one in its Python start-up printed a traceback."""
    from .atomic import signals_held

    with signals_held():
        import torch  # noqa: F401


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (kill, docker stop, a scheduler's preemption) raises KeyboardInterrupt, as Ctrl-C does,
    where it would otherwise end the process on the spot: each command's clean-up runs (temporaries
    removed, the old pack kept) and it says so in one line. Training saves on either (train._CtrlC)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield  # called from a thread, or SIGTERM handled by the caller
        return
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    import warnings

    if not os.environ.get("ALEXNET_DEBUG"):
        warnings.formatwarning = _warning_line
    if os.environ.get("RANK", "0") != "0":  # a rank of a torchrun run: rank 0 says what each would (the data's warnings)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"alexnet(\.|$)")
    # A path that is not UTF-8 is printed as its bytes, as ls prints it, instead of failing the
    # command under a UTF-8 locale (whose stdout is strict; stderr already escapes it).
    if isinstance(sys.stdout, io.TextIOWrapper) and sys.stdout.errors == "strict":
        sys.stdout.reconfigure(errors="surrogateescape")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for relaunching under torchrun
    if args.command is None:
        parser.print_help()
        return 2
    if args.command != "train":  # train leaves unset options to its preset and config file
        workers = min(8, os.cpu_count() or 1) if args.command == "prepare" else 0  # prepare decodes every image
        for name, default in (("workers", workers), ("amp", "auto"), ("device", "auto")):
            if getattr(args, name, default) is None:
                setattr(args, name, default)
    with _sigterm_as_ctrl_c():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Run the command of ``args``: its exit status, and a failure as one line on stderr."""
    try:
        _import_torch()  # inside the try: a Ctrl-C while torch loads ends in one line, as later ones do
        if args.command in _COMPUTING:
            from .runtime import keep_freed_memory, set_threads

            keep_freed_memory()
            threads = getattr(args, "threads", None) or _resumed_threads(args)
            if threads:
                set_threads(threads)
        code = args.func(args)
        sys.stdout.flush()  # a reader that went away is met here, not at the interpreter's exit
        return code
    except BrokenPipeError as e:
        if not _stdout_gone():  # another pipe (a worker's, a subprocess's): an error like any other
            print(f"alexnet: error: {e.strerror or e}", file=sys.stderr)
            return 1
        # 'alexnet models | head -1': the reader went away; stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 141
    except (Interrupted, StoppedAtOnce) as e:
        print(f"alexnet: {e}", file=sys.stderr)
        return 130
    except AlexNetError as e:
        print(f"alexnet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alexnet: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, permissions, ...
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"alexnet: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug: one line by default, the traceback on request
        if os.environ.get("ALEXNET_DEBUG"):
            raise
        if getattr(args, "compile", None) and type(e).__module__.startswith("torch._"):  # inductor, dynamo
            reason = " ".join(str(e).strip().splitlines()[0].split()) if str(e).strip() else type(e).__name__
            print(f"alexnet: error: --compile failed ({reason}); run without --compile (set ALEXNET_DEBUG=1 for the "
                  "traceback)", file=sys.stderr)
            return 2
        print(f"alexnet: internal error: {type(e).__name__}: {e} (set ALEXNET_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    finally:
        # A distributed run's DDP wrapper holds its process group and sits in reference cycles
        # (after a failure also through the traceback): free it now, while the interpreter is
        # whole, not during its exit, where gloo's threads can end the process in std::terminate.
        gc.collect()


if __name__ == "__main__":
    sys.exit(main())
