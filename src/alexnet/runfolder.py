"""A run folder holds one run: claimed with a lock, refused when taken, cleaned after a failed start.

``alexnet train`` claims its folder (``--out``) before it writes anything there:

- a new run into a folder that already holds a run (``config.json``, ``metrics.jsonl``, ``*.pt``)
  is refused unless ``force``, which replaces that run's own files (and nothing else). The old run
  is set aside (``RUN/.replaced-run``) until the new one has written its first checkpoint, and put
  back if it fails before: a forced run that cannot start loses nothing. A forced run killed before
  its first checkpoint (SIGKILL, a power cut) leaves it set aside; the next claim of the folder puts
  it back (:func:`settle`);
- an advisory lock (``flock`` on ``RUN/.lock``) keeps a second process out for the whole run; the
  kernel drops it when the process ends, killed or not, so a killed run can be resumed at once;
- leftover temporaries of :func:`alexnet.checkpoint.save_atomic` (a killed writer's) are removed;
- a new run that fails before its first checkpoint removes what it created, so no half-made run
  folder misleads anyone; after a checkpoint, or on Ctrl-C, everything is kept for ``--resume``.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from types import TracebackType

from . import jsonio
from .atomic import check_writable
from .data.folder import BAD_FILES_NAME
from .errors import AlexNetError, DataGone, MachineLimit, TrainingError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the other checks still hold
    fcntl = None  # type: ignore[assignment]

# The names of a run's files (README lists them), one each: train writes them all, others read them.
LOCK_NAME = ".lock"
CONFIG_NAME = "config.json"  # the resolved options: read by resume (threads), figures (planned epochs) and here
METRICS_NAME = "metrics.jsonl"  # a run's record, a JSON line per epoch: written by train, read by figures and here
CURVES_NAME = "curves.png"  # metrics.jsonl drawn by figures.plot_curves, for train after each epoch
LAST_NAME = "last.pt"  # the checkpoint of the step reached, training state and all: what --resume RUN reads
BEST_NAME = "best.pt"  # the checkpoint of the best val top-1 so far: written before last.pt (train._epoch)
TENSORBOARD_NAME = "tensorboard"  # a folder: --tensorboard's event files
_MARKS = (CONFIG_NAME, METRICS_NAME)  # with any *.pt: the folder holds a run
_OWNED = (*_MARKS, CURVES_NAME, BAD_FILES_NAME, TENSORBOARD_NAME)  # the run's own files, *.pt aside
# The temporaries of save_atomic and atomic_path: tempfile.mkstemp(prefix=".NAME.", suffix=".tmp"), e.g.
# .last.pt.k2x9_a.tmp; a SIGKILL while config.json, metrics.jsonl or curves.png is written leaves theirs too
_ATOMIC_FILES = "|".join(re.escape(n) for n in (CONFIG_NAME, METRICS_NAME, CURVES_NAME))
_TEMP = re.compile(rf"^\.(?:.+\.pt|{_ATOMIC_FILES})\.[^.]+\.tmp$")
# Where --force sets the old run aside until the new run's first checkpoint: its entries move into
# .replaced-run.part one by one, which is then renamed; so .replaced-run holds the whole old run, and
# a .replaced-run.part (a kill while moving, either way) holds only old entries, to move back.
REPLACED = ".replaced-run"
_MOVING = REPLACED + ".part"
_LOCK_TRIES = 10  # a probe (check()) holds the lock for microseconds; a run holds it for hours


class RunFolderError(AlexNetError):
    """The run folder holds another run, or another process is using it."""


def _names(run_dir: Path) -> list[str]:
    try:
        return sorted(os.listdir(run_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _is_checkpoint(name: str) -> bool:
    return name.endswith(".pt") and not name.startswith(".")  # a hidden one is a temporary's or a user's


def run_marks(run_dir: Path) -> list[str]:
    """The files that make ``run_dir`` hold a run: config.json, metrics.jsonl, *.pt."""
    return [n for n in _names(run_dir) if n in _MARKS or _is_checkpoint(n)]


def owned(run_dir: Path) -> list[str]:
    """A run's own entries in ``run_dir`` (what ``--force`` removes), temporaries included."""
    marks = set(run_marks(run_dir))
    return [n for n in _names(run_dir) if n in _OWNED or n in marks or _TEMP.match(n)]


