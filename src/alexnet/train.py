"""Training: ``fit``, the whole run, around the phase functions of :mod:`alexnet.epoch`.

A run never loses work: ``last.pt`` and ``best.pt`` are written atomically at every epoch end (and
every ``save_every`` steps), hold everything a resume needs (weights, optimiser, schedule, AMP
scaler, every RNG state, the position in the data order), and ``--resume`` continues bitwise
exactly where the run stopped, on every kind of data, with any ``--workers`` (on the CPU; the same
device and thread count). Nothing between two steps draws from the global RNG that makes the
dropout masks: data loaders have their own generator, evaluation draws nothing. Tested by
killing runs at seeded moments (``ALEXNET_FAULT``, see faults.py; tests/test_resume.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import platform
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from . import distributed, faults, jsonio, runfolder
from .atomic import STOP_SIGNALS, quiet_if_hung_up, write_text
from .checkpoint import FORMAT, config_from_file, load_checkpoint, save_atomic
from .config import PRESETS, TrainConfig
from .data.device_decode import decode_device
from .data.loaders import DataBundle, TensorBatches, load_data, set_epoch
from .data.presets import Preprocess
from .data.sources import check_out_of_images
from .epoch import Position, as_typed, evaluate, train_one_epoch
from .errors import (
    AlexNetError,
    CheckpointError,
    ConfigError,
    DataError,
    DataGone,
    Interrupted,
    NonFiniteLoss,
    StoppedAtOnce,
    TrainingError,
    check_weights,
    is_worker_death,
    machine_limit,
    state_dict_mismatch,
)
from .finetune import architecture, build_model, note_scale, warn_held_out
from .health import HealthMonitor
from .installed import versions
from .model import AlexNet, AlexNetConfig, describe_model, model_family
from .optim import PlateauSchedule, make_optimizer, match_state_layout, param_groups, step_lr_factor
from .parallel import TowerSplit, grouped_optimizer_state, split_optimizer_state, tower_devices
from .resume import (
    RESUME_MAY_CHANGE,
    check_classes,
    check_resumed,
    note_changes,
    nothing_left,
    read_checkpoint,
    resume_source,
    started_threads,
)
from .runtime import amp_name, counted, resolve_amp, rng_state, seed_everything, set_rng_state
from .trainstate import check_training_state


# -- the run ----------------------------------------------------------------------------------------
def _environment(device: torch.device, amp: torch.dtype | None) -> dict[str, Any]:
    return {
        **versions(),
        "machine": platform.machine(),
        "device": str(device),
        "amp": amp_name(amp),
        "threads": torch.get_num_threads(),
    }


def _save(state: dict[str, Any], path: Path) -> None:
    existed = path.exists()  # what to say is untouched: the first save of a run has nothing there
    try:
        save_atomic(state, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        if is_worker_death(e):  # met while writing, not the write's failure: said as any worker's death (fit)
            raise
        reason = (e.strerror if isinstance(e, OSError) else None) or " ".join(str(e).split()) or type(e).__name__
        raise TrainingError(f"could not write {path}: {reason}" + (" (the file there before is untouched)" if existed else "")) from None


class _CtrlC:
    """Turns SIGINT (Ctrl-C), SIGTERM (what kill, systemd, docker stop and a SLURM preemption send) and
    SIGHUP (the terminal hung up) into a flag that the training loop checks between steps: the run saves
    and stops."""

    SIGNALS = STOP_SIGNALS

    def __init__(self) -> None:
        self.hit = False
        self.previous: dict[int, Any] = {}

    def __enter__(self):
        try:
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread
            self.previous = {}
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        quiet_if_hung_up(signum)
        if self.hit:  # a second one: stop at once
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def fit(
    cfg: TrainConfig,
    show_progress: bool | None = None,
    log: Callable[[str], None] = print,
    force: bool = False,
    note: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` and evaluate after every epoch.

    Writes to the run folder: ``config.json``, ``metrics.jsonl``, ``last.pt``, ``best.pt``.
    With ``resume`` (a run folder or checkpoint), continues that run exactly. The folder holds one
    run, locked while it trains (runfolder.py): a new run into a folder holding one is refused
    unless ``force`` (which replaces it), and a new run that fails before its first checkpoint
    leaves nothing behind.
    Started by torchrun (``RANK``, ``WORLD_SIZE`` set), this is one rank of a data-parallel run: each
    rank trains a DistributedDataParallel replica on its share of every global batch, and only rank 0
    logs and writes files. ``cfg.tower_devices`` puts the two towers on two devices (parallel.py).
    ``log`` takes the run's progress (its start, each epoch, the end); ``note`` its notes and
    warnings (``note: ...``, ``warning: ...``; default: ``log``), which the command line prints on
    stderr as it does the data's warnings.
    Returns the last epoch's metrics with ``run_dir`` and ``best_val_top1`` added.
    """
    info = distributed.env_info()
    if cfg.tensorboard and info.is_main:  # refused before the data loads, not once the run has started
        _summary_writer()
    towers = tower_devices(cfg.tower_devices, info)
    device = towers[0] if towers else distributed.rank_device(cfg.device, info)
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg.model)
    check_out_of_images(run_dir, cfg.data, "--out" if cfg.out else "the run folder")
    distributed.setup(info, device, cfg.dist_timeout)
    try:
        run_dir = Path(distributed.broadcast_object(str(run_dir)))  # rank 0's time stamp names the run
        quiet = not info.is_main
        with _claim(run_dir, cfg, force, info) as folder, contextlib.ExitStack() as cleanup, \
                _machine_limit_said(cfg, run_dir, info, "in train"):
            progress_on, said = (False, lambda s: None) if quiet else (show_progress, log)
            voices = _Voices(said, said if quiet or note is None else note)
            return _fit(cfg, info, device, towers, run_dir, progress_on, voices, cleanup, folder)
    except AlexNetError as e:
        # Met once the ranks work together, where each may stand elsewhere (its shard of the data, its
        # step): its rank says it, naming itself, unless all of them decided it (errors.rank_voice).
        e.own_rank = not e.every_rank
        raise
    except (RuntimeError, KeyboardInterrupt) as e:
        lost = distributed.lost_peer(e) if info.enabled else None
        if lost is None:
            raise
        failure = distributed.comm_failure(lost, info, run_dir)
        e.__traceback__ = lost.__traceback__ = None  # frees _fit's frames, and with them the DDP wrapper, before teardown
        raise failure from None
    finally:
        distributed.teardown()


