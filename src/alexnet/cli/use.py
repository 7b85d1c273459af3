"""The commands that use a trained model: evaluate, predict, features, retrieve, visualize."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import terminal_text
from .common import _check_output, _progress_flag, _same_folder

if TYPE_CHECKING:  # for annotations only: the commands import what they need when they run
    import torch

    from ..data.loaders import FolderListing
    from ..data.presets import Preprocess


def _has_val_split(data: str) -> bool:
    """Whether the folder ``data`` has a validation split of its own (train/ and val/, a packed val
    split, Fashion-MNIST's or CIFAR's test set): training on it then held none of its training images out."""
    from ..data.packed import read_index
    from ..data.sources import detect, has_split_folders

    root = Path(data)
    kind = detect(root)
    if kind in ("fashion_mnist", "cifar"):
        return True
    if kind == "packed":
        return "val" in read_index(root)["splits"]
    return has_split_folders(root)


def _warn_trained_on_scored(paths: list[str], data: object, held_out_seed: int | None, listed: FolderListing | None = None) -> None:
    """Warn for each checkpoint that trained on images evaluate scores: a member of an ensemble trained
    on ``data`` (a folder without a val split) with another held-out seed than the one scored
    (``held_out_seed``; None: every image is scored). Its figures would count images it learnt.
    ``listed``: ``data``'s listing, shared with the command's other questions of it."""
    import warnings

    from ..checkpoint import read_entry

    if not isinstance(data, str) or _has_val_split(data):
        return
    for p in paths:
        rec = _train_config(p)
        seed = rec.get("seed", 0)
        if _trained_on(data, rec, read_entry(p, "held_out_of"), listed) and seed != held_out_seed:
            scored = "all of its images" if held_out_seed is None else f"those held out with seed {held_out_seed}"
            warnings.warn(f"{p} trained on {data} holding out the images of seed {seed}: the images scored ({scored}) include "
                          "ones it trained on, so the figures are optimistic; give --data a folder none of the models trained on",
                          stacklevel=2)


def _train_config(path: str) -> dict:
    """The train_config a checkpoint records (its data, its held-out seed); {} for imported or exported
    weights, which record none. A damaged one that is not a table is a CheckpointError naming the file
    (it was 'internal error: AttributeError: 'list' object has no attribute 'get'')."""
    from ..checkpoint import read_entry
    from ..errors import CheckpointError

    recorded = read_entry(path, "train_config")
    if recorded is not None and not isinstance(recorded, dict):
        raise CheckpointError(f"{path}: its train_config is a {type(recorded).__name__}, not a table of options: damaged")
    return recorded or {}


def _note_unlisted(path: str, data: object, recorded: dict, held_out_of: object, keeps_folders: bool) -> None:
    """Warn when evaluate scores every image of ``data`` (a folder or pack without a val split, not
    the checkpoint's own) and the checkpoint cannot tell whether ``data`` is its training folder moved
    or copied: it lists no images (``held_out_of``; written before 6e9ad8d) or no digest of them (its
    pack was prepared before packs listed their files). A checkpoint that keeps its class folders
    (``keeps_folders``) is of a release that lists them: without a list it held none out."""
    import warnings

    if not isinstance(data, str) or _has_val_split(data) or isinstance(held_out_of, dict) and "digest" in held_out_of:
        return
    trained = recorded.get("data")
    if not isinstance(trained, str) or held_out_of is None and keeps_folders:
        return  # Fashion-MNIST or CIFAR (their test sets), or a run whose data had a val split
    if held_out_of is None and os.path.exists(trained) and _has_val_split(trained):
        return
    why = "its pack was prepared before packs listed their files" if held_out_of else \
        "it was written before checkpoints listed the images training held out"
    where = f"its own, {trained}, scores the held-out tenth" if os.path.exists(trained) else \
        f"the folder it recorded, {trained}, is not there"
    warnings.warn(f"{path} cannot tell whether {data} is the data it trained on, moved or copied ({why}): if it is, "
                  f"every image is scored, the ones it trained on among them ({where})", stacklevel=2)


def _trained_on(data: object, recorded: dict, held_out_of: object, listed: FolderListing | None = None) -> bool:
    """Whether a checkpoint (its train_config ``recorded`` and ``held_out_of``) trained on ``data``:
    the folder it records, or that folder moved or copied since (the same images under another path,
    to which its 'is not there: give --data' leads), whose held-out tenth alone was not learnt.
    ``listed``: ``data``'s listing (:class:`~alexnet.data.loaders.FolderListing`), listed once a command."""
    from ..data.loaders import lists_same_images

    if _same_folder(data, recorded.get("data")):
        return True
    return isinstance(data, str) and isinstance(held_out_of, dict) and lists_same_images(data, held_out_of, listed)


def _evaluation_data(args: argparse.Namespace, recorded: dict) -> str | None:
    """What evaluate scores: ``--data``, else the data set the checkpoint trained on (``recorded``, its
    train_config; None: the default data set), which must still be there."""
    from ..errors import ConfigError

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

    from ..atomic import signals_held, write_text
    from ..evaluate import per_class_accuracy, write_confusion_csv, write_per_class_csv
    from ..figures import plot_confusion

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
        with signals_held():  # a Ctrl-C between two moves left two new files beside two old ones
            for name in ("per_class.csv", "confusion.png", "confusion.csv", "evaluate.json"):
                os.replace(stage / name, out / name)
    except OSError as e:  # named by the file asked for in out/, not the hidden folder's
        name = Path(e.filename).name if e.filename else None
        raise OSError(e.errno, e.strerror, str(out / name) if name else None) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``alexnet evaluate``: top-1/top-5 of a checkpoint (or an ``--ensemble``'s averaged outputs) on
    ``--data``, else the validation images of the data it trained on (without a val split, the tenth
    training held out), centre crop or ``--ten-crop``; prints them (or ``--json``), with ``--out`` also
    writes per-class accuracy and the confusion matrix; returns 0. ConfigError for a checkpoint that
    records no data (or data since moved) without ``--data``; CheckpointError for a ``--num-classes``
    that differs from the checkpoint's, or ensemble members naming other classes."""
    from ..checkpoint import read_entry
    from ..data.device_decode import decode_device
    from ..data.loaders import FolderListing, load_eval_data
    from ..errors import CheckpointError
    from ..evaluate import class_orders, data_confusion, evaluate, load_models
    from ..runtime import precision_name, resolve_amp, resolve_device

    paths = [args.checkpoint, *(args.ensemble or [])]
    device = resolve_device(args.device)
    _check_output(args.out, "--out", folder=True)
    models = load_models(paths, device, match_classes=False)  # matched below, with the data's class folders
    n_classes = models[0].config.num_classes
    if args.num_classes is not None and args.num_classes != n_classes:
        raise CheckpointError(f"--num-classes {args.num_classes} does not match {args.checkpoint}, which has {n_classes} classes")
    recorded = _train_config(args.checkpoint)  # load_models read the file
    data = _evaluation_data(args, recorded)
    held_out_of = read_entry(args.checkpoint, "held_out_of")
    listed = FolderListing(data) if isinstance(data, str) else None  # its images, listed once for all that follows
    own = _trained_on(data, recorded, held_out_of, listed)  # a folder without a val split: score what training held out
    if not own:
        _note_unlisted(args.checkpoint, data, recorded, held_out_of, read_entry(args.checkpoint, "folders") is not None)
    _warn_trained_on_scored([str(p) for p in paths], data, recorded.get("seed", 0) if own else None, listed)
    decode = decode_device(args.decode or "auto", device)
    loader, classes, n_images, source = load_eval_data(
        data, models[0].preprocess, args.batch_size, args.workers, decode_device=decode,
        pin_memory=device.type == "cuda", held_out_seed=recorded.get("seed", 0) if own else None,
        held_out_of=held_out_of if own else None, listed=listed,
    )
    class_orders(models, [str(p) for p in paths], list(classes), getattr(loader, "folders", None))  # refused by path
    channels_last = args.channels_last is not False  # NHWC, as training runs: pooling is several times faster on a CPU
    amp = resolve_amp(args.amp, device)
    try:
        stats = evaluate(models, loader, device, amp, args.ten_crop, channels_last, _progress_flag(args), list(classes),
                         (source, args.checkpoint))  # the data's classes matched to the model's by name
    finally:  # its persistent workers stopped now: with tqdm 4.60 the loader sat in a reference cycle, the
        # collector lost their stop signal, and the exit waited forever on a worker that ignores SIGTERM
        getattr(loader, "close", lambda: None)()
    confusion, columns = data_confusion(stats.pop("confusion"), stats.pop("label_map"), list(classes))
    # the precision that ran, which --amp auto resolves by device (bf16 on a CPU with AVX512-BF16)
    stats.update({"ten_crop": args.ten_crop, "precision": precision_name(amp), "models": [str(p) for p in paths],
                  "data": source})
    if args.out:
        import torch

        from ..data.fashion_mnist import data_root
        from ..installed import versions
        from ..runtime import amp_name

        # the resolved settings, so that evaluate.json says how the figures were computed; the data by
        # absolute path too: "data" in stats is as typed, which names nothing once its folder is unknown
        settings = {"checkpoints": [str(Path(p).resolve()) for p in paths], "data": str(data_root(data).resolve()),
                    "device": str(device), "amp": amp_name(amp),
                    "decode": "workers" if decode is None else str(decode), "batch_size": args.batch_size,
                    "channels_last": channels_last, "threads": torch.get_num_threads(), **versions()}
        _write_evaluation(Path(args.out), {**stats, "settings": settings, "argv": sys.argv[1:]}, confusion, list(classes), columns)
    _print_evaluation(args, stats, source, len(models))
    return 0


def _print_evaluation(args: argparse.Namespace, stats: dict, source: str, n_models: int) -> None:
    """evaluate's figures: one JSON object (--json), else lines for people."""
    if args.json:
        print(json.dumps(stats))
        return
    how = (("10 crops" if args.ten_crop else "centre crop") + (f", {n_models} models averaged" if n_models > 1 else "")
           + f", {stats['precision']}")
    print(f"{source}: {stats['images']} image{'s' * (stats['images'] != 1)} ({how})")
    print(f"top-1 accuracy {stats['top1']:.4f}  error {stats['top1_error']:.4f}")
    print(f"top-5 accuracy {stats['top5']:.4f}  error {stats['top5_error']:.4f}")
    if args.out:
        print(f"per-class accuracy and confusion matrix in {args.out}")


# -- predict / features / retrieve ------------------------------------------------------------------
def _note_no_workers(args: argparse.Namespace) -> None:
    """A note for a typed ``--workers N`` where the command decodes its images in its own process
    (predict, retrieve): every model-using command takes the option, and N was used by nothing."""
    if args.workers:
        print(f"note: --workers {args.workers}: {args.command} decodes its images in this process, so no worker "
              "processes load them", file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> int:
    """``alexnet predict``: the ``--top`` classes and probabilities of each image, printed (or ``--json``),
    with ``--figure`` also drawn; returns 0. CheckpointError for a checkpoint without its recipe."""
    from ..checkpoint import load, require_recipe
    from ..predict import predict
    from ..runtime import resolve_amp, resolve_device

    device = resolve_device(args.device)
    amp = resolve_amp(args.amp, device)  # before loading: a refused --amp fails at once, as in evaluate
    _check_output(args.figure, "--figure", figure=True)
    _note_no_workers(args)
    model = require_recipe(load(args.checkpoint, device), args.checkpoint)
    results, images = predict(model, args.images, top=args.top, batch_size=args.batch_size, return_images=True,
                              show_progress=_progress_flag(args), amp=amp)
    if args.figure:
        from ..figures import plot_predictions

        plot_predictions(images, results, args.figure)
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            truth = f"  (true: {terminal_text(r['label'], one_line=True)})" if r["label"] is not None else ""
            print(f"{terminal_text(r['path'], one_line=True)}{truth}")
            for t in r["top"]:
                print(f"  {t['probability']:7.2%}  {terminal_text(t['class'], one_line=True)}")
    if args.figure:
        print(f"figure: {args.figure}", file=sys.stderr)
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    """``alexnet features``: the fc7 features of every image of ``--data``, saved as a retrieval index at
    ``--out`` (which must end in .safetensors, else ConfigError); returns 0."""
    from ..checkpoint import load, require_recipe
    from ..errors import ConfigError
    from ..retrieval import build_index, save_index
    from ..runtime import resolve_amp, resolve_device

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
    """``alexnet retrieve``: the ``--k`` images of ``--index`` nearest to QUERY_IMAGE in fc7 space, printed
    (or ``--json``), with ``--figure`` also drawn; returns 0. DataError for an index that names no
    checkpoint when ``--checkpoint`` is not given."""
    from ..checkpoint import load, require_recipe
    from ..errors import DataError
    from ..retrieval import changed_since_indexed, check_index_model, load_index, retrieve
    from ..runtime import resolve_amp, resolve_device

    device = resolve_device(args.device)
    resolve_amp(args.amp, device)  # a bad --amp is refused before the index is read
    _check_output(args.figure, "--figure", figure=True)
    _note_no_workers(args)
    index = load_index(args.index)
    checkpoint = args.checkpoint or index["checkpoint"]
    if not checkpoint:
        raise DataError(f"{args.index} does not name its checkpoint; pass --checkpoint")
    model = require_recipe(load(checkpoint, device), checkpoint)
    check_index_model(model, index, checkpoint, args.index)
    hits = retrieve(model, index, args.image, args.k, args.amp, check=False)  # checked above; auto: the index's precision
    changed = [p for p in changed_since_indexed(index, [h["path"] for h in hits]) if os.path.exists(p)]  # gone: the figure's note
    if changed:  # the distances are of the images indexed then, not of the files under those names now
        print(f"note: {len(changed)} of the {len(hits)} neighbours' files have changed since {args.index} was built (first: "
              f"{changed[0]}): their distances are of the images indexed then; 'alexnet features' indexes them as they are now",
              file=sys.stderr)
    if args.json:
        print(json.dumps(hits))
    else:
        for h in hits:
            label = f"  ({terminal_text(h['label'], one_line=True)})" if h["label"] else ""
            print(f"{h['distance']:10.4f}  {terminal_text(h['path'], one_line=True)}{label}")
    if args.figure:
        _retrieval_figure(args.image, hits, model.preprocess, args.figure, args.index)
    return 0


def _retrieval_figure(query: str, hits: list[dict], preprocess: Preprocess, figure: str, index: str) -> None:
    """The query and its neighbours' photos; a neighbour no longer readable (moved or deleted since
    the index was built) is an empty tile, and a note says which: the listing above stands."""
    from ..errors import DataError
    from ..figures import plot_retrieval
    from ..predict import load_image

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


# -- visualize ------------------------------------------------------------------------------------
def cmd_visualize(args: argparse.Namespace) -> int:
    """``alexnet visualize``: draw a checkpoint's conv1 filters (default ``filters.png``) or run folders'
    training curves (default ``RUN/curves.png``); prints the file written, returns 0. ConfigError for
    a checkpoint given to curves, no run folder, or not exactly one checkpoint for filters."""
    from .. import figures
    from ..errors import ConfigError

    if args.what == "filters":
        from ..checkpoint import load

        checkpoint, out = _filters_checkpoint(args.checkpoint, args.run_dir), args.out or "filters.png"
        _check_output(out, "--out", image=True)
        model = load(checkpoint)
        first = _first_weights(checkpoint, model, args.learnt)
        out = figures.plot_filters(model, out, minus=first if args.learnt else None)
    else:
        if args.learnt:
            raise ConfigError("--learnt draws what training changed in conv1: it is visualize filters'")
        if args.checkpoint:
            raise ConfigError(f"visualize curves draws run folders' metrics: --checkpoint {args.checkpoint} is visualize filters'")
        if not args.run_dir:
            raise ConfigError("visualize curves needs RUN_DIR (a folder written by 'alexnet train'), or several")
        _check_output(args.out, "--out", figure=True)
        out = figures.plot_curves(args.run_dir, args.out)
    print(f"wrote {out}")
    return 0


def _first_weights(checkpoint: str, model: torch.nn.Module, learnt: bool) -> torch.nn.Module | None:
    """The network the run of ``checkpoint`` started as (``--learnt`` subtracts its conv1), and a note
    where conv1 is still mostly that random start: 30 epochs of Imagenette (the photos recipe's He
    init) left it at cosine 0.987 with it, and figure 3 showed noise where the change shows colour
    blobs and oriented gratings. ConfigError for --learnt where the start cannot be drawn again."""
    from ..checkpoint import read_entry
    from ..errors import ConfigError
    from ..finetune import first_weights

    recorded = read_entry(checkpoint, "train_config")
    first = first_weights(model.config, recorded)
    if first is None:
        if learnt:
            why = f"it started from --init-from {recorded['init_from']}" if isinstance(recorded, dict) and recorded.get("init_from") \
                else "it records no training run (an import or an export)"
            raise ConfigError(f"--learnt: {checkpoint}: its first weights cannot be drawn again: {why}")
        return None
    now, then = model.conv1.weight.detach().double().flatten(), first.conv1.weight.detach().double().flatten()
    cosine = float(now @ then / (now.norm() * then.norm()).clamp_min(1e-30))
    if cosine > 0.9 and not learnt:
        print(f"note: conv1 is still mostly its random start (cosine {cosine:.3f} with the weights --seed {recorded['seed']} drew; "
              f"training changed it by {float((now - then).norm() / then.norm()):.0%}): the figure shows mostly that noise, "
              "and --learnt draws the change alone", file=sys.stderr)
    return first


def _filters_checkpoint(option: str | None, given: list[str]) -> str:
    """The one checkpoint of ``visualize filters``: ``--checkpoint`` or a positional, as evaluate takes
    it ('visualize filters run/best.pt' said 'needs --checkpoint'; a run folder beside --checkpoint was
    passed over without a word)."""
    from ..errors import ConfigError

    if len(given) == 1 and option in (None, given[0]):  # the same file twice is one, as evaluate takes it
        return given[0]
    if given:
        where = f"--checkpoint {option} and " if option else ""
        raise ConfigError(f"visualize filters draws one checkpoint's conv1, got {where}{' '.join(given)}: give one")
    if option is None:
        raise ConfigError("visualize filters needs a checkpoint: CHECKPOINT or --checkpoint FILE")
    return option
