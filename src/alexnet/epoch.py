"""One epoch of training and one validation pass: the phase functions of a run.

:func:`train_one_epoch` trains from a :class:`Position` to the end of its epoch and :func:`evaluate`
scores a loader's centre crops; both sum their figures over the ranks of a distributed run through
``reduce``. :func:`alexnet.train.fit` runs them epoch after epoch, with the checkpoints, the
schedule and the run folder's files.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from . import faults
from .config import TrainConfig
from .data.loaders import model_input
from .data.presets import Preprocess
from .errors import DataError, NonFiniteLoss
from .evaluate import score, summarize
from .health import HealthMonitor
from .optim import step_lr_factor
from .runtime import autocast, progress


@dataclass
class Position:
    """Where a run stands: what a resume needs besides weights and optimiser state."""

    epoch: int = 0  # the current epoch (0-based)
    batch: int = 0  # batches of this epoch already done
    step: int = 0  # optimisation steps of the whole run
    loss_sum: float = 0.0  # running sums of the current epoch
    correct: int = 0
    seen: int = 0
    skipped: int = 0  # batches skipped for a non-finite loss (on_nonfinite="skip")
    seconds: float = 0.0


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Any,
    preprocess: Preprocess,
    cfg: TrainConfig,
    device: torch.device,
    amp: torch.dtype | None,
    scaler: Any,
    pos: Position,
    lr_scale: float = 1.0,
    on_step: Callable[[Position, bool], None] | None = None,
    show_progress: bool | None = None,
    reduce: Callable[[list[float]], list[float]] = list,
    health: HealthMonitor | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> dict[str, float]:
    """Train from ``pos`` to the end of the epoch ``pos.epoch``; ``pos`` is updated in place.

    ``on_step(pos, stop)`` runs after every optimisation step (mid-epoch checkpoints); ``stop`` is
    true when ``stop_requested()`` (Ctrl-C) was true on any rank before the step. ``reduce`` sums
    numbers over the ranks of a distributed run (:func:`alexnet.distributed.all_reduce_sum`), so that
    every rank skips the same batches and the returned figures cover the whole data. ``health``
    stops (or warns about) a run whose loss diverged or whose ReLUs died, before the step is taken.
    The host waits for the device once per step (:func:`_forward`).
    """
    health = health or HealthMonitor(None, 2, "off")
    model.train()
    steps_per_epoch = len(loader)
    t0 = time.perf_counter() - pos.seconds
    bar = progress(
        loader, total=steps_per_epoch - pos.batch, desc=f"epoch {pos.epoch + 1}/{cfg.epochs}", enabled=show_progress, unit="batch"
    )
    seen_all = pos.seen  # every rank's images for the bar (_show_step); rank 0 resumes with the whole run's
    for batch in bar:
        share, step_images = _share(batch, reduce)
        if share is None:
            pos.batch += 1
            continue
        images, labels, index = (t.to(device, non_blocking=True) for t in batch)
        x = model_input(images, index, preprocess, True, cfg.seed, pos.epoch, cfg.channels_last)
        # the schedule follows the run's place in its data, not the steps taken: a batch skipped for a
        # non-finite loss (or unreadable) took none, and each one delayed every later rate by a step
        _set_lr(optimizer, cfg, pos.epoch * steps_per_epoch + pos.batch, steps_per_epoch, lr_scale)
        health.before_step()
        loss, value, correct = _forward(model, x, labels, cfg.label_smoothing, device, amp)
        optimizer.zero_grad(set_to_none=True)
        take, stop = _take_step(value, cfg, pos, reduce, health, stop_requested())
        if not take:
            continue
        _step(scaler, optimizer, loss, share)
        _count(pos, value, int(correct), labels.numel(), t0)
        seen_all += step_images
        _show_step(bar, pos, seen_all, optimizer)
        if on_step is not None:
            on_step(pos, stop)
    _time_last_step(device, pos, t0)
    return _epoch_figures(optimizer, pos, reduce)


def _step(scaler: Any, optimizer: torch.optim.Optimizer, loss: torch.Tensor, share: float) -> None:
    """Backpropagate ``loss``, weighted by this rank's ``share`` of the global batch, and step the
    optimiser through the AMP scaler."""
    scaler.scale(loss if share == 1.0 else loss * share).backward()
    scaler.step(optimizer)
    scaler.update()


def _time_last_step(device: torch.device, pos: Position, t0: float) -> None:
    """On a GPU, the last step's backward and update count in the epoch's time: the host waits for them."""
    if device.type == "cuda" and pos.seen:
        torch.cuda.synchronize(device)
        pos.seconds = time.perf_counter() - t0


def _forward(
    model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, smoothing: float, device: torch.device, amp: torch.dtype | None
) -> tuple[torch.Tensor, float, float]:
    """The batch's loss (float32, to backpropagate), its value and the number of images right.

    The host waits for the device here, once per step (twice in a distributed run: a collective
    before the forward pass agrees on unreadable batches): the loss, checked before the step, is read
    together with the batch's correct count, so that the host reads the next batch and queues its
    work while the device still runs this step's backward pass (nvJPEG waits for it unless
    ALEXNET_DECODE_OVERLAP=1: :mod:`alexnet.data.device_decode`)."""
    with autocast(device, amp):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
    # float64 holds both exactly: the float32 loss and a count
    value, correct = torch.stack([loss.detach().double(), (logits.argmax(1) == labels).sum().double()]).tolist()
    return loss, value, correct


def _show_step(bar: Any, pos: Position, seen_all: int, optimizer: torch.optim.Optimizer) -> None:
    """The bar's running loss; img/s over every rank's images, as the epoch's line counts them (over
    this rank's, rank 0 of a 2-process run showed half the rate); and lr: the schedule's rate, as
    metrics.jsonl records it, not the first group's, which carries its layers' --lr-mult (with
    conv1=0 the bar showed lr=0 while every other layer trained at --lr)."""
    bar.set_postfix(loss=f"{pos.loss_sum / pos.seen:.3f}", img_s=f"{seen_all / max(pos.seconds, 1e-9):.0f}",
                    lr=f"{_schedule_lr(optimizer):.2g}")


def _share(batch: Any, reduce: Callable[[list[float]], list[float]]) -> tuple[float | None, int]:
    """The factor of this rank's loss: its share of the step's images times the number of ranks (1 in
    one process, and for even shares); None when a rank's whole batch was unreadable (every rank
    skips it, or DDP would wait for the one that did). With it, the step's images on all ranks.

    DDP averages the ranks' gradients of their mean losses: with uneven shares of a batch (an odd
    batch reduced to a small data set's size, unreadable images dropped) that weighs the images of
    the smaller share more. Scaled so, the step is the gradient of the whole batch's mean loss, as
    in one process. One collective answers both."""
    mine = 0 if batch is None else len(batch[1])
    missing, images_all, ranks = reduce([float(batch is None), float(mine), 1.0])
    return (None if missing > 0 else mine * ranks / images_all), int(images_all)


def _set_lr(optimizer: torch.optim.Optimizer, cfg: TrainConfig, step: int, steps_per_epoch: int, lr_scale: float) -> None:
    """The learning rate of step ``step``: the schedule's, times ``lr_scale`` and each group's ``lr_mult``."""
    factor = lr_scale * step_lr_factor(
        cfg.schedule, step, steps_per_epoch, cfg.epochs, cfg.warmup_epochs, cfg.step_size, cfg.gamma
    )
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * factor * group.get("lr_mult", 1.0)


def _take_step(
    value: float,
    cfg: TrainConfig,
    pos: Position,
    reduce: Callable[[list[float]], list[float]],
    health: HealthMonitor,
    stop: bool,
) -> tuple[bool, bool]:
    """Whether the batch whose loss is ``value`` gets its step (False for a non-finite loss under
    ``on_nonfinite="skip"``, counted in ``pos``; raises for one otherwise, or for what ``health``
    stops), and whether any rank asked to ``stop`` after it."""
    # One collective for what every rank must agree on: a non-finite loss anywhere, the mean
    # loss, Ctrl-C and dead layers (all ranks act alike, or DDP would wait for the one that stopped).
    flags = reduce([float(not math.isfinite(value)), 1.0, value if math.isfinite(value) else 0.0, float(stop), *health.dead_flags()])
    if flags[0] > 0:
        if cfg.on_nonfinite == "skip":
            pos.skipped += 1
            pos.batch += 1
            return False, False  # a Ctrl-C is seen at the next step, or at the epoch's end
        # this rank's own loss may be finite: another rank's was not
        which = f"({value})" if not math.isfinite(value) else f"on {flags[0]:.0f} of the {flags[1]:.0f} processes"
        raise NonFiniteLoss(
            f"non-finite loss {which} at epoch {pos.epoch + 1}, step {pos.step + 1}: the weights were not "
            "updated; lower --lr, try --amp none, or pass --on-nonfinite skip"
        )
    health.check(flags[2] / flags[1], flags[4:], f"epoch {pos.epoch + 1}, step {pos.step + 1}")
    return True, flags[3] > 0


def _count(pos: Position, value: float, correct: int, n: int, t0: float) -> None:
    """A step taken on ``n`` images: its batch into the position and the epoch's running sums."""
    pos.step += 1
    pos.batch += 1
    pos.loss_sum += value * n
    pos.correct += correct
    pos.seen += n
    pos.seconds = time.perf_counter() - t0