def _claim(run_dir: Path, cfg: TrainConfig, force: bool, info: distributed.DistInfo) -> contextlib.AbstractContextManager:
    """Rank 0 claims the run folder (runfolder.claim); in a distributed run the other ranks learn
    whether it could, so that a refusal stops every rank instead of leaving them waiting."""
    folder: contextlib.AbstractContextManager = contextlib.nullcontext()
    error: BaseException | None = None
    if info.is_main:
        try:
            folder = runfolder.claim(run_dir, bool(cfg.resume), force, keep=(Interrupted,),
                                     option="--out" if cfg.out else "the run folder")
        except (AlexNetError, OSError) as e:
            error = e
    if info.enabled:
        try:
            message = distributed.broadcast_object(None if error is None else str(error))
        except BaseException:
            if isinstance(folder, runfolder.RunFolder):
                folder.release()
            raise
        if message is not None and error is None:
            error = runfolder.RunFolderError(f"rank 0 could not claim the run folder: {message}")
        if isinstance(error, AlexNetError):  # rank 0's refusal, which every rank now knows: rank 0 says it
            error.every_rank = True
    if error is not None:
        raise error
    return folder


# -- the parts of a run: wiring, run folder files, checkpoints, the epoch loop ---------------------
class _Voices(NamedTuple):
    """Where a run says things: ``log`` its progress (the start, each epoch), ``note`` its notes
    and warnings (stderr on the command line)."""

    log: Callable[[str], None]
    note: Callable[[str], None]


@dataclass
class _Run:
    """What the parts of a run share: set up by :func:`_wire` and :func:`_wrap`; ``pos``,
    ``history`` and ``best`` move on as the run trains and are what a checkpoint saves."""

    cfg: TrainConfig
    info: distributed.DistInfo
    device: torch.device
    towers: tuple[torch.device, torch.device] | None
    run_dir: Path
    show_progress: bool | None
    log: Callable[[str], None]  # progress: the start, each epoch
    note: Callable[[str], None]  # notes and warnings
    amp: torch.dtype | None
    data: DataBundle
    model: AlexNet
    split: TowerSplit | None  # the model over two devices (--towers)
    module: torch.nn.Module  # the model on its device(s), split or not
    optimizer: torch.optim.Optimizer
    scaler: Any
    plateau: PlateauSchedule
    pos: Position = dataclasses.field(default_factory=Position)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best: float = -1.0
    net: torch.nn.Module | None = None  # what trains: DDP-wrapped and compiled as asked
    eval_net: torch.nn.Module | None = None
    writer: Any = None
    health: HealthMonitor | None = None
    # A resumed run's options go into config.json with its first checkpoint (_checkpoint), not
    # before: a resume that fails first (--compile without a compiler, a NaN) must not leave
    # config.json saying --epochs/--compile/--amp that no checkpoint of the folder ran with.
    # Until then: where it resumed (epoch, batch and step done), for config.json's "resumes".
    config_pending: dict[str, int] | None = None
    said_blind: bool = False  # _say_blind's warning, once a run
    folder: runfolder.RunFolder | None = None  # rank 0's claim of run_dir
    recorded: int = 0  # history's records in metrics.jsonl (the epoch's own follows its checkpoint)

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / runfolder.METRICS_NAME


def _fit(
    cfg: TrainConfig,
    info: distributed.DistInfo,
    device: torch.device,
    towers: tuple[torch.device, torch.device] | None,
    run_dir: Path,
    show_progress: bool | None,
    voices: _Voices,
    cleanup: contextlib.ExitStack,
    folder: runfolder.RunFolder | None = None,
) -> dict[str, Any]:
    """The run of :func:`fit` on this rank, once the run folder is claimed (``folder``, on rank 0);
    ``voices`` say its progress and its notes (:attr:`_Run.log`, :attr:`_Run.note`)."""
    source = resume_source(cfg.resume, claimed=Path(cfg.resume).resolve() == run_dir.resolve()) if cfg.resume else None
    resume_ckpt = read_checkpoint(source) if source is not None else None
    if resume_ckpt is not None:
        check_resumed(cfg, resume_ckpt, source, run_dir)
    finished = nothing_left(resume_ckpt, cfg.epochs, run_dir) if resume_ckpt is not None else None
    if finished is not None:  # said before any data is read or file written
        voices.log(finished[0])
        return _outcome(finished[1], run_dir, finished[2])
    try:
        run = _wire(cfg, info, device, towers, run_dir, show_progress, voices, cleanup, resume_ckpt)
    except DataError as e:
        # Ranks on one machine list and check the same files alike: rank 0 alone says it (cli). Ranks
        # on other machines (torchrun --nnodes) may see other files, so each says its own: one that
        # stopped without a word would leave the others waiting at their first collective.
        if info.world == info.local_world:
            e.every_rank = True
        raise
    run.folder = folder
    if resume_ckpt is not None:
        _restore(run, resume_ckpt)
    _start_files(run, resumed=resume_ckpt is not None)
    _announce(run)
    _wrap(run)
    if resume_ckpt is not None:
        run.health.load_state_dict(resume_ckpt.get("health"))
        _restore_rng(run, resume_ckpt)  # last: everything above may have drawn random numbers
    with _CtrlC() as ctrl_c:
        on_step = functools.partial(_on_step, run)
        try:
            while run.pos.epoch < cfg.epochs and not run.plateau.stop:
                _epoch(run, on_step, ctrl_c)
        except KeyboardInterrupt:  # a second Ctrl-C (or SIGTERM): stopped at once, nothing more saved
            if not (run.run_dir / runfolder.LAST_NAME).is_file():
                raise StoppedAtOnce("stopped at once by a second interrupt") from None  # the folder adds what is left
            raise Interrupted("stopped at once by a second interrupt; its last checkpoint is kept: continue with: "
                              + distributed.resume_command(run.run_dir, run.info)) from None
    if run.writer is not None:
        run.writer.close()
    run.health.close()  # its hooks would otherwise stay on the model
    return _outcome(run.history[-1] if run.history else {}, run_dir, run.best)


