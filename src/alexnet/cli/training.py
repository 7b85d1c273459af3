"""``alexnet train``: one process, or ``--nproc`` processes under torchrun."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import _config_overrides, _progress_flag

if TYPE_CHECKING:  # for annotations only: the commands import what they need when they run
    from ..config import TrainConfig


def cmd_train(args: argparse.Namespace) -> int:
    """``alexnet train``: resolve the run's configuration (preset, ``--config`` file, options; or the run
    ``--resume`` continues), then train it here (:func:`alexnet.train.fit`) or under torchrun with
    ``--nproc`` > 1; prints the final scores, returns 0 (or torchrun's status). ConfigError for
    ``--resume`` with ``--force`` or ``--config``, and for schedule options the run's schedule never reads."""
    from ..config import resolve_config
    from ..resume import resume_config
    from ..train import fit

    overrides = _config_overrides(args)
    if args.resume and args.force:
        from ..errors import ConfigError

        raise ConfigError("--resume continues a run and --force replaces one: pass one of them")
    if args.resume:
        if args.config:
            from ..errors import ConfigError

            raise ConfigError("--config with --resume: a resumed run keeps its own configuration (config.json in its folder)")
        # the checkpoint read here serves fit, unless torchrun's processes train (they read their own)
        cfg = resume_config(args.resume, overrides, keep=not (args.nproc and args.nproc > 1))
    else:
        cfg = resolve_config(overrides.pop("preset", None), overrides, args.config)
        _refuse_unused_schedule_options(overrides, cfg)
        _note_replayed_run(args.config, args.nproc, cfg)
        if cfg.init_from and overrides.get("model"):
            _check_init_model(overrides["model"], cfg.init_from)
    _note_unused_workers(overrides.get("workers"), cfg)
    if args.nproc and args.nproc > 1:
        return _launch(args, cfg)
    from ..runtime import say

    result = fit(cfg, show_progress=_progress_flag(args), force=args.force, note=say)  # notes on stderr, as the data's
    if "val_top1" in result and os.environ.get("RANK", "0") == "0":  # one report per distributed run
        print(
            f"done: val top-1 {result['val_top1']:.4f} (error {result['val_top1_error']:.4f}), "
            f"top-5 {result['val_top5']:.4f}, {result['elapsed_seconds']:.0f}s of training; run folder {result['run_dir']}"
        )
    return 0


def _note_unused_workers(typed: int | None, cfg: TrainConfig) -> None:
    """A note for a typed ``--workers N`` on data held in memory (Fashion-MNIST, CIFAR), which is
    batched in the training process: N was recorded in config.json and used by nothing. The run
    records 0, what ran (:func:`alexnet.train.fit`)."""
    from ..data.fashion_mnist import data_root
    from ..data.sources import detect
    from ..errors import DataError

    if not typed or os.environ.get("RANK", "0") != "0":
        return
    try:
        kind = detect(data_root(cfg.data))
    except (OSError, DataError):  # not there or not data: fit says so in its own words
        return
    if kind in ("fashion_mnist", "cifar"):
        name = "Fashion-MNIST" if kind == "fashion_mnist" else "CIFAR"
        print(f"note: --workers {typed}: {name} is held in memory and batched in the training process, so no worker "
              "processes load it; the run records --workers 0", file=sys.stderr)


# The options of one schedule each: the others never read them (optim.step_lr_factor, train's plateau).
_SCHEDULE_OPTIONS = {"gamma": "step", "step_size": "step", "plateau_patience": "plateau", "plateau_max_reductions": "plateau"}


def _refuse_unused_schedule_options(typed: dict, cfg: TrainConfig) -> None:
    """ConfigError for schedule options typed on the command line that this run's schedule never
    reads: '--schedule plateau --gamma 0.5' still divided by 10 (the paper's), '--step-size' with the
    preset's cosine did nothing, without a word. Only typed ones: a preset or config file (a run's
    config.json) carries every key, and README refuses a typed option that would do nothing."""
    from ..config import flag
    from ..errors import ConfigError

    unused = [k for k in _SCHEDULE_OPTIONS if typed.get(k) is not None and _SCHEDULE_OPTIONS[k] != cfg.schedule]
    if not unused:
        return
    named = ", ".join(f"{flag(k)} {typed[k]:g} (--schedule {_SCHEDULE_OPTIONS[k]}'s)" for k in unused)
    source = "" if typed.get("schedule") else ", the preset's or --config's (--schedule not given)"
    plateau = " (lr / 10 on each plateau, the paper's)" if cfg.schedule == "plateau" else ""
    them, they = ("them", "they") if len(unused) > 1 else ("it", "it")
    raise ConfigError(f"{named}: this run's schedule is {cfg.schedule}{plateau}{source}, which never reads {them}, so "
                      f"{they} would do nothing; drop {them} or give the --schedule that uses {them}")


def _note_replayed_run(config: str | None, nproc: int | None, cfg: TrainConfig) -> None:
    """Notes for `train --config RUN/config.json` where the replay cannot be the run bitwise: its
    process count, device or precision, or options a resume changed that change what it computes
    (config.json's "resumes"). Said once (by rank 0 under --nproc); TOML and YAML files are no
    run's record and get none."""
    from .. import jsonio
    from ..config import is_run_record

    if not config or (nproc or 1) > 1 or os.environ.get("RANK", "0") != "0":  # --nproc: its rank 0 says it, once
        return
    try:
        record = jsonio.loads(Path(config).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # TOML or YAML: read_config_file took it, and it records no processes
        return
    if not isinstance(record, dict) or not is_run_record(record):
        return
    environment = record.get("environment") or {}
    _note_replayed_processes(config, record)
    _note_replayed_device(config, environment.get("device"), cfg)
    started = environment.get("amp")
    amp = _amp_name(cfg) if isinstance(started, str) else None
    if amp is not None and started != amp:
        print(f"note: --config {config}: that run started in {_AMP_NAMES.get(started, started)} (its environment.amp) "
              f"and this one trains in {_AMP_NAMES.get(amp, amp)} (--amp {cfg.amp}), so it is not bitwise the same run",
              file=sys.stderr)
    _note_replayed_resumes(config, record.get("resumes"), cfg)


def _note_replayed_processes(config: str, record: dict) -> None:
    """A run's config.json gives its options, not its process count (``--nproc`` is no training
    option): a run of N processes replayed in another number trains differently (each rank's dropout
    masks, the split of each batch's reductions), so say so instead of a silently different run."""
    ran = (record.get("distributed") or {}).get("world_size") or 1
    now = int(os.environ.get("WORLD_SIZE") or 1)  # under torchrun (ours or the user's): its processes
    started = (record.get("environment") or {}).get("world_size")  # older records: none
    if isinstance(started, int) and isinstance(ran, int) and started != ran:  # resumed in another count
        print(f"note: --config {config}: that run started in {started} process{'es' * (started > 1)} and was resumed in "
              f"{ran}, so no process count repeats it bitwise (this one trains in {now})", file=sys.stderr)
    elif isinstance(ran, int) and ran != now:
        print(f"note: --config {config}: that run trained in {ran} process{'es' * (ran > 1)} and this one in {now} "
              f"process{'es' * (now > 1)}, so it is not bitwise the same run (--nproc {ran} repeats it)", file=sys.stderr)


# Options a resume may change that change what the run computes (device, precision and process
# count have notes of their own): --epochs where the rate follows the run's length, the memory layout
# (other kernels round differently) and torch.compile (other dropout draws).
_REPLAYED_CHANGES = ("epochs", "channels_last", "compile")


def _note_replayed_resumes(config: str, resumes: object, cfg: TrainConfig) -> None:
    """A note when the run was resumed with options that change what it computes: its first epochs
    ran with the ones it began with, while the replay trains with its last ones from the start (a
    6-epoch photo run resumed to 7 gave 0.2420 at epoch 7, its replay 0.2280). A replay given the
    options the run began with trains that first part: no note."""
    shaped = cfg.schedule in ("cosine", "onecycle")  # plateau and step never read --epochs
    changes = [(at, changed, {k: v for k, v in changed.items() if shaped or k != "epochs"}) for at, changed in _resumes(resumes)]
    changes = [c for c in changes if c[2]]
    began: dict[str, Any] = {}
    for _, _, shown in changes:
        for k, (before, _) in shown.items():
            began.setdefault(k, before)
    if all(getattr(cfg, k) == v for k, v in began.items()):
        return
    where = " and ".join(f"{_resumed_where(at)} with {_flags({k: v[1] for k, v in shown.items()})}" for at, _, shown in changes)
    why = f": its {cfg.schedule} learning rate follows the run's length" if "epochs" in began else ""
    repeat = ""
    # --epochs N ends a run after epoch N: a resume there that extended the run can be repeated
    if all(at["batch"] == 0 and changed.get("epochs", [None])[0] == at["epoch"] for at, changed, _ in changes):
        out = cfg.out or "NEW"
        steps = [f"--resume {out} {_flags({k: v[1] for k, v in changed.items()})}" for _, changed, _ in changes]
        first = _flags({"epochs": changes[0][1]["epochs"][0], **began})
        repeat = f"; {first}, then {', then '.join(steps)} repeats it"
    print(f"note: --config {config}: that run began with {_flags(began)} and was resumed {where}; this one trains with "
          f"{_flags({k: getattr(cfg, k) for k in began})} from the start, so it is not the same run{why}{repeat}", file=sys.stderr)


def _resumes(resumes: object) -> list[tuple[dict[str, int], dict[str, list]]]:
    """config.json's "resumes" as (where, {option: [before, after]}) for the options of
    ``_REPLAYED_CHANGES`` (whole numbers for --epochs, true/false for the others); damaged entries left out."""
    kept = []
    for r in resumes if isinstance(resumes, list) else []:
        at, changed = (r.get("at"), r.get("changed")) if isinstance(r, dict) else (None, None)
        if not (isinstance(at, dict) and isinstance(changed, dict) and all(isinstance(at.get(k), int) for k in ("epoch", "batch"))):
            continue
        kept.append((at, {k: v for k, v in changed.items() if k in _REPLAYED_CHANGES and isinstance(v, list) and len(v) == 2
                          and all(type(x) is (int if k == "epochs" else bool) for x in v)}))
    return kept


def _flags(values: dict[str, Any]) -> str:
    """Options as typed: --epochs 7, --channels-last, --no-compile."""
    from ..config import flag

    return " ".join(flag(k) if v is True else f"--no-{flag(k)[2:]}" if v is False else f"{flag(k)} {v}" for k, v in values.items())


def _resumed_where(at: dict[str, int]) -> str:
    """Where a resume began, as people count epochs: "after epoch 6", or "in epoch 4" mid-epoch."""
    return f"after epoch {at['epoch']}" if at["batch"] == 0 else f"in epoch {at['epoch'] + 1}"


def _replay_device(cfg: TrainConfig) -> tuple[str, str] | None:
    """The device this run trains on, as fit picks it (the first tower's under --towers, else
    --device), and the option that gives it; None for a device this machine lacks (fit says so)."""
    from ..errors import ConfigError
    from ..runtime import resolve_device

    towers = [d.strip() for d in cfg.tower_devices]
    if towers and towers not in (["none"], ["off"]):  # the towers' devices, not --device (parallel.tower_devices)
        return ("cuda" if towers == ["auto"] else towers[0]), f"--towers {','.join(towers)}"
    try:
        return str(resolve_device(cfg.device)), f"--device {cfg.device}"
    except ConfigError:
        return None


def _note_replayed_device(config: str, started: object, cfg: TrainConfig) -> None:
    """A note when the run of ``config`` started on another kind of device than the replay trains on:
    a run resumed with another --device records that one among its options while environment.device
    keeps the one its first epochs ran on (a GPU run resumed on a laptop with --device cpu was
    replayed all on the CPU, on the GPU machine too, without a word). CPU, CUDA and MPS kernels round
    differently, so the replay is not bitwise the run."""
    device = _replay_device(cfg) if isinstance(started, str) else None
    if device is None:
        return
    now, given = device
    was = _device_type(started)
    if was is not None and _device_type(now) != was:
        print(f"note: --config {config}: that run started on {started} (its environment.device) and this one trains "
              f"on {now} ({given}), so it is not bitwise the same run", file=sys.stderr)


def _device_type(name: str) -> str | None:
    """The kind of device ("cpu", "cuda", "mps") a recorded device name is; None for one torch cannot read."""
    import torch

    try:
        return torch.device(name).type
    except (RuntimeError, ValueError):
        return None


# environment.amp's names, as people say them
_AMP_NAMES = {"bfloat16": "bf16", "float16": "fp16", "none": "float32"}


def _amp_name(cfg: TrainConfig) -> str | None:
    """The precision this run will train in, as environment.amp names it; None where its device or
    --amp cannot be had here (fit says that in one line)."""
    import torch

    from ..errors import ConfigError
    from ..runtime import amp_name, resolve_amp

    device = _replay_device(cfg)  # the towers' under --towers, as fit resolves the precision for
    if device is None:
        return None
    try:
        amp = resolve_amp(cfg.amp, torch.device(device[0]))
    except (ConfigError, RuntimeError):
        return None
    return amp_name(amp)


def _check_init_model(model: str, init_from: str) -> None:
    """ConfigError for a typed --model other than the network --init-from holds (its architecture is
    the one trained: the --model would be dropped without a word)."""
    from ..checkpoint import config_from_file, load_checkpoint
    from ..errors import ConfigError
    from ..model import describe_model, model_family

    saved = load_checkpoint(init_from, torchvision=True).get("model_config")
    if saved is None:  # another bare state dict: its weights go into --model
        return
    config = config_from_file(saved, init_from)
    if model_family(config)[0] != model:  # the paper's net trained at 112 px is still --model alexnet_paper
        raise ConfigError(f"--model {model}: --init-from {init_from} holds {describe_model(config)}, whose architecture "
                          "the run trains; drop --model (or start from weights of that network)")


def _launch(args: argparse.Namespace, cfg: TrainConfig) -> int:
    """``train --nproc N``: the checks that would otherwise fail once per rank, then torchrun."""
    from .. import distributed
    from ..errors import ConfigError

    if distributed.launched():
        raise ConfigError("--nproc: this process was already started by torchrun; drop --nproc")
    if cfg.batch_size % args.nproc:
        raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch: it must divide evenly over --nproc {args.nproc}")
    from ..parallel import tower_devices

    for rank in range(args.nproc):  # each rank's towers, as the ranks would check them on this machine
        tower_devices(cfg.tower_devices, distributed.DistInfo(rank, args.nproc, rank, args.nproc))
    argv = distributed.without_option(args.argv, "--nproc")
    out = cfg.out
    if not out:  # named here, so that the launcher's last line can say which folder to resume
        from ..train import default_run_dir

        out = str(default_run_dir(cfg.model))
        argv += ["--out", out]
    from ..atomic import check_writable
    from ..runfolder import check  # rank 0 claims the folder (runfolder.py); a refusal is one line here instead

    check(Path(out), bool(cfg.resume), args.force)
    check_writable(out, "--out" if cfg.out else "the run folder", folder=True)
    return distributed.launch(args.nproc, argv, out)
