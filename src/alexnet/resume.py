"""Resuming a run: the configuration it goes on with (:func:`resume_config`), the checkpoint it
goes on from (:func:`resume_source`), and the data it goes on with (:func:`check_classes`,
:func:`note_changes`).

A resumed run is the run it was: only how it runs and for how long may change, and where its
data now is (a run folder copied to another machine, a dataset moved to another disk). That data
must hold the run's classes in the run's order (else the network's outputs would silently mean
others); photos added or removed, or a changed preset, are said as the run goes on.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from . import jsonio, runfolder
from .checkpoint import bounded_config, config_from_file, load_checkpoint, read_entry
from .checks import is_finite, is_whole
from .config import TrainConfig, flag, given, refuse_unknown, validate, warm_up_outlasts
from .data.folder import class_name, in_data_names
from .data.loaders import DataBundle
from .errors import CheckpointError, ConfigError, DataError
from .model import expand_layers, model_config
from .runtime import resolve_amp, resolve_device

# What a resumed run may change: how it runs, for how long, and where its data is, not what it computes.
RESUME_MAY_CHANGE = frozenset({
    "epochs", "workers", "device", "decode", "dist_timeout", "tower_devices", "save_every", "tensorboard",
    "eval_batch_size", "amp", "compile", "channels_last", "health", "on_nonfinite", "strict", "data",
})


def resume_source(resume: str | os.PathLike, claimed: bool = False) -> Path:
    """The checkpoint ``--resume`` names: the file itself, or a run folder's last.pt. ``claimed``:
    this run holds the folder's lock already (:func:`alexnet.train.fit`)."""
    path = Path(resume)
    if not claimed:  # (a claimed folder is settled already)
        runfolder.put_back(path if path.is_dir() else path.parent)  # what a killed --force run set aside
    if path.is_dir():
        if not claimed:
            runfolder.refuse_in_use(path)  # a live run without a checkpoint yet is not one that stopped
        if runfolder.stopped_before_checkpoint(path):
            raise CheckpointError(f"--resume: {path} stopped before its first checkpoint: nothing to resume; start it "
                                  f"again (alexnet train --out {path} ... replaces its files)")
        path = path / runfolder.LAST_NAME
    if not path.is_file():
        best = path.with_name(runfolder.BEST_NAME)
        # a run whose disk filled up between its first best.pt and last.pt keeps only best.pt, which
        # holds the whole training state of its epoch as last.pt would: say how to continue from it
        hint = (f" (its {best.name} is one: --resume {best} continues from it)"
                if path.name == runfolder.LAST_NAME and best.is_file() else "")
        raise CheckpointError(f"--resume: no checkpoint at {path}{hint}")
    return path


def started_threads(resume: str | os.PathLike) -> int | None:
    """The CPU thread count the run of ``resume`` (its folder, or a checkpoint in it) started with, as
    its config.json records it; None where it records none."""
    path = Path(resume)
    folder = path if path.is_dir() else path.parent
    return recorded_threads((runfolder.set_aside(folder) or folder) / runfolder.CONFIG_NAME)  # the run it puts back