def _outcome(last: dict[str, Any], run_dir: Path, best: float) -> dict[str, Any]:
    """What :func:`fit` returns: the last epoch's record, ``run_dir`` and ``best_val_top1``. One place
    for a run that trained and one that had nothing left: the latter gave ``run_dir`` as typed ('run
    folder run'), the former absolute, a path that holds after a chdir ('run folder /home/u/run')."""
    return {**last, "run_dir": str(run_dir.resolve()), "best_val_top1": float(best)}


# -- wiring: data, model, optimiser, restore ------------------------------------------------------
def _wire(
    cfg: TrainConfig,
    info: distributed.DistInfo,
    device: torch.device,
    towers: tuple[torch.device, torch.device] | None,
    run_dir: Path,
    show_progress: bool | None,
    voices: _Voices,
    cleanup: contextlib.ExitStack,
    resume_ckpt: dict[str, Any] | None = None,
) -> _Run:
    """The data, model, optimiser, AMP scaler and plateau schedule of a run, before any resume
    (``resume_ckpt`` gives only the architecture here; :func:`_restore` the rest)."""
    if cfg.batch_size % info.world:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is the global batch: it must divide evenly over the {info.world} processes"
        )
    seed_everything(cfg.seed)
    amp = resolve_amp(cfg.amp, device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    # A resumed run is the network it saved; a fine-tuning run starts as its --init-from's.
    init = load_checkpoint(cfg.init_from, torchvision=True) if cfg.init_from and resume_ckpt is None else None
    source = f"--resume {cfg.resume}" if resume_ckpt is not None else f"--init-from {cfg.init_from}" if init else f"--model {cfg.model}"
    arch, fixed_chans = architecture(cfg, resume_ckpt if resume_ckpt is not None else init, source)
    if init is not None and isinstance(init.get("model_config"), dict):  # config.json names the network trained
        cfg = dataclasses.replace(cfg, model=model_family(config_from_file(init["model_config"], source))[0])
    cfg = dataclasses.replace(cfg, workers=min(cfg.workers, os.cpu_count() or 1))  # more than cores only contend
    data = _load(cfg, info, device, run_dir, show_progress, arch.input_size)
    cleanup.callback(data.close)  # the workers stop when the run ends, however it ends
    if cfg.workers and isinstance(data.train, TensorBatches):  # in memory (Fashion-MNIST, CIFAR): batched here
        cfg = dataclasses.replace(cfg, workers=0)  # config.json and the checkpoint record what ran
    _check_data(cfg, data, arch, fixed_chans, source)
    if resume_ckpt is not None:  # before its weights: an added class would be said as fc8's shape
        kept = check_classes(resume_ckpt.get("classes"), data, cfg.resume, resume_ckpt.get("folders"))
        data.names_from = data.names_from if kept == list(data.classes) else None  # config.json keeps the run's own
        data.classes = kept
    if init is not None and init.get("preprocess") is not None:
        note_scale(cfg, Preprocess.from_dict(init["preprocess"], source=source), data)
    if init is not None:
        warn_held_out(cfg, init, data)
    if not fixed_chans:
        arch = dataclasses.replace(arch, in_chans=data.preprocess.channels)
    seed_everything(cfg.seed)  # the init does not depend on what data loading drew
    model = build_model(cfg, arch, data.classes, init, voices.log, data.folders)
    if info.rank:  # the same init everywhere, but each rank its own dropout masks
        seed_everything(cfg.seed + 7919 * info.rank)
    split = TowerSplit(model, towers) if towers else None
    module: torch.nn.Module = split if split is not None else model.to(device)
    if cfg.channels_last:
        module = module.to(memory_format=torch.channels_last)
    groups = param_groups(module, cfg.lr_mult, cfg.bias_decay)
    optimizer = make_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    plateau = PlateauSchedule(cfg.plateau_patience, 0.1, cfg.plateau_max_reductions)
    return _Run(
        cfg=cfg, info=info, device=device, towers=towers, run_dir=run_dir, show_progress=show_progress, log=voices.log, note=voices.note,
        amp=amp, data=data, model=model, split=split, module=module, optimizer=optimizer, scaler=scaler, plateau=plateau,
    )


def _check_data(cfg: TrainConfig, data: DataBundle, arch: AlexNetConfig, fixed_chans: bool, source: str) -> None:
    """Data the network cannot learn from, or a network that cannot take the data: one line."""
    if len(data.classes) < 2:  # one class: the loss is 0 from the first step and nothing is learned
        raise DataError(f"{data.source}: only one class ({data.classes[0]}); a classifier needs at least two")
    if cfg.num_classes is not None and cfg.num_classes != len(data.classes):
        raise ConfigError(f"--num-classes {cfg.num_classes} does not match the {len(data.classes)} classes of {data.source}")
    # fc8 gets one output per class of the data: a typed num_classes that differs was dropped unsaid.
    typed = cfg.model_options.get("num_classes", len(data.classes))
    if typed != len(data.classes):
        raise ConfigError(f"--model-option num_classes={typed} does not match the {len(data.classes)} classes of {data.source}")
    if fixed_chans and arch.in_chans != data.preprocess.channels:
        raise CheckpointError(
            f"{source}: its network takes {arch.in_chans}-channel images but {data.source} has "
            f"{data.preprocess.channels}-channel ones"
        )


def _load(
    cfg: TrainConfig, info: distributed.DistInfo, device: torch.device, run_dir: Path, show_progress: bool | None,
    input_size: int,
) -> DataBundle:
    """This rank's share of the data (``load_data``) at the network's ``input_size``."""
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)  # bad_files.txt may be written while loading
    return load_data(
        cfg.data,
        cfg.batch_size,
        input_size,
        workers=cfg.workers,
        seed=cfg.seed,
        eval_batch_size=cfg.eval_batch_size,
        pin_memory=device.type == "cuda",
        decode_device=decode_device(cfg.decode, device),
        rank=info.rank,
        world=info.world,
        preset=cfg.data_preset,
        strict=cfg.strict,
        out_dir=run_dir if info.is_main else None,
        show_progress=show_progress,
    )