def _remove(run_dir: Path, names: list[str]) -> None:
    for name in names:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _move_back(run_dir: Path) -> None:
    """Move the entries of ``_MOVING`` back into ``run_dir`` (the old run's place), then drop it."""
    moving = run_dir / _MOVING
    for name in _names(moving):
        _remove(run_dir, [name])  # only a name the failed run wrote too (bad_files.txt): the old run's wins
        os.rename(moving / name, run_dir / name)
    moving.rmdir()


def _set_aside(run_dir: Path, names: list[str]) -> None:
    """Move ``names`` (the old run's) into ``REPLACED``, atomically as a whole (see ``_MOVING``)."""
    moving = run_dir / _MOVING
    moving.mkdir()
    for name in names:
        os.rename(run_dir / name, moving / name)
    os.rename(moving, run_dir / REPLACED)


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint (a ``*.pt``; set-aside runs and temporaries aside)."""
    return any(_is_checkpoint(n) for n in _names(run_dir))


def set_aside(run_dir: Path) -> Path | None:
    """Where the run that a forced run replaced waits, if that run was killed before its first
    checkpoint: the next claim of ``run_dir`` puts it back (:func:`settle`). Reads only."""
    old = run_dir / REPLACED
    return old if old.is_dir() and not has_checkpoint(run_dir) else None


def set_aside_hint(run_dir: Path) -> str:
    """'' or, where :func:`set_aside` finds a run, the sentence that says where it is and how it comes back."""
    old = set_aside(run_dir)
    return (f" (a run forced into {run_dir} has written no checkpoint; the run it replaces waits in {old} until it does, "
            f"and if it was stopped, 'alexnet train --resume {run_dir}' puts that run back and continues it)") if old else ""


def settle(run_dir: Path) -> None:
    """Finish what a forced run left, under the folder's lock: the set-aside old run goes once the new
    run has a checkpoint; until then the new run's files go and the old run comes back."""
    if (run_dir / _MOVING).is_dir():  # killed while the old run was moved either way: it had no new run yet
        _move_back(run_dir)
    if not (run_dir / REPLACED).is_dir():
        return
    if has_checkpoint(run_dir):
        shutil.rmtree(run_dir / REPLACED)
        return
    _remove(run_dir, owned(run_dir))
    os.rename(run_dir / REPLACED, run_dir / _MOVING)
    _move_back(run_dir)


def _holder(run_dir: Path) -> str:
    """' (pid N)' of the process whose pid the lock file holds, or '' if it cannot be read."""
    try:
        pid = int((run_dir / LOCK_NAME).read_text().strip())
    except (OSError, ValueError):
        return ""
    return f" (pid {pid})"


def _in_use(run_dir: Path, command: str) -> RunFolderError:
    return RunFolderError(f"{run_dir} is in use by another alexnet {command}{_holder(run_dir)}")


def refuse_in_use(run_dir: Path, command: str = "train") -> None:
    """RunFolderError if another process (an ``alexnet command``) holds the folder's lock; opens it
    read-only, writes nothing."""
    if fcntl is None:
        return
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY)
    except OSError:  # no lock file: nobody holds it
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(run_dir, command) from None
    finally:
        os.close(fd)  # also releases the probe's lock