def recorded_threads(config_json: str | os.PathLike) -> int | None:
    """The CPU thread count a run's config.json records; None where the file records none."""
    try:
        n = jsonio.loads(Path(config_json).read_text())["environment"]["threads"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return n if is_whole(n, 1) else None


def nothing_left(ckpt: dict[str, Any], epochs: int, run_dir: Path) -> tuple[str, dict[str, Any], float] | None:
    """For a run that has nothing left to train (finished, or ended by its plateau schedule): the line
    saying so, its last epoch's record and its best val top-1 (what :func:`alexnet.train.fit` returns,
    with its run folder), read off the checkpoint before any data is
    read or file written (it said 'resuming at epoch N+1' of N, then 'done' with the old figures; a
    plateau-ended run took more --epochs and trained none). None otherwise, a damaged checkpoint too:
    the resume's own checks say what is wrong with it."""
    pos, plateau, history = ckpt.get("position"), ckpt.get("plateau"), ckpt.get("history")
    if not (isinstance(pos, dict) and isinstance(plateau, dict) and isinstance(history, list) and history
            and is_whole(pos.get("epoch"), 1) and pos.get("batch") == 0 and len(history) == pos["epoch"]):
        return None
    last, best = history[-1], ckpt.get("best_val_top1")
    if not (isinstance(last, dict) and all(is_finite(last.get(k)) for k in _REPORTED) and is_finite(best)):
        return None
    if plateau.get("stop") is True:
        said = (f"nothing to train: {run_dir} was ended by its plateau schedule after {plateau.get('reductions')} "
                f"reductions of the rate ({flag('plateau_max_reductions')}); more --epochs would not train it: "
                f"--init-from {run_dir / runfolder.LAST_NAME} starts a new run from its weights")
    elif pos["epoch"] >= epochs:
        said = (f"nothing to train: {run_dir} has trained all its {epochs} epoch{'s' * (epochs != 1)}; "
                f"--epochs {epochs + 1} or more continues it")
    else:
        return None
    return said, last, float(best)


# What the 'done' line of a run reports from its last epoch's record.
_REPORTED = ("val_top1", "val_top1_error", "val_top5", "elapsed_seconds")


# The checkpoint resume_config read, for fit to take instead of reading it again (an ImageNet
# run's last.pt is half a gigabyte, weights and momentum): path -> (the file's stat, checkpoint).
_READ: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}