def _epoch_figures(
    optimizer: torch.optim.Optimizer, pos: Position, reduce: Callable[[list[float]], list[float]]
) -> dict[str, float]:
    """What :func:`train_one_epoch` returns: the epoch's figures over all ranks."""
    loss_sum, correct, seen = reduce([pos.loss_sum, pos.correct, pos.seen])
    seen, skipped = int(seen), pos.skipped  # every rank skipped the same batches
    return {
        "train_loss": loss_sum / max(1, seen),
        "train_top1": correct / max(1, seen),
        "train_images": seen,
        "train_seconds": pos.seconds,
        "images_per_second": seen / max(pos.seconds, 1e-9),
        "skipped_batches": skipped,
        "lr": _schedule_lr(optimizer),
    }


def _schedule_lr(optimizer: torch.optim.Optimizer) -> float:
    """The schedule's learning rate (without the layers' multipliers), read off a group whose
    ``lr_mult`` is not 0: ``--lr-mult conv1=0`` is allowed, and its group (sorted first) holds lr 0,
    which divided by its multiplier raised ZeroDivisionError at the end of the first epoch. With
    every multiplier 0 no layer learns, and 0 is the rate."""
    group = next((g for g in optimizer.param_groups if g.get("lr_mult", 1.0) != 0), None)
    return 0.0 if group is None else as_typed(group["lr"] / group.get("lr_mult", 1.0))