def _restore(run: _Run, ckpt: dict[str, Any]) -> None:
    """Weights, optimiser, scaler, schedule, position and history from the checkpoint resumed
    (its RNG states come last, :func:`_restore_rng`)."""
    source = f"--resume {run.cfg.resume}"
    check_weights(ckpt.get("model") or {}, source)
    try:
        if run.split is not None:  # checkpoints hold the grouped layout, whatever the placement
            run.split.load_grouped_state_dict(ckpt["model"])
        else:
            run.model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{source}: not a full training checkpoint ({' '.join(state_dict_mismatch(e).split())})") from None
    optimizer_state = ckpt.get("optimizer")
    if run.split is not None:
        try:
            optimizer_state = split_optimizer_state(run.split, run.optimizer, optimizer_state)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError, RuntimeError):
            optimizer_state = None  # said next as a damaged optimizer state
    # All of it before anything else is loaded or written: a fault found later left rewritten files.
    check_training_state(ckpt, source, optimizer_state, run.optimizer, len(run.data.train), run.cfg.epochs)
    try:
        run.optimizer.load_state_dict(optimizer_state)
        match_state_layout(run.optimizer)  # a resume may change --channels-last
        run.scaler.load_state_dict(ckpt.get("scaler") or {})
    except (KeyError, RuntimeError, ValueError, TypeError) as e:  # what torch checks beyond the above
        raise CheckpointError(f"{source}: not a full training checkpoint ({type(e).__name__}: {' '.join(str(e).split())})") from None
    run.plateau.load_state_dict(ckpt["plateau"])
    pos = Position(**ckpt["position"])
    history, best = list(ckpt["history"]), float(ckpt["best_val_top1"])
    if not run.info.is_main:  # the saved sums are the whole run's: rank 0 carries them on
        pos = dataclasses.replace(pos, loss_sum=0.0, correct=0, seen=0)
    run.pos, run.history, run.best = pos, history, best
    if run.info.is_main:
        note_changes(run.data, ckpt)
        _note_new_horizon(run, (ckpt.get("train_config") or {}).get("epochs"))
        _note_process_change(run, ckpt.get("rng_ranks"))


def _note_new_horizon(run: _Run, began: Any) -> None:
    """A note when a resume with other --epochs moves the end of a decaying schedule: the rate jumps
    from where the run had brought it to where the longer schedule has it at this step."""
    cfg, steps = run.cfg, len(run.data.train)
    if cfg.schedule not in ("onecycle", "cosine") or not isinstance(began, int) or began == cfg.epochs or began < 1:
        return
    at = run.pos.epoch * steps + run.pos.batch  # the batch the run goes on at, as train_one_epoch sets its rate
    was, now = (step_lr_factor(cfg.schedule, at, steps, e, cfg.warmup_epochs, cfg.step_size, cfg.gamma)
                for e in (began, cfg.epochs))
    run.note(f"note: --epochs {cfg.epochs}: the {cfg.schedule} schedule now decays to 0 at epoch {cfg.epochs}, not "
            f"{began}; the rate goes on at {cfg.lr * now:.3g} where the run had it at {cfg.lr * was:.3g}")


def _note_process_change(run: _Run, rng_ranks: Any) -> None:
    """A note when a run resumes in another number of processes than its checkpoint was written by
    (its ``rng_ranks``, one RNG state per rank; none: one process): each rank draws its own dropout
    masks, so the run goes on correctly but not bitwise as it would have (docs/distributed.md). A
    2-process run resumed without --nproc went on in one process without a word. A run that torchrun
    started across machines is told torchrun's options, which --nproc (one machine) is not."""
    saved = len(rng_ranks) if isinstance(rng_ranks, list) and rng_ranks else 1
    now = run.info.world if run.info.enabled else 1
    if saved != now:
        machines = run.info.world != run.info.local_world  # torchrun --nnodes > 1
        exactly = (f"torchrun with --nnodes times --nproc-per-node = {saved}" if machines and saved > 1
                   else "one process, without torchrun," if machines
                   else f"--nproc {saved}" if saved > 1 else "one process, without --nproc,")
        run.note(f"note: this run's checkpoint was written by {saved} process{'es' * (saved > 1)} and it resumes in {now}; "
                f"it continues, but not bitwise as an uninterrupted run would ({exactly} resumes exactly)")