def stopped_before_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds the files of a run killed before its first checkpoint: train's own
    config.json (a file of the user's by that name is not one), no .pt, no epoch in metrics.jsonl.
    Nothing to resume there, so a new run takes the folder over."""
    marks = run_marks(run_dir)
    if CONFIG_NAME not in marks or any(m.endswith(".pt") for m in marks):
        return False
    metrics = run_dir / METRICS_NAME
    if metrics.exists() and (not metrics.is_file() or metrics.stat().st_size):  # an epoch was recorded: a run
        return False  # whose checkpoints were moved away, not one killed before its first
    try:
        written = jsonio.loads((run_dir / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(written, dict) and {"train", "model", "data", "environment"} <= set(written)


def refuse_run(run_dir: Path, resume: bool, force: bool) -> None:
    """RunFolderError if a new run (not ``resume``, not ``force``) would replace the run in ``run_dir``."""
    marks = run_marks(run_dir)
    if marks and not resume and not force and not stopped_before_checkpoint(run_dir):
        raise RunFolderError(
            f"{run_dir} already holds a run ({', '.join(marks[:4])}): continue it with --resume {run_dir}, "
            "or replace it with --force"
        )


def check(run_dir: Path, resume: bool, force: bool) -> None:
    """Whether a run may start in ``run_dir`` (in use first: --force must not be suggested for a live
    run); reads only. :func:`claim` checks again under the lock."""
    refuse_in_use(run_dir)
    refuse_run(run_dir, resume, force)


# Lock descriptors this process holds. A forked child (a DataLoader worker) would share each one's
# open file description, and with it the flock: a run whose main process was SIGKILLed would stay
# "in use" until its orphaned workers noticed and exited. Children close them as they start.
_HELD: set[int] = set()
_AT_FORK = False


def _close_held_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


def _hold(fd: int) -> int:
    global _AT_FORK
    if not _AT_FORK:
        os.register_at_fork(after_in_child=_close_held_in_child)
        _AT_FORK = True
    _HELD.add(fd)
    return fd


def lock(run_dir: Path, command: str = "train") -> int | None:
    """Take ``run_dir/.lock`` (non-blocking) and write our pid in it; the file descriptor, or None
    without fcntl. RunFolderError if another ``alexnet command`` holds it. Undo with :func:`unlock`."""
    if fcntl is None:
        return None
    path = run_dir / LOCK_NAME
    for _ in range(_LOCK_TRIES):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            time.sleep(0.05)
            continue
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return _hold(fd)
        os.close(fd)  # a run that just ended unlinked this file: lock the one at the path now
    raise _in_use(run_dir, command)


def unlock(run_dir: Path, fd: int | None) -> None:
    """Drop :func:`lock`'s lock, the file unlinked first, so that a waiting locker sees a new file."""
    if fd is not None:
        try:
            (run_dir / LOCK_NAME).unlink(missing_ok=True)
        except OSError:  # a folder made read-only (or removed) mid-run: the error that ended the run is the
            pass  # one to report, and closing fd releases the lock all the same (a stale file locks nothing)
        _HELD.discard(fd)
        os.close(fd)


def put_back(run_dir: Path) -> None:
    """Where a forced run killed before its first checkpoint left the run it replaced set aside, put
    that run back now, under the folder's lock (``--resume RUN`` continues it). RunFolderError if in use."""
    if set_aside(run_dir) is None and not (run_dir / _MOVING).is_dir():
        return
    fd = lock(run_dir)
    try:
        settle(run_dir)
    finally:
        unlock(run_dir, fd)


class RunFolder:
    """A claimed run folder: use as a context manager around the run (see :func:`claim`)."""

    def __init__(self, run_dir: Path, created: bool, resume: bool, keep: tuple[type[BaseException], ...]) -> None:
        self.run_dir, self.created, self.resume, self.keep = run_dir, created, resume, keep
        self.fd: int | None = None
        self.before: set[str] = set()
        self.foreign = False  # made again by another run since this one's was deleted: not this run's to touch

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.foreign:
            return
        try:
            replaced = (self.run_dir / REPLACED).is_dir()
            if exc is not None and not isinstance(exc, self.keep):
                kept = self.failed()
                if isinstance(exc, TrainingError | MachineLimit | DataGone):  # the message ends with what is left, known only here
                    left = ("the run it was to replace is back in place" if replaced else
                            "no checkpoint had been written yet: nothing to resume")
                    resume = getattr(exc, "resume", None) if kept else None  # a MachineLimit's
                    exc.args = (f"{exc}; " + ("the run folder keeps the last good checkpoint" if kept else left)
                                + (f"; continue with: {resume}" if resume else ""),)
            try:
                settle(self.run_dir)  # a forced run: the old run goes with a checkpoint, else it comes back
            except OSError:  # (a folder made read-only mid-run) the error that ended the run is the one to
                pass  # report; the next claim of the folder settles it
        finally:
            self.release()

    def failed(self) -> bool:
        """After a failure: whether a checkpoint is kept. A new run that failed before its first one
        removes what it created (config.json, metrics.jsonl, ...): there is nothing to resume, and
        those files would only mislead; the list of unreadable images stays (it says what to mend),
        unless a forced run's old run comes back (:func:`settle`), whose own files are put back as they were."""
        if self.resume or has_checkpoint(self.run_dir):  # the last good checkpoint is the point
            return True
        _remove(self.run_dir, [n for n in owned(self.run_dir) if n not in self.before and n != BAD_FILES_NAME])
        return False

    def lost(self) -> bool:
        """Whether the folder, or its lock file, went while the run held it (``rm -r`` of the run's folder)."""
        try:
            here = os.stat(self.run_dir / LOCK_NAME) if self.fd is not None else None
        except FileNotFoundError:
            return True
        return not self.run_dir.is_dir() if here is None else not os.path.samestat(os.fstat(self.fd), here)

    def take_again(self) -> None:
        """After :meth:`lost`: the folder made again and locked by this run; RunFolderError if another
        run holds it now (a run started into the same path since): its files are not this run's to write."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.fd is not None:
            _HELD.discard(self.fd)
            os.close(self.fd)  # the lock of a file no longer there
            self.fd = None
        try:
            self.fd = lock(self.run_dir)
        except RunFolderError:
            self.foreign = True
            raise RunFolderError(f"{self.run_dir} was deleted while this run trained, and another alexnet train"
                                 f"{_holder(self.run_dir)} holds the folder made again there: this run stops "
                                 "(its checkpoints went with the folder it had)") from None
        self.created = False  # what it holds now is the run's: a later failure keeps it

    def release(self) -> None:
        """Drop the lock and remove the folder if this run created it and left it empty."""
        unlock(self.run_dir, self.fd)
        self.fd = None
        if self.created:
            try:
                self.run_dir.rmdir()
            except OSError:  # not empty: the run's files stay
                pass


def drop_replaced(run_dir: Path) -> None:
    """After a checkpoint of the run holding the folder's lock: the run that ``--force`` set aside goes."""
    if (run_dir / REPLACED).is_dir():
        shutil.rmtree(run_dir / REPLACED)


def claim(run_dir: Path, resume: bool, force: bool, keep: tuple[type[BaseException], ...] = (),
          option: str = "--out") -> RunFolder:
    """Claim ``run_dir`` for a run: refused (before anything is written) if it is in use or holds a
    run that this one would replace; then locked, rid of what a killed forced run left (:func:`settle`),
    the old run set aside with ``force`` (:data:`REPLACED`, until the new run's first checkpoint:
    :func:`drop_replaced`), and rid of temporaries. Exceptions of a type in ``keep`` (Ctrl-C) leave
    the folder as it is, but for a set-aside run, which goes or comes back as :func:`settle` says."""
    check(run_dir, resume, force)
    folder = RunFolder(run_dir, not run_dir.exists(), resume, keep)
    check_writable(run_dir, option, folder=True)  # a file in the way, a read-only disk: one line naming --out
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        folder.fd = lock(run_dir)
        settle(run_dir)
        refuse_run(run_dir, resume, force)  # again: a run may have started and ended since check()
        if not resume and force and not stopped_before_checkpoint(run_dir) and run_marks(run_dir):
            _set_aside(run_dir, [n for n in owned(run_dir) if not _TEMP.match(n)])
        elif not resume and (force or stopped_before_checkpoint(run_dir)):
            _remove(run_dir, owned(run_dir))
        # A killed writer's temporaries (the lock rules out a live one): up to a checkpoint's size each.
        _remove(run_dir, [n for n in _names(run_dir) if _TEMP.match(n)])
        folder.before = set(_names(run_dir))
    except BaseException:
        folder.release()
        raise
    return folder