def _signature(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def read_checkpoint(path: Path) -> dict[str, Any]:
    """``load_checkpoint(path)``, or the dict :func:`resume_config` kept of it if the file has not
    changed since (forgotten once taken)."""
    held = _READ.pop(os.path.abspath(path), None)
    return held[1] if held is not None and held[0] == _signature(path) else load_checkpoint(path)


def resume_config(run: str, overrides: dict[str, Any], keep: bool = False) -> TrainConfig:
    """The configuration of the run being resumed, with ``overrides`` (e.g. more epochs) on top;
    ``keep``: hold the checkpoint read for :func:`alexnet.train.fit` in this process to take.

    Options outside :data:`RESUME_MAY_CHANGE` are refused unless they repeat the saved value: a
    silently ignored ``--lr`` or ``--model`` would let a user believe the run changed course."""
    path = resume_source(run)
    signature = _signature(path)  # before the read: a file rewritten meanwhile is read again by fit
    ckpt = read_checkpoint(path)
    saved = ckpt.get("train_config")
    if not saved:
        raise CheckpointError(f"--resume: {path} has no training configuration")
    if not isinstance(saved, dict):
        raise CheckpointError(f"--resume: {path}: its training configuration is not a table of options")
    overrides = {k: v for k, v in given(overrides).items() if k != "resume"}
    refuse_unknown(overrides)
    as_built = _with_built_model_options(saved, ckpt.get("model_config"))
    fixed = _differing({k: v for k, v in overrides.items() if k not in RESUME_MAY_CHANGE}, as_built)
    if fixed:
        names = [n for k in fixed for n in _option_names(k, overrides[k], as_built.get(k))]
        raise ConfigError(
            f"--resume {path.parent} continues that run as it was configured; {', '.join(names)} "
            f"{'differ' if len(names) > 1 else 'differs'} from it: start a new run "
            f"to change {'them' if len(names) > 1 else 'it'} (--init-from {path} starts from its weights)"
        )
    _refuse_fewer_epochs(overrides.get("epochs"), ckpt.get("position"), path.parent)
    _refuse_epochs_within_warm_up(overrides.get("epochs"), saved.get("warmup_epochs"))
    if "data" in overrides:  # saved absolute, as a new run's (config.resolve_config)
        overrides["data"] = os.path.abspath(overrides["data"])
    else:
        _check_saved_data(saved.get("data"), path.parent)
    values = {**saved, **{k: v for k, v in overrides.items() if k in RESUME_MAY_CHANGE}}
    values.update(out=str(path.parent), resume=str(path))
    try:
        cfg = TrainConfig(**values)
        validate(cfg)
        expand_layers(cfg.freeze)  # what build_model would say without naming the file
        _check_saved_network(ckpt, cfg, path)  # before allocating it
    except (TypeError, ConfigError) as e:
        if any(str(e).startswith(flag(k)) for k in overrides):  # a value given now, not the checkpoint's
            raise ConfigError(str(e)) from None
        raise CheckpointError(f"--resume {path}: bad training configuration: {e}") from None
    _check_saved_machine(cfg, overrides, path.parent)
    if keep:  # only a configuration that passed: a refused resume holds nothing
        _READ[os.path.abspath(path)] = (signature, ckpt)
    return cfg


def _check_saved_network(ckpt: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """The network fit will build, checked and bounded before it is allocated: the one the checkpoint
    saved, with the run's model options (train.architecture), not the registry's. A model registered
    in the process that trained (alexnet.register_model) need not be registered in the one that
    resumes, which the command line cannot do; a checkpoint without a saved network is --model's."""
    saved = ckpt.get("model_config")
    if saved:
        config_from_file({**saved, **cfg.model_options} if isinstance(saved, dict) else saved, f"--resume {path}")
    else:
        bounded_config(model_config(cfg.model, **cfg.model_options), f"--resume {path}")


def _check_saved_data(data: Any, run_dir: Path) -> None:
    """ConfigError when the run's data is no longer where the run read it (moved to another disk,
    a run folder copied to another machine): --data gives its place now."""
    if isinstance(data, str) and not os.path.exists(data):  # a damaged value is said by validate()
        raise ConfigError(f"--resume {run_dir}: the run's data {data} is not there (its saved --data); "
                          "--data PATH continues the run with its data where it is now")


def _check_saved_machine(cfg: TrainConfig, overrides: dict[str, Any], run_dir: Path) -> None:
    """A run saved with a --device or --amp this machine lacks (a GPU run resumed on a laptop):
    the error says the setting is the run's, and how to go on here."""
    name = "device"
    try:
        device = resolve_device(cfg.device)
        name = "amp"
        if cfg.amp != "auto":  # auto never fails, and resolving it would open a CUDA context in the --nproc launcher
            resolve_amp(cfg.amp, device)
    except ConfigError as e:
        if name in overrides:  # typed now: the error as it is
            raise
        remedy = "--device cpu continues it here" if name == "device" else "another --amp continues it here"
        raise ConfigError(f"--resume {run_dir}: {e} (the run's saved {flag(name)}; {remedy})") from None


def _with_built_model_options(saved: dict[str, Any], built: Any) -> dict[str, Any]:
    """``saved`` with its model options completed by the network the checkpoint holds (``built``,
    its model_config), for comparing what a resume repeats: only the options typed when the run
    started are saved, so ``--dropout 0.5`` (the network's own), or the input_size an ``--init-from``
    network brought, was refused as "differs from it". The typed options win where both say."""
    typed = saved.get("model_options")
    if not (isinstance(built, dict) and isinstance(typed, dict)):
        return saved  # an older or damaged checkpoint: the typed options alone, as before
    return {**saved, "model_options": {**built, **typed}}


def _option_names(name: str, given: Any, saved: Any) -> list[str]:
    """The flags of a refused option as the user typed them: --dropout is a model option."""
    if name == "model_options" and isinstance(given, dict):
        keys = [k for k, v in given.items() if not isinstance(saved, dict) or saved.get(k) != v]
        return ["--dropout" if k == "dropout" else f"--model-option {k}" for k in keys] or [flag(name)]
    return [flag(name)]


def _refuse_fewer_epochs(epochs: int | None, position: Any, run_dir: Path) -> None:
    """ConfigError for a resume asking for fewer epochs than the run has begun: nothing would train,
    and config.json would say a length the checkpoint and metrics contradict."""
    if not (isinstance(epochs, int) and isinstance(position, dict)) or not all(is_whole(position.get(k, 0), 0) for k in ("epoch", "batch")):
        return  # a damaged position is said by the resume's check of it (trainstate.py)
    begun = int(position.get("epoch", 0)) + (1 if position.get("batch", 0) else 0)
    if epochs < begun:
        done = int(position.get("epoch", 0))
        raise ConfigError(f"--epochs {epochs}: {run_dir} has trained {done} epoch{'s' * (done != 1)}"
                          f"{' and part of another' if begun > done else ''} already; --epochs {begun} or more "
                          "continues it")


def _refuse_epochs_within_warm_up(epochs: int | None, warm_up: Any) -> None:
    """ConfigError for a resume shortened to end within the run's warm-up, as the saved option that
    sets the limit (it said 'bad training configuration' of the checkpoint, naming a --warmup-epochs
    the user never typed: the photos recipe chose it from the run's first --epochs)."""
    if isinstance(epochs, int) and is_finite(warm_up) and warm_up_outlasts(warm_up, epochs):
        raise ConfigError(f"--epochs {epochs}: the run warms its learning rate up over {warm_up:g} epochs (its saved "
                          f"--warmup-epochs), so it must be longer: --epochs {math.floor(warm_up) + 1} or more continues it")


def _differing(options: dict[str, Any], saved: dict[str, Any], whole: bool = False) -> list[str]:
    """The names of ``options`` whose values are not the run's ``saved`` ones (an option an older
    checkpoint lacks: its default then); ``whole``: model options all compared, not only those given."""
    defaults = TrainConfig()
    was = {k: saved.get(k, getattr(defaults, k, None)) for k in options}
    return [k for k, v in options.items()
            if not (_same_option(k, v, was[k]) and (not whole or _same_option(k, was[k], v)))]


def _same_option(name: str, given: Any, saved: Any) -> bool:
    """Whether a command-line value repeats the saved one (paths compared absolute; model options
    only those given; lists and tuples alike)."""
    if name in ("init_from", "out") and given is not None and saved is not None:
        return os.path.abspath(given) == os.path.abspath(saved)
    if name == "model_options" and isinstance(saved, dict):  # a built config holds tuples (widths), JSON lists
        return all(_same_option(k, v, saved.get(k)) for k, v in given.items())
    if isinstance(given, (list, tuple)) and isinstance(saved, (list, tuple)):
        return list(given) == list(saved)
    return given == saved


def check_resumed(cfg: TrainConfig, ckpt: dict[str, Any], source: Path, run_dir: Path) -> None:
    """ConfigError before a resume writes anything, when ``cfg`` is not the run's configuration
    (one built by hand, as ``resolve_config(None, {"resume": RUN, ...})``: it trained on with the
    preset's options and rewrote the run's), or when it would go on from an earlier checkpoint in
    the folder that holds a later one (``best.pt``: the epochs since would be overwritten)."""
    saved = ckpt.get("train_config")
    if isinstance(saved, dict):
        fixed = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in RESUME_MAY_CHANGE | {"resume", "out"}}
        differ = _differing(fixed, saved, whole=True)
        if differ:
            raise ConfigError(f"resume={cfg.resume}: {', '.join(differ)} {'differ' if len(differ) > 1 else 'differs'} from the "
                              "run's saved configuration; alexnet.resume.resume_config(RUN, {'epochs': N, ...}) builds it "
                              "with the options a resume may change")
    last = run_dir / runfolder.LAST_NAME
    if source.resolve() == last.resolve() or not last.is_file():
        return
    later = read_entry(last, "position") or {}  # an unreadable last.pt is not one to protect
    ours = ckpt.get("position") or {}
    if is_whole(later.get("step"), 0) and is_whole(ours.get("step"), 0) and later["step"] > ours["step"]:
        raise ConfigError(f"--resume {source}: {run_dir} holds a later checkpoint, {last.name} (step {later['step']}, "
                          f"against {ours['step']}), which going on from here would overwrite: --resume {run_dir} "
                          f"continues the run; to go on from {source.name}, copy it into a new folder and resume the copy")


def check_classes(saved: Any, data: DataBundle, resume: str, saved_folders: Any = None) -> list[str]:
    """The class names the resumed run goes on with, once the data is known to hold the classes the
    run trained on, in its order (else a DataError): class folders are numbered by sorted name, so one
    renamed or added would give the network's outputs other meanings, silently (or another count,
    said as a mismatch of fc8's weights). A run that named its classes by their folders (ImageNet
    synsets, before a devkit or Kaggle file beside them named them) keeps its names: a resumed run
    is the network it saved, and its checkpoints name their classes alike. So does a run whose
    ``saved_folders`` (the class folders it trained on) are the data's: a mapping file that named
    them then may be gone now (the data copied without the Kaggle file three folders above it)."""
    if saved is None:  # older checkpoints name no classes
        return list(data.classes)
    if not (isinstance(saved, (list, tuple)) and all(isinstance(c, str) for c in saved)):
        raise CheckpointError(f"--resume {resume}: damaged training state: its classes are not a list of names")
    ours, now = [class_name(c) for c in saved], list(data.classes)  # saved before names were NFC
    saved = in_data_names(ours, now, getattr(data, "folders", None))  # saved before the folders were named
    if saved == now or _same_folders(saved_folders, getattr(data, "folders", None), now):
        return ours
    gone, new = [c for c in saved if c not in now], [c for c in now if c not in saved]
    said = [f"{len(now)} where the run had {len(saved)}"] if len(now) != len(saved) else []
    said += [f"{_some(gone)} gone"] if gone else []
    said += [f"{_some(new)} new"] if new else []
    raise DataError(f"{data.source}: its classes are not those --resume {resume} trained on "
                    f"({'; '.join(said) or 'the same names in another order'}), whose outputs would mean other classes; "
                    f"--init-from {resume} starts a new run from its weights")


def _same_folders(saved: Any, folders: list[str] | None, now: list[str]) -> bool:
    """Whether a checkpoint's class folders are the data's, in order, and the data names its classes
    by them (no file names them now): other names from a classes.tsv may be other classes."""
    if not (isinstance(saved, (list, tuple)) and all(isinstance(f, str) for f in saved)):
        return False  # older checkpoints record none
    ours = [class_name(f) for f in folders or []]
    return folders is not None and [class_name(f) for f in saved] == ours == now


def _some(names: list[str], most: int = 3) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def note_changes(data: DataBundle, ckpt: dict[str, Any]) -> None:
    """Warnings when the run goes on otherwise than it began: its data preset has changed since
    (crops, sizes: a run started by an older alexnet), or photos were added or removed (another data
    order, a recomputed mean image). Said, rather than let 'resumes exactly' be believed."""
    preset = f"data preset {data.preprocess.preset}"
    for what, changed in ((preset, _preset_changes(data, ckpt.get("preprocess"))), ("training data", _data_changes(data, ckpt))):
        if changed:
            warnings.warn(f"--resume: the {what} has changed since this run started ({'; '.join(changed)}): the run "
                          f"goes on with the {what} as it is now, so it is no longer the run it began as", stacklevel=2)


_GEOMETRY = ("resize", "size", "train_crop", "test_crop", "padding", "flip", "scale")


def _preset_changes(data: DataBundle, saved: Any) -> list[str]:
    if not isinstance(saved, dict):
        return []
    now = data.preprocess.state()
    return [f"{k} {saved[k]!r} -> {now[k]!r}" for k in _GEOMETRY if k in saved and saved[k] != now[k]]  # both state()'s


def _data_changes(data: DataBundle, ckpt: dict[str, Any]) -> list[str]:
    saved = ckpt.get("data")
    if not isinstance(saved, dict):
        return []  # older checkpoints record no counts
    changed = [f"{what} {saved.get(key)} -> {now}" for what, key, now in (
        ("training images", "train_images", data.train_size), ("validation images", "val_images", data.val_size))
        if saved.get(key) != now]
    held, held_now = ckpt.get("held_out_of"), data.held_out_of or {}
    if not changed and isinstance(held, dict) and held.get("digest", held_now.get("digest")) != held_now.get("digest"):
        changed.append("files renamed or moved to another class")  # as many images: the held-out tenth is drawn anew
    before, now = ckpt.get("preprocess") or {}, data.preprocess
    # Within rounding: a resume may run with another thread count, which moves the last bits of sums.
    if torch.is_tensor(before.get("mean_image")) and now.mean_image is not None:
        # Of another size, the preset's geometry changed, not the photos (_preset_changes says so).
        if before["mean_image"].shape == now.mean_image.shape and not _near(before["mean_image"], now.mean_image, atol=1e-3):
            changed.append("its mean image")
    elif before.get("std") and not _near(torch.tensor(before["std"]), torch.tensor(now.std), rtol=1e-6):
        changed.append("its pixel std")
    return changed


def _near(a: torch.Tensor, b: torch.Tensor, **tol: float) -> bool:
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), **tol)