def _wrap(run: _Run) -> None:
    """What trains (DDP, torch.compile) and what evaluates, the TensorBoard writer, the health monitor."""
    cfg, info = run.cfg, run.info
    net = run.module
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # A module on one GPU names it; a module over two devices (towers) or on the CPU must not.
        ids = [run.device] if run.device.type == "cuda" and run.split is None else None
        net = DistributedDataParallel(run.module, device_ids=ids, gradient_as_bucket_view=True)
    run.net = torch.compile(net) if cfg.compile else net
    run.eval_net = run.module if info.enabled else run.net  # evaluation needs no gradient synchronisation
    run.writer = _tensorboard(run.run_dir) if cfg.tensorboard and info.is_main else None
    # The layer probe's hooks sit on the AlexNet's own layers (not there under --towers; compiled
    # graphs would recompile on its switch), so there the loss alone is watched.
    watched = run.model if run.split is None and not cfg.compile else None
    run.health = HealthMonitor(watched, len(run.data.classes), cfg.health, warn=run.note, remedies=health_remedies(cfg, run.model))


def health_remedies(cfg: TrainConfig, model: AlexNet) -> tuple[str, ...]:
    """What a diverged or dead run could change, among what this run does not do already."""
    remedies = ["lower --lr (e.g. by 10)"]
    if not cfg.warmup_epochs:  # a warm-up must end before the run does
        remedies.append(f"add --warmup-epochs {1 if cfg.epochs > 2 else cfg.epochs / 2:g}")
    recipe = PRESETS.get(cfg.preset, {}).get("warmup_epochs", 0.0)
    if 0 < cfg.warmup_epochs < recipe and cfg.warmup_epochs == cfg.epochs / 2:  # the short run's cap (_preset_warmup)
        # 1 epoch of 7 steps warms up for 3.5 and diverged on imagewoof-mini where 4 epochs did not.
        remedies.append(f"train longer (at --epochs {cfg.epochs} the {cfg.preset} recipe's {recipe:g}-epoch warm-up is cut "
                        f"to {cfg.warmup_epochs:g}; --epochs {math.ceil(2 * recipe)} or more keeps it whole)")
    if model.config.init != "kaiming" and not cfg.init_from:  # fine-tuning: the loaded weights replace any init
        remedies.append("start from He init (--model-option init=kaiming, as --preset photos does)")
    return tuple(remedies)


def _restore_rng(run: _Run, ckpt: dict[str, Any]) -> None:
    """Every RNG state as the checkpoint saved it: each rank its own, where the run had as many ranks."""
    ranks = ckpt.get("rng_ranks")
    if ranks is not None and len(ranks) == run.info.world:
        set_rng_state(ranks[run.info.rank])
    elif run.info.rank == 0:
        set_rng_state(ckpt["rng"])


# -- the run folder's files -----------------------------------------------------------------------
def _start_files(run: _Run, resumed: bool) -> None:
    """A new run's config.json and empty metrics.jsonl; a resumed run's metrics.jsonl rewritten
    from its checkpoint's history, and curves.png redrawn from it: a resume killed before its first
    epoch ended left a figure of other epochs than the record (an epoch whose record a kill cut off)."""
    info = run.info
    if resumed:
        if info.is_main:
            _write_metrics(run, len(run.history))
            if run.history:
                _plot(run.run_dir)
            run.config_pending = {"epoch": run.pos.epoch, "batch": run.pos.batch, "step": run.pos.step}
        run.log(f"resuming {run.run_dir} at epoch {run.pos.epoch + 1}, batch {run.pos.batch}, step {run.pos.step}")
        _note_thread_change(run)
    elif info.is_main:
        _write_config(run)
        write_text(run.metrics_path, "")
    run.recorded = len(run.history)


def _write_config(run: _Run) -> None:
    write_text(run.run_dir / runfolder.CONFIG_NAME, json.dumps(_resolved(run), indent=2) + "\n")


def _write_metrics(run: _Run, epochs: int) -> None:
    """metrics.jsonl of the first ``epochs`` epochs the run holds."""
    write_text(run.metrics_path, "".join(json.dumps(h) + "\n" for h in run.history[:epochs]))


def _resolved(run: _Run) -> dict[str, Any]:
    """config.json of a run that starts here: its options, model, data, preprocessing and environment."""
    return {
        "train": run.cfg.to_dict(),
        "model": run.model.config.to_dict(),
        "data": _data_record(run.data),
        "preprocess": run.data.preprocess.to_json(),
        # the process count it starts in: "distributed" says the one it goes on in after a resume
        "environment": {**_environment(run.device, run.amp), "world_size": run.info.world},
        "distributed": _distributed_record(run),
    }


def _distributed_record(run: _Run) -> dict[str, Any]:
    return {"world_size": run.info.world, "towers": [str(d) for d in run.towers] if run.towers else None}


def _data_record(data: DataBundle) -> dict[str, Any]:
    """config.json's "data": where the class names came from too (a mapping folders above the data)."""
    names_from = {"class_names_from": data.names_from} if data.names_from is not None else {}
    return {"source": data.source, "train_images": data.train_size, "val_images": data.val_size,
            "classes": list(data.classes), **names_from}


