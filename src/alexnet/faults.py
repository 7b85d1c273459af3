"""Fault injection: ``ALEXNET_FAULT`` makes the process fail at one exact moment (mostly: SIGKILL itself).

Crash-safety tests (tests/test_resume.py) kill a training run and check that ``--resume`` ends
bitwise where the uninterrupted run ends. A kill timed by the clock lands somewhere different on
every machine and every run; a kill named in advance is reproducible. Values:

``kill:step=N``
    right after optimisation step N of the run (``Position.step``, counted from the run's start),
    before that step's mid-epoch checkpoint (``--save-every``) is written.
``kill:eval=K``
    inside an evaluation pass of ``alexnet train``: after the K-th evaluation batch this process
    ran (counted over all its passes, so K picks the epoch too).
``kill:load=N``
    in each data-loading worker process (not in the main process): when it loads its N-th image of
    a folder or batch of a packed folder, counted over its life (workers of ``alexnet train`` live
    for the run), as the kernel's SIGKILL for want of memory would strike it.
``rmtemp:load=N``
    in each data-loading worker process: at its N-th load (as ``kill:load``), it deletes its
    multiprocessing folder under TMPDIR (``pymp-...``, where the socket lies through which it hands
    over its batches) and goes on, as a cleaner of old files in /tmp would while the command runs.
``kill:write`` or ``kill:write=N``
    inside the N-th checkpoint write of this process (default 1; ``save_atomic``, so ``last.pt`` and
    ``best.pt`` each count): after half of the checkpoint is in its temporary file, before the
    rename, as a crash or a full disk would leave it.

Before dying the process prints ``ALEXNET_FAULT: killed at ...`` to stderr. Unset or empty (the
normal case), nothing happens: each fault point costs one check of :data:`ACTIVE`. A malformed
value stops the run at the first fault point with a one-line ConfigError, so that a typo cannot
pass for a run that survived.
"""

from __future__ import annotations

import io
import os
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from .errors import ConfigError

ENV = "ALEXNET_FAULT"
WHERE = ("step", "eval", "load", "write")
_SPEC = re.compile(r"^(kill|rmtemp):(step|eval|load|write)(?:=(\d+))?$")


@dataclass(frozen=True)
class Fault:
    """Kill the process when fault point ``where`` is reached for the ``at``-th time (or at step ``at``);
    or, ``action`` "rmtemp", delete its multiprocessing folder then."""

    where: str
    at: int
    error: str | None = None  # a malformed ALEXNET_FAULT: raised at the first fault point
    action: str = "kill"


def parse(text: str) -> Fault | None:
    """The fault that ``text`` (an ALEXNET_FAULT value) names; None for an empty value."""
    text = text.strip()
    if not text:
        return None
    m = _SPEC.match(text)
    if m is None or (m.group(3) is None and m.group(2) != "write") or (m.group(3) is not None and int(m.group(3)) < 1) \
            or (m.group(1) == "rmtemp" and m.group(2) != "load"):
        return Fault("", 0, f"{ENV}={text!r}: expected kill:step=N, kill:eval=K, kill:load=N, kill:write[=N] or "
                            "rmtemp:load=N (N, K >= 1)")
    return Fault(m.group(2), int(m.group(3) or 1), action=m.group(1))


ACTIVE: Fault | None = parse(os.environ.get(ENV, ""))
_counts: dict[str, int] = {}


def arm(text: str | None) -> None:
    """Set (or with None, clear) the fault of this process, as ALEXNET_FAULT would; counts restart."""
    global ACTIVE
    ACTIVE = parse(text or "")
    _counts.clear()


def reached(where: str, value: int | None = None, before: Callable[[], Any] | None = None) -> None:
    """Fault point ``where``: SIGKILL this process if it is the armed moment.

    ``value`` is the moment's own number (the run's step); without it this process's count of
    ``where`` is used. ``before`` runs just before the kill (the partial checkpoint write). Callers
    check ``if faults.ACTIVE:`` first, so that an unarmed run pays only that check.
    """
    fault = ACTIVE
    if fault is None:
        return
    if fault.error is not None:
        raise ConfigError(fault.error)
    if fault.where != where or (where == "load" and not _in_worker()):
        return
    if value is None:
        value = _counts[where] = _counts.get(where, 0) + 1
    if value == fault.at and fault.action == "rmtemp":
        remove_temp_dir(f"{where} {value}")
    elif value == fault.at:
        if before is not None:
            before()
        kill(f"{where} {value}")


def _in_worker() -> bool:
    """Whether this process is a DataLoader's worker."""
    import torch.utils.data

    return torch.utils.data.get_worker_info() is not None


def kill(moment: str) -> None:
    """Say where, then SIGKILL this process: no handler, no ``finally``, no atexit runs."""
    print(f"{ENV}: killed at {moment}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    if hasattr(signal, "SIGKILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)  # no SIGKILL (Windows): the closest thing, an exit that runs no cleanup


def remove_temp_dir(moment: str) -> None:
    """Delete this process's multiprocessing folder (its sockets) and say so; the process goes on."""
    import multiprocessing.util
    import shutil

    folder = multiprocessing.util.get_temp_dir()
    shutil.rmtree(folder, ignore_errors=True)
    print(f"{ENV}: removed {folder} at {moment}", file=sys.stderr, flush=True)


def write_half(obj: Any, f: BinaryIO) -> None:
    """Write the first half of ``torch.save(obj)`` to ``f`` and make it durable: a partial file."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    os.fsync(f.fileno())
