"""What a checkpoint must hold to be resumed, checked before the resume writes anything.

A ``last.pt`` damaged by hand, by another tool or by another version failed deep in the resumed
run: a KeyError in the RNG restore, a segfault of the fused SGD on a momentum buffer of another
shape, after config.json and metrics.jsonl had been rewritten; or it trained on at exit 0 from a
nonsense position (epoch -1, batch 10**6). Each part of the training state is checked here
against what the run is (its optimiser's parameters, its data's batches per epoch): the first
fault is one :class:`CheckpointError` naming the part and what it holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from .checks import is_finite, is_whole
from .data.presets import Preprocess
from .errors import CheckpointError, DataError, nonfinite
from .runtime import rng_state, set_rng_state

POSITION_COUNTS = ("epoch", "batch", "step", "correct", "seen", "skipped")
POSITION_SECONDS = ("loss_sum", "seconds")
PLATEAU_KEYS = frozenset({"best", "bad_epochs", "reductions", "scale", "stop"})
HISTORY_NEEDS = ("epoch", "elapsed_seconds", "val_top1")  # what the run and its curves read back


class _Damaged(Exception):
    """One fault of the training state, said as the part and what is wrong with it."""


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise _Damaged(what)


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {list(value.shape)}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_training_state(
    ckpt: Mapping[str, Any], source: str, optimizer_state: Any, optimizer: torch.optim.Optimizer,
    steps_per_epoch: int, epochs: int,
) -> None:
    """CheckpointError naming ``source`` unless ``ckpt``'s training state fits the run resuming it.

    ``optimizer_state`` is the saved optimiser state as it will be loaded into ``optimizer`` (the
    towers' split already applied); ``steps_per_epoch`` the batches of an epoch of the data now;
    ``epochs`` the run's length."""
    try:
        _history(ckpt.get("history"), _position(ckpt.get("position"), steps_per_epoch, epochs))
        best = ckpt.get("best_val_top1")
        _need(is_finite(best) and (best == -1 or 0 <= best <= 1), f"best_val_top1 is {_short(best)}, not a fraction from 0 to 1")
        _plateau(ckpt.get("plateau"))
        _optimizer(optimizer_state, optimizer)
        _numbers(ckpt.get("scaler"), "scaler")
        _health(ckpt.get("health"))
        _numbers(ckpt.get("data"), "data")
        _rng_states(ckpt)
        recipe = ckpt.get("preprocess")
        if recipe is not None:  # only its changes are read back (resume.note_changes), but a wreck is one
            Preprocess.from_dict(recipe, source=source)
    except DataError as e:
        raise CheckpointError(str(e)) from None
    except _Damaged as e:
        raise CheckpointError(f"{source}: damaged training state: {e}") from None


def _position(position: Any, steps_per_epoch: int, epochs: int) -> int:
    """The epoch the saved position is in, once every count of it is checked."""
    _need(isinstance(position, dict), f"position is {_short(position)}, not a table")
    unknown = sorted(set(position) - set(POSITION_COUNTS) - set(POSITION_SECONDS), key=str)
    _need(not unknown, f"position has unknown entries: {', '.join(map(str, unknown))}")
    for name in POSITION_COUNTS:
        _need(is_whole(position.get(name, 0), 0), f"position {name} is {_short(position.get(name))}, not a whole number >= 0")
    for name in POSITION_SECONDS:
        value = position.get(name, 0.0)
        _need(is_finite(value) and value >= 0, f"position {name} is {_short(value)}, not a finite number >= 0")
    _need(position.get("correct", 0) <= position.get("seen", 0), "position counts more correct answers than images seen")
    epoch, batch = position.get("epoch", 0), position.get("batch", 0)
    _need(epoch <= epochs, f"position epoch {epoch} is beyond the run's {epochs} epochs")
    _need(batch <= steps_per_epoch, f"position batch {batch} is beyond the {steps_per_epoch} batches of an epoch of the data")
    return epoch


def _history(history: Any, epoch: int) -> None:
    """One record per epoch done, each a table of plain values with what is read back."""
    _need(isinstance(history, list), f"history is {_short(history)}, not a list of epoch records")
    _need(len(history) == epoch, f"history holds {len(history)} epoch records but its position is after epoch {epoch}")
    for i, record in enumerate(history):
        _need(isinstance(record, dict), f"history record {i + 1} is {_short(record)}, not a table")
        missing = [k for k in HISTORY_NEEDS if not (is_finite(record.get(k)))]
        _need(not missing, f"history record {i + 1} has no number for {', '.join(missing)}")
        odd = [k for k, v in record.items() if not isinstance(k, str) or not isinstance(v, (str, int, float, bool, type(None)))]
        if odd:
            raise _Damaged(f"history record {i + 1} holds {_short(record[odd[0]])} under {odd[0]!r}, not a plain value")
        _need(record["epoch"] == i + 1, f"history record {i + 1} says epoch {record['epoch']}")


def _plateau(state: Any) -> None:
    _need(isinstance(state, dict), f"plateau is {_short(state)}, not a table")
    unknown = sorted(set(state) - PLATEAU_KEYS, key=str)
    _need(not unknown, f"plateau has unknown entries: {', '.join(map(str, unknown))}")
    for name in ("bad_epochs", "reductions"):
        _need(is_whole(state.get(name, 0), 0), f"plateau {name} is {_short(state.get(name))}, not a whole number >= 0")
    best, scale = state.get("best", math.inf), state.get("scale", 1.0)
    _need(isinstance(best, (int, float)) and not isinstance(best, bool) and not math.isnan(best),
          f"plateau best is {_short(best)}, not a number")
    _need(is_finite(scale) and 0 < scale <= 1, f"plateau scale is {_short(scale)}, not a number in (0, 1]")
    _need(isinstance(state.get("stop", False), bool), f"plateau stop is {_short(state.get('stop'))}, not true or false")


def _optimizer(state: Any, optimizer: torch.optim.Optimizer) -> None:
    """The saved groups' settings of the kinds the optimiser has; each parameter's state tensors of
    its parameter's shape, floating point and finite (a buffer of another shape crashed the fused SGD)."""
    _need(isinstance(state, dict) and isinstance(state.get("state"), dict) and isinstance(state.get("param_groups"), list),
          "optimizer is not a table of state and param_groups")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, (saved, now) in enumerate(zip(state["param_groups"], optimizer.param_groups)):
        _need(isinstance(saved, dict), f"optimizer param group {i} is {_short(saved)}, not a table")
        for key, value in saved.items():
            wanted = _unlike(value, now[key]) if key != "params" and key in now else None
            _need(wanted is None, f"optimizer param group {i}'s {key} is {_short(value)}, not {wanted}")
    for index, entry in state["state"].items():
        _need(is_whole(index, 0) and index < len(params) and isinstance(entry, dict),
              f"optimizer state has an entry {_short(index)} for none of its {len(params)} parameters")
        for key, value in entry.items():
            where = f"optimizer state {key} of parameter {index}"
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                shape = list(params[index].shape)
                _need(list(value.shape) == shape, f"{where} is {_short(value)}, but the parameter is {shape}")
                _need(value.is_floating_point(), f"{where} is {_short(value)}, not floating point")
                _need(nonfinite(value) == 0, f"{where} holds NaN or inf")  # chunked: momentum is as large as fc6
            elif isinstance(value, torch.Tensor):
                _need(bool(torch.isfinite(value.double())), f"{where} holds NaN or inf")
            else:
                _need(value is None or is_finite(value), f"{where} is {_short(value)}, not a tensor or number")


def _unlike(saved: Any, now: Any) -> str | None:
    """What a saved optimiser setting should have been, where the optimiser has ``now``; None if it is."""
    if now is None or isinstance(now, bool):  # foreach, fused: unset or a flag, by device and torch version
        return None if saved is None or isinstance(saved, bool) else "true, false or null"
    if isinstance(now, str):
        return None if isinstance(saved, str) else "a string"
    if isinstance(now, (int, float)):
        return None if is_finite(saved) else "a finite number"
    if isinstance(now, (tuple, list)):
        fits = isinstance(saved, (tuple, list)) and len(saved) == len(now) and all(map(is_finite, saved))
        return None if fits else f"{len(now)} finite numbers"
    return None  # tensors (a capturable lr): torch checks them


def _numbers(state: Any, name: str) -> None:
    """None or a table of finite numbers (the AMP scaler's state; the data's image counts)."""
    if state is None:
        return
    _need(isinstance(state, dict), f"{name} is {_short(state)}, not a table")
    for key, value in state.items():
        _need(is_finite(value) and value >= 0, f"{name} {key} is {_short(value)}, not a number >= 0")


def _health(state: Any) -> None:
    if not state:  # older checkpoints hold none
        return
    _need(isinstance(state, dict), f"health is {_short(state)}, not a table")
    _need(is_whole(state.get("step"), 0), f"health step is {_short(state.get('step'))}, not a whole number >= 0")
    losses, warned, first = state.get("losses"), state.get("warned", []), state.get("first")
    _need(isinstance(losses, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in losses),
          f"health losses is {_short(losses)}, not a list of numbers")
    _need(isinstance(warned, list) and all(isinstance(x, str) for x in warned), f"health warned is {_short(warned)}, not a list of names")
    _need(first is None or (isinstance(first, (int, float)) and not isinstance(first, bool)),
          f"health first is {_short(first)}, not a number")


def _rng_states(ckpt: Mapping[str, Any]) -> None:
    """Each saved RNG state of the forms ``runtime.rng_state`` writes, and one that each generator
    takes: tried on this process's generators, which are put back as they were."""
    ranks = ckpt.get("rng_ranks")
    _need(ranks is None or isinstance(ranks, list), f"rng_ranks is {_short(ranks)}, not a list of states")
    for i, state in [(None, ckpt.get("rng"))] + list(enumerate(ranks or [])):
        name = "rng" if i is None else f"rng_ranks[{i}]"
        _need(isinstance(state, dict), f"{name} is {_short(state)}, not a table of random-number states")
        python, numpy_state, cpu = state.get("python"), state.get("numpy"), state.get("torch")
        _need(isinstance(python, (list, tuple)) and all(is_whole(x, 0) for x in python), f"{name} python is not a list of whole numbers")
        _need(isinstance(numpy_state, torch.Tensor) and numpy_state.dtype == torch.int64 and list(numpy_state.shape) == [624],
              f"{name} numpy is {_short(numpy_state)}, not an int64 tensor of 624 words")
        gauss = state.get("python_pos")  # random's next Gaussian, when it holds one
        _need(gauss is None or is_finite(gauss), f"{name} python_pos is {_short(gauss)}, not null or a number")
        _need(is_whole(state.get("numpy_pos"), 0) and state["numpy_pos"] <= 624, f"{name} numpy_pos is {_short(state.get('numpy_pos'))}")
        _need(isinstance(cpu, torch.Tensor) and cpu.dtype == torch.uint8, f"{name} torch is {_short(cpu)}, not a uint8 tensor")
        cuda = state.get("cuda", [])
        _need(isinstance(cuda, (list, tuple)) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda),
              f"{name} cuda is not a list of uint8 tensors")
        _try_rng(state, name)


def _try_rng(state: Mapping[str, Any], name: str) -> None:
    """Set the generators to ``state`` and back (runtime's own functions): a state of the wrong size
    fails here, not mid-resume."""
    before = rng_state()
    try:
        set_rng_state(state)
    except (TypeError, ValueError, RuntimeError) as e:
        raise _Damaged(f"{name} is not a state its generators take ({' '.join(str(e).split())})") from None
    finally:
        set_rng_state(before)