def _update_config_file(run: _Run, at: dict[str, int]) -> None:
    """A resumed run's config.json gives the options it goes on with (more --epochs, another
    --device, its data in another place, other processes or towers, ...); the environment it started
    in stays, as :func:`_note_thread_change` reads it. A resume that changed options adds where it
    resumed (``at``) and what changed, ``{option: [before, after]}``, to "resumes": a cosine or
    onecycle run resumed with more --epochs followed the shorter schedule until then, which the
    final options alone cannot replay (``train --config`` says so)."""
    path = run.run_dir / runfolder.CONFIG_NAME
    try:
        resolved = jsonio.loads(path.read_text())
    except FileNotFoundError:  # deleted, or the folder was (by an earlier version, which made it again without)
        _write_config(run)
        run.note(f"note: {run.run_dir} had no {runfolder.CONFIG_NAME}: written of the options this run goes on with")
        return
    except (OSError, ValueError):
        return
    if not isinstance(resolved, dict):
        return
    now: dict[str, Any] = {"train": run.cfg.to_dict(), "data": _data_record(run.data), "distributed": _distributed_record(run)}
    before = resolved.get("data")
    if isinstance(before, dict) and before.get("classes") == now["data"]["classes"] and "class_names_from" in before:
        now["data"]["class_names_from"] = before["class_names_from"]  # the names it started with, from there
    was = resolved.get("train") if isinstance(resolved.get("train"), dict) else {}
    changed = {k: [was[k], v] for k, v in now["train"].items() if k in RESUME_MAY_CHANGE and k in was and was[k] != v}
    if changed:
        earlier = resolved.get("resumes")
        now["resumes"] = [*(earlier if isinstance(earlier, list) else []), {"at": at, "changed": changed}]
    if any(resolved.get(k) != v for k, v in now.items()):
        write_text(path, json.dumps({**resolved, **now}, indent=2) + "\n")


def _note_thread_change(run: _Run) -> None:
    """A note when a CPU run resumes on another thread count than it started with: CPU reductions
    then round differently, so the run goes on correctly but not bitwise as it would have."""
    started, now = started_threads(run.run_dir), torch.get_num_threads()
    if run.device.type == "cpu" and started is not None and started != now:
        run.note(f"note: this run started with {started} CPU threads and resumes with {now}; it continues, but "
                f"not bitwise as an uninterrupted run would (--threads {started} resumes exactly)")


def _announce(run: _Run) -> None:
    """The data's notes and a line on what trains where."""
    cfg, data, towers = run.cfg, run.data, run.towers
    for note in data.notes:
        run.note(f"note: {note}")
    trainable = sum(p.numel() for p in run.module.parameters() if p.requires_grad)
    where = f"device {towers[0]} + {towers[1]} (one tower each)" if towers else f"device {run.device}"
    if run.info.enabled:
        where += f", {run.info.world} processes (batch {cfg.batch_size // run.info.world} each)"
    batch = min(cfg.batch_size, data.train_size)  # the loader's (reduced to the training images, when fewer)
    trained = len(data.train) * batch  # full batches only: a last partial one would be a noisier step
    if data.train_size - trained >= 0.05 * data.train_size:
        run.note(f"note: an epoch trains {trained} of the {data.train_size} training images ({len(data.train)} full batches of "
                f"{batch}, others left out each epoch); a smaller --batch-size leaves out fewer")
    name = cfg.model
    if cfg.init_from:  # the network of the checkpoint it started from
        name = f"{describe_model(run.model.config)} of {cfg.init_from}"
    run.log(
        f"training {name} on {data.source}: {data.train_size} train / {data.val_size} val images, "
        f"{len(data.classes)} classes, {trainable:,} trainable parameters, {cfg.epochs} epoch{'s' * (cfg.epochs != 1)}, {where}, "
        f"amp {amp_name(run.amp)} -> {run.run_dir}"
    )


# -- checkpoints ------------------------------------------------------------------------------------
def _state(run: _Run, position: dict[str, Any], rng_ranks: list | None) -> dict[str, Any]:
    """A checkpoint: all a resume needs (see the module docstring), the model as one piece."""
    split, optimizer = run.split, run.optimizer
    return {
        "model": split.grouped_state_dict() if split is not None else run.model.state_dict(),
        "model_config": run.model.config.to_dict(),
        "classes": list(run.data.classes),
        # the class folders the outputs are, whatever names a mapping beside them gave: a resume on
        # the same folders without that file (the data copied elsewhere) is the same classes
        **({"folders": list(run.data.folders)} if run.data.folders is not None else {}),
        "preprocess": run.data.preprocess.state(),  # the mean image a tensor: portable
        "train_config": run.cfg.to_dict(),
        "optimizer": grouped_optimizer_state(split, optimizer) if split is not None else optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "plateau": run.plateau.state_dict(),
        "position": position,
        "history": run.history,
        "best_val_top1": run.best,
        "data": {"train_images": run.data.train_size, "val_images": run.data.val_size},
        # what a held-out validation split was drawn from (loaders.listing), for evaluate on the same folder
        **({"held_out_of": run.data.held_out_of} if run.data.held_out_of else {}),
        "health": run.health.state_dict(),
        "rng": rng_state(),
        **({"rng_ranks": rng_ranks} if rng_ranks is not None else {}),
        "format": FORMAT,
    }