def as_typed(value: float) -> float:
    """A recorded rate as a person types it: 15 significant digits drop the noise that float products
    compound (0.01 x 0.1 x 0.1 is 0.00010000000000000002; 0.05 x 0.2 / 0.2 is 0.05000000000000001),
    a part in 1e15 of the rate. The rate applied is left as it is: runs stay what they were, bit for bit."""
    return float(f"{value:.15g}")


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: Any,
    preprocess: Preprocess,
    device: torch.device,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    show_progress: bool | None = None,
    reduce: Callable[[list[float]], list[float]] = list,
    classes: int = 0,
) -> dict[str, float]:
    """Top-1/top-5 accuracy, error and mean loss over ``loader`` (centre crops); ``reduce`` sums the
    counts over the ranks of a distributed run, each of which saw its share of ``loader``. With the
    number of ``classes``, also ``classes_predicted``: how many of them are some image's top-1 (one:
    a network that gives every image the same answer, :func:`alexnet.train._say_blind`), and ``classes_present``:
    how many are some image's true class (one: that answer may be right)."""
    model.eval()
    loss_sum, c1, c5, n = 0.0, 0, 0, 0
    predicted = torch.zeros(2, classes, dtype=torch.int64, device=device)  # answers, true classes: read once, at the end
    for batch in progress(loader, total=len(loader), desc="evaluate", enabled=show_progress, unit="batch"):
        if batch is None or len(batch[1]) == 0:  # unreadable images, or a rank's empty share of a last batch
            continue
        images, labels, index = (t.to(device, non_blocking=True) for t in batch)
        x = model_input(images, index, preprocess, False, channels_last=channels_last)
        with autocast(device, amp):
            logits = model(x).float()
        nll, k1, k5, pred = score(F.log_softmax(logits, dim=1), labels)
        loss_sum, c1, c5, n = loss_sum + nll, c1 + k1, c5 + k5, n + labels.numel()
        if classes:
            predicted[0] += torch.bincount(pred, minlength=classes)[:classes]
            predicted[1] += torch.bincount(labels, minlength=classes)[:classes]
        if faults.ACTIVE:  # tests only: ALEXNET_FAULT=kill:eval=K
            faults.reached("eval")
    # one list, so that every rank joins the same collectives whatever its share held
    totals = reduce([loss_sum, c1, c5, n, *predicted.flatten().tolist()])
    try:
        out = summarize(*totals[:4])
    except DataError as e:  # its 0.0000 accuracy would be kept as the run's best
        raise DataError(f"validation: {e}") from None
    if classes:
        out["classes_predicted"] = sum(1 for c in totals[4 : 4 + classes] if c > 0)
        out["classes_present"] = sum(1 for c in totals[4 + classes :] if c > 0)
    return out