def _checkpoint(run: _Run, *names: str) -> None:
    """Every rank takes part (sums and RNG states are gathered); rank 0 writes."""
    pos = run.pos
    position = dataclasses.asdict(pos)
    sums = distributed.all_reduce_sum([pos.loss_sum, pos.correct, pos.seen])
    position.update(loss_sum=sums[0], correct=int(sums[1]), seen=int(sums[2]))
    rngs = distributed.all_gather_object(rng_state()) if run.info.enabled else None
    if run.info.is_main:
        if run.folder is not None and run.folder.lost():
            _run_folder_again(run, names)
        ckpt = _state(run, position, rngs)
        for name in names:
            _save(ckpt, run.run_dir / name)
        runfolder.drop_replaced(run.run_dir)  # the new run can be resumed now: the run --force replaced goes
        if run.config_pending is not None:  # the checkpoint now holds the resumed run's options
            _update_config_file(run, run.config_pending)
            run.config_pending = None


def _run_folder_again(run: _Run, names: tuple[str, ...]) -> None:
    """The run folder deleted under a run (an ``rm -r`` of old runs that took this one too): made
    again and locked, with config.json and metrics.jsonl of what the run holds, before the
    checkpoint goes in, so that it can be resumed and replayed as before; said in one line. Where
    only its lock file went, the folder is locked again and its files left as they are."""
    whole = (run.run_dir / runfolder.CONFIG_NAME).is_file()
    run.folder.take_again()
    if whole:
        run.note(f"note: {run.run_dir / runfolder.LOCK_NAME} was deleted while this run trained: locked again")
        return
    _write_config(run)
    _write_metrics(run, run.recorded)
    if 0 < run.recorded == len(run.history):  # at an epoch's end its _record draws curves.png right after
        _plot(run.run_dir)
    run.config_pending = None  # config.json now says the options it goes on with
    lost = "" if runfolder.BEST_NAME in names else f"{runfolder.BEST_NAME} of an earlier epoch and "
    run.note(f"warning: {run.run_dir} was deleted while this run trained; made again at step {run.pos.step} with "
             f"{runfolder.CONFIG_NAME}, {runfolder.METRICS_NAME} ({counted(run.recorded, 'epoch')}) and "
             f"{' and '.join(names)}, of what the run holds; {lost}the other files it held are gone")


# -- the loop ---------------------------------------------------------------------------------------
def _on_step(run: _Run, p: Position, stop: bool) -> None:
    """After every optimisation step: Ctrl-C (``stop``, on any rank) saves and stops; ``save_every`` saves."""
    if faults.ACTIVE:  # tests only: ALEXNET_FAULT=kill:step=N, before this step's checkpoint
        faults.reached("step", p.step)
    if stop:
        _checkpoint(run, runfolder.LAST_NAME)
        raise Interrupted(
            f"interrupted at epoch {p.epoch + 1}, step {p.step}; saved {run.run_dir / runfolder.LAST_NAME}; "
            f"continue with: {distributed.resume_command(run.run_dir, run.info)}"
        )
    if run.cfg.save_every and p.step % run.cfg.save_every == 0:
        _checkpoint(run, runfolder.LAST_NAME)


def _epoch(run: _Run, on_step: Callable[[Position, bool], None], ctrl_c: _CtrlC) -> None:
    """One epoch: train, evaluate, the plateau schedule, record, save, log."""
    cfg, data, pos, reduce = run.cfg, run.data, run.pos, distributed.all_reduce_sum
    set_epoch(data.train, pos.epoch, pos.batch)
    started = time.time()
    with _machine_limit_said(run.cfg, run.run_dir, run.info, f"in a training step of epoch {pos.epoch + 1}",
                          f"--batch-size ({cfg.batch_size} now) in a new run"):  # --resume keeps the run's
        stats = train_one_epoch(
            run.net, run.optimizer, data.train, data.preprocess, cfg, run.device, run.amp, run.scaler, pos, run.plateau.scale,
            on_step, run.show_progress, reduce, run.health, lambda: ctrl_c.hit,
        )
    run.health.end_epoch(f"the end of epoch {pos.epoch + 1} (step {pos.step})")  # before anything of it is saved
    _check_trained(stats, pos.epoch)
    trained = time.time()
    with _machine_limit_said(run.cfg, run.run_dir, run.info, f"in the validation of epoch {pos.epoch + 1}",
                          f"--eval-batch-size ({cfg.eval_batch_size} now)", f"--eval-batch-size {max(1, cfg.eval_batch_size // 2)}"):
        val = evaluate(run.eval_net, data.val, data.preprocess, run.device, run.amp, cfg.channels_last, run.show_progress,
                       reduce, len(data.classes))
    record = {"epoch": pos.epoch + 1, "step": pos.step, **stats, **{f"val_{k}": v for k, v in val.items()}}
    # Wall-clock (Unix) times of this process's training phase, and the validation's cost: what
    # a GPU-utilisation trace (benchmarks/end_to_end.py) is cut to.
    record.update(train_start_time=started, train_end_time=trained, val_seconds=time.time() - trained)
    record["elapsed_seconds"] = (run.history[-1]["elapsed_seconds"] if run.history else 0.0) + stats["train_seconds"]
    event = None
    if cfg.schedule == "plateau":
        # the scale this epoch ran with: a reduction that its validation error triggers is the next epoch's
        record["lr_scale"] = as_typed(run.plateau.scale)
        event = run.plateau.step(val["top1_error"])
    run.history.append(record)
    improved = val["top1"] > run.best
    run.best = max(run.best, val["top1"])
    run.pos = Position(epoch=pos.epoch + 1, step=pos.step)
    # best.pt first: last.pt is what a resume starts from, so a kill between the two writes
    # repeats the epoch (and writes best.pt again) instead of losing its best.pt.
    _checkpoint(run, *([runfolder.BEST_NAME] if improved else []), runfolder.LAST_NAME)
    if run.info.is_main:
        _record(run.run_dir, run.metrics_path, record, run.writer)
    run.recorded = len(run.history)
    run.log(
        f"epoch {record['epoch']}/{cfg.epochs}  loss {stats['train_loss']:.4f}  "
        f"val top-1 {val['top1']:.4f}  top-5 {val['top5']:.4f}  "
        f"{stats['images_per_second']:.0f} img/s  {record['elapsed_seconds']:.0f}s"
        + (f"  ({stats['skipped_batches']} batches skipped)" if stats["skipped_batches"] else "")
    )
    _say_blind(run, val)
    if event == "reduce":  # after the epoch's line: the epoch it follows ran at the old rate
        stalled = f"{cfg.plateau_patience} epoch" + "s" * (cfg.plateau_patience != 1)
        then = f"from epoch {record['epoch'] + 1}" if record["epoch"] < cfg.epochs else "if resumed for more epochs"
        run.log(f"validation error stalled for {stalled}: lr x 0.1 {then} (reduction {run.plateau.reductions})")
    elif event == "stop":
        run.log(f"validation error stalled after {counted(run.plateau.reductions, 'reduction')}: stopping")
    if distributed.any_rank(ctrl_c.hit):
        raise Interrupted(f"interrupted after epoch {record['epoch']}; continue with: "
                          + distributed.resume_command(run.run_dir, run.info))


@contextlib.contextmanager
def _machine_limit_said(cfg: TrainConfig, run_dir: Path, info: distributed.DistInfo, doing: str, lower: str | None = None,
                        resume_with: str = "") -> Iterator[None]:
    """A limit of the machine met ``doing`` what the block does (errors.machine_limit: memory that ran
    out, and ``lower``, the option that asks for less; a data-loading worker that died) as one line,
    with the --resume line (and ``resume_with``, options a resume may change) that the run folder adds
    where it keeps a checkpoint (runfolder.RunFolder). Nothing is saved: the last checkpoint stays the
    last good one. Any other error goes on as it is."""
    try:
        yield
    except DataGone as e:  # once it is back, the run goes on
        e.resume = distributed.resume_command(run_dir, info)
        raise
    except (RuntimeError, MemoryError) as e:
        workers = cfg.workers
        error = machine_limit(e, doing, lower, f"--workers ({workers} now)" if workers else None)
        if error is None or error is e:
            raise
        if workers and error.workers_memory:  # fewer workers ask for less; none use /dev/shm
            resume_with = f"--workers {0 if error.shared_memory else workers // 2}"
        error.resume = " ".join(filter(None, [distributed.resume_command(run_dir, info), resume_with]))
        e.__traceback__ = None  # frees the step's frames and their tensors (a GPU's memory) for a caller that goes on
        raise error from None


def _say_blind(run: _Run, val: dict[str, float]) -> None:
    """A warning, once a run, the first epoch whose validation gave every image the same class: such
    a network does not tell images apart (its top-1 is that class's share: chance on balanced data),
    which neither a diverged loss nor dead ReLUs (the health monitor's checks) shows. The paper's
    fixed 0.01 init below 224 px gave every image of imagewoof-mini one class for 10 epochs at 63 px
    (docs/training.md, 'Quick tries'); some recipes take a few epochs to leave it. Said under
    --health stop and warn, not off."""
    if run.said_blind or run.cfg.health == "off" or val.get("classes_predicted") != 1 or val.get("classes_present", 2) < 2:
        return
    run.said_blind = True
    run.note(f"warning: epoch {run.pos.epoch}'s validation gave every one of its {val['images']} images the same class: the "
            "network does not tell images apart yet; if it lasts, the recipe does not fit this data (docs/training.md, "
            "'Quick tries at small input sizes': another --preset, a lower --lr, a larger input)")


def _check_trained(stats: dict[str, float], epoch: int) -> None:
    """NonFiniteLoss for an epoch whose every batch ``--on-nonfinite skip`` skipped: no step was
    taken, and its figures (train loss 0 over 0 images) would pass for a perfect epoch while the
    run goes on "done" without ever training. Skipping is for the odd bad batch, not a diverged run."""
    if stats["train_images"] == 0 and stats["skipped_batches"] > 0:
        raise NonFiniteLoss(
            f"every batch of epoch {epoch + 1} ({stats['skipped_batches']}) had a non-finite loss and was skipped "
            "(--on-nonfinite skip): nothing was trained; lower --lr or try --amp none"
        )


def _record(run_dir: Path, metrics_path: Path, record: dict[str, Any], writer: Any) -> None:
    """An epoch's metrics to metrics.jsonl, TensorBoard and curves.png."""
    _append_line(metrics_path, json.dumps(record))
    if writer is not None:
        for k, v in record.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                writer.add_scalar(k, v, record["epoch"])
        writer.flush()
    _plot(run_dir)


def _append_line(path: Path, line: str) -> None:
    """``line`` and a newline at the end of ``path``. A failed write (a full disk) names the file,
    which Python's error on flushing does not ('alexnet: error: No space left on device'), and cuts
    the file back to its last whole line (a resume rewrites it from the checkpoint's history)."""
    size = path.stat().st_size if path.exists() else 0
    try:
        with path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError as e:
        with contextlib.suppress(OSError):
            os.truncate(path, size)
        raise TrainingError(f"could not write {path}: {e.strerror or e}") from None


def _summary_writer() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter


def _tensorboard(run_dir: Path):
    return _summary_writer()(str(run_dir / runfolder.TENSORBOARD_NAME))


def _plot(run_dir: Path) -> None:
    """curves.png beside metrics.jsonl, when the plotting module is available."""
    try:
        from .figures import plot_curves
    except ImportError:
        return
    plot_curves(run_dir)


def default_run_dir(model: str) -> Path:
    """Where a run goes without --out: runs/DATE-TIME-MODEL."""
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{model}"


