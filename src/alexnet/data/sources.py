"""What ``--data`` points at, decided in one place, and how an image folder splits into train/val.

:func:`detect` is the one data-source detection: training (:func:`alexnet.data.loaders.load_data`),
evaluation (``load_eval_data``) and the choice of the default training preset all ask it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..atomic import STOP_SIGNALS, signals_held
from ..errors import (
    UNSENT_OTHER,
    UNSENT_SHARED_MEMORY,
    DataError,
    WorkerExited,
    WorkerSocketLost,
    WorkersUnstarted,
    is_shared_memory_shortage,
)
from ..runtime import counted, drawn_bars_blank, short_worker_sockets, show_warning, tell_worker_bars
from .cifar import find_cifar
from .fashion_mnist import fashion_mnist_missing, is_fashion_mnist
from .folder import (
    BadFiles,
    ImageFolderDataset,
    class_names_from,
    find_classes,
    has_images,
    list_images,
    not_images,
    printable,
    skipped,
    top_level_images,
)
from .ilsvrc import val_samples

Kind = Literal["fashion_mnist", "cifar", "packed", "images"]
PACKED_INDEX = "index.json"  # written last by 'alexnet prepare': a folder without it is unfinished
SHARD = re.compile(r"^[a-z]+-\d{5}\.npy$")  # the packed shards' names


def detect(root: str | os.PathLike) -> Kind:
    """The kind of data set at ``root``: Fashion-MNIST IDX files, CIFAR python batches, a packed
    folder ('alexnet prepare'), or an image folder (CLASS/IMAGE, train/ + val/, ILSVRC layout)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"--data: path not found: {root}")
    if is_fashion_mnist(root):
        return "fashion_mnist"
    if not root.is_dir():
        raise DataError(f"--data: {root} is neither a folder of images nor Fashion-MNIST IDX files")
    if find_cifar(root) is not None:
        return "cifar"
    if (root / PACKED_INDEX).is_file():
        return "packed"
    _refuse_unfinished(root)
    return "images"


def _refuse_unfinished(root: Path) -> None:
    """DataError for a folder that is half a data set, which would otherwise be read as a folder of
    images ('no class sub-folders'): Fashion-MNIST with a file missing, or a packed folder without the
    index 'alexnet prepare' writes last."""
    missing = fashion_mnist_missing(root)
    if missing:
        raise DataError(f"{root}: Fashion-MNIST without {', '.join(missing)} (it has the other IDX files): copy "
                        "the missing file(s) there, or 'alexnet download fashion-mnist --out DIR' on a machine online")
    if any(SHARD.match(name) or name.startswith(".prepare-") for name in os.listdir(root)):  # killed: its temporary folder
        raise DataError(f"{root}: packed shards without their {PACKED_INDEX}: an 'alexnet prepare' that did not finish; "
                        "run it again")


def check_out_of_images(out: str | os.PathLike, data: str | os.PathLike | None, what: str = "--out") -> None:
    """Refuse an output folder inside the folders an image data set is read from: its files would
    be read as a class (or, deeper, as images of one) by this run or the next."""
    if data is None or not Path(data).is_dir() or detect(data) != "images":
        return
    root = Path(data)
    split = has_split_folders(root)
    out_real = Path(out).resolve()
    for folder in (root / "train", root / "val") if split else (root,):
        if folder.resolve() == out_real or folder.resolve() in out_real.parents:
            raise DataError(f"{what} {out} is inside --data {data}, where its files would be read as images of a "
                            f"class: put it elsewhere")


def has_split_folders(root: Path) -> bool:
    """Whether the image folder ``root`` is split as train/ and val/ (else it is CLASS/IMAGE itself)."""
    return (root / "train").is_dir() and (root / "val").is_dir()


def open_folder_splits(
    root: Path, stored: int, bad: BadFiles, listed: ImageFolderDataset | None = None, val_only: bool = False
) -> dict[str, Any]:
    """``{"train": ..., "val": ...}`` for a folder with train/ and val/ (val/ either class folders or
    the flat ILSVRC-2012 layout labelled by the devkit), else ``{"train": ...}`` for a folder of
    class folders (``listed``: its images, already listed in this command, not listed again).
    ``val_only`` (evaluation): train/ gives only its classes (:class:`ClassFolders`), not its images."""
    if has_split_folders(root):
        train = ClassFolders.of(root / "train") if val_only else ImageFolderDataset(root / "train", stored, stored, bad)
        flat = val_samples(root, root / "val", train.folders)
        if flat is not None:
            val = ImageFolderDataset(root / "val", stored, stored, bad, flat, (train.folders, train.classes))
        else:
            val = ImageFolderDataset(root / "val", stored, stored, bad)
            if train.folders != val.folders:
                raise DataError(f"{root}: train/ and val/ have different class folders: {_differ(train.folders, val.folders)}")
        splits = {"train": train, "val": val}
    else:
        _refuse_split_folders(root)
        splits = {"train": ImageFolderDataset(root, stored, stored, bad) if listed is None else _relisted(listed, stored, bad)}
    others = [f for ds in splits.values() for f in ds.others]
    if others:  # torchvision's ImageFolder leaves them out without a word
        warnings.warn(f"{root}: left out {not_images(others)}", stacklevel=2)
    loose = top_level_images(root) + (top_level_images(root / "train") if "val" in splits else [])
    if loose:
        warnings.warn(f"{root}: left out {counted(len(loose), 'image')} in no class folder (first: {printable(loose[0])}): an "
                      "image trains as the class of the folder it is in", stacklevel=2)
    return splits


@dataclass
class ClassFolders:
    """The classes of a train/ folder as its ImageFolderDataset has them (folders, names and where
    they came from), told from its folder names: evaluation scores val/ and needs no training image."""

    root: Path
    folders: list[str]
    classes: list[str]
    names_from: str
    others: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, root: Path) -> ClassFolders:
        """``root``'s class folders, each refused as training refuses it if it holds no image."""
        folders = find_classes(root, names=False)[0]
        for folder in folders:
            if not has_images(root / folder):
                list_images(root, [folder])  # its DataError, worded as when train/ is listed
        return cls(root, folders, *class_names_from(root, folders))


def _relisted(listed: ImageFolderDataset, stored: int, bad: BadFiles) -> ImageFolderDataset:
    """``listed``'s images (classes, names, files left out) decoded at ``stored``, without listing them again."""
    ds = ImageFolderDataset(listed.root, stored, stored, bad, listed.samples, (listed.folders, listed.classes))
    ds.names_from, ds.others = listed.names_from, list(listed.others)
    return ds


# Folder names that split a data set rather than name a class (other tools' spellings of val/ among them).
SPLIT_NAMES = ("train", "val", "valid", "validation", "test")


def _refuse_split_folders(root: Path) -> None:
    refuse_split_folders(root, lambda splits: "name the validation split val/ (train/ and val/ of CLASS/IMAGE), or give "
                                              f"--data {root / 'train'} (a tenth is held out)" if "train" in splits else
                                              "put the training images in train/ beside val/ (train/ and val/ of CLASS/IMAGE)")


def refuse_split_folders(root: Path, remedy: Callable[[list[str]], str]) -> None:
    """DataError (ending in ``remedy(the split folders)``) for a folder whose 'classes' are all split names, train/ or val/
    among them (train/ alone, or beside valid/ or test/): read as CLASS/IMAGE, its photos would be
    labelled by split, not by class (a classifier of splits, an index whose classes are 'train' and 'val')."""
    folders = sorted(d.name for d in os.scandir(root) if d.is_dir() and not skipped(d.name))
    if {"train", "val"} & set(folders) and set(folders) <= set(SPLIT_NAMES):
        raise DataError(f"{root}: holds split folders ({', '.join(f + '/' for f in folders)}), not class folders: {remedy(folders)}")


def _differ(train: list[str], val: list[str]) -> str:
    """Which class folders only one of train/ and val/ has, a few of each."""
    def few(names: list[str]) -> str:
        return ", ".join(printable(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")

    only = (("train/", [f for f in train if f not in val]), ("val/", [f for f in val if f not in train]))
    return "; ".join(f"only {split} has {few(names)}" for split, names in only if names)


def each_batch(loader: Any) -> Iterator[Any]:
    """The batches of a DataLoader, its errors said as what they are (:func:`fetching_from`), its worker
    processes stopped as soon as the loop ends or fails: left to the interpreter's exit, their
    teardown races it and can print tracebacks after the error line ('Bad file descriptor')."""
    iterator = None
    try:
        iterator = start_workers(loader)
        with fetching_from(iterator):
            yield from iterator
    finally:
        stop_workers(iterator)


def start_workers(loader: Any) -> Iterator[Any]:
    """``iter(loader)``, its worker processes (if any) started as every loader here starts them:
    with sockets that fit (:func:`alexnet.runtime.short_worker_sockets`), told of the bars drawn
    (:func:`told_bars`) and spared the signals sent to the process group (:func:`workers_spared_signals`).
    A /dev/shm without room for the semaphores of their queues (multiprocessing's bare 'No space left on
    device') is raised as WorkersUnstarted, which the command says with what is free there."""
    if getattr(loader, "num_workers", 0):
        short_worker_sockets()
    try:
        with workers_spared_signals(loader):
            return iter(told_bars(loader))
    except OSError as e:
        if e.errno != errno.ENOSPC or not getattr(loader, "num_workers", 0):
            raise
        _stop_half_made(e)
        raise WorkersUnstarted(f"no room in shared memory to start {loader.num_workers} DataLoader worker(s): {e}") from e


def _stop_half_made(error: BaseException) -> None:
    """Stop the DataLoader iterator whose set-up raised ``error``: the workers it had started wait for
    indices that never come, with SIGTERM blocked (:func:`workers_spared_signals`), so the interpreter's
    exit waited for them forever; and its own clean-up, which would run when it is freed, on attributes
    its set-up never reached printed 'Exception ignored ... no attribute _workers' below the command's line."""
    for frame, _ in traceback.walk_tb(error.__traceback__):
        iterator = frame.f_locals.get("self")
        if frame.f_code.co_name == "__init__" and hasattr(type(iterator), "_shutdown_workers"):
            iterator._shutdown = True
            kill_workers(iterator)  # idle: they hold nothing


class _BarsToldStart:
    """A worker_init_fn that tells the worker what blanks its parent's bars' line, has its warnings
    printed on a line of their own (:func:`alexnet.runtime.show_warning`) and its death by a fault
    signal said by the command alone, then runs ``then``."""

    def __init__(self, blank: str, then: Callable[[int], None] | None) -> None:
        self.blank, self.then = blank, then

    def __call__(self, worker_id: int) -> None:
        tell_worker_bars(self.blank)
        warnings.showwarning = show_warning
        for name in ("SIGBUS", "SIGSEGV", "SIGFPE"):  # torch's handlers print a paragraph of their own first,
            if hasattr(signal, name):  # below the bars; the command's one line says the death (worker_lost)
                signal.signal(getattr(signal, name), signal.SIG_DFL)
        exit_on_unsent_batch()
        if self.then is not None:
            self.then(worker_id)


def exit_on_unsent_batch() -> None:
    """In a data-loading worker: a batch that its queue cannot send ends the worker at once, with an exit
    status that says why (errors.UNSENT_SHARED_MEMORY, UNSENT_OTHER), which the command then says in one
    line (errors.worker_lost). torch sends a batch's tensors through shared memory (/dev/shm); where it
    had no room (a container's 64 MiB, batches of 128 photos at 256 px), multiprocessing's sending
    thread printed a traceback and dropped the batch, and the command waited for it forever."""
    import multiprocessing.queues

    def unsent(error: BaseException, batch: object) -> None:
        if is_shared_memory_shortage(error):
            os._exit(UNSENT_SHARED_MEMORY)
        print(f"data-loading worker: could not send a batch: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        os._exit(UNSENT_OTHER)

    if hasattr(multiprocessing.queues.Queue, "_on_queue_feeder_error"):  # CPython's hook for this (3.8+)
        multiprocessing.queues.Queue._on_queue_feeder_error = staticmethod(unsent)


def told_bars(loader: Any) -> Any:
    """``loader``, its workers (started by the next ``iter``) told what blanks the line of the progress
    bars this process draws now: under spawn or forkserver (macOS's, Windows', Python 3.14's) a worker
    has no copy of the bars, and its warnings were appended to the bar's line ('...batch/s]warning: ...')."""
    if getattr(loader, "num_workers", 0):
        then = loader.worker_init_fn
        loader.worker_init_fn = _BarsToldStart(drawn_bars_blank(), then.then if isinstance(then, _BarsToldStart) else then)
    return loader


@contextlib.contextmanager
def workers_spared_signals(loader: Any) -> Iterator[None]:
    """Start ``loader``'s workers (``iter(loader)``) with the stop signals (SIGINT, SIGTERM, SIGHUP) blocked in this thread:
    a worker inherits the mask, through exec too, so a Ctrl-C or SIGTERM sent to the whole process
    group leaves it be, the training process saves and stops, and the others stop their workers.
    Spawned (macOS, Windows) or forkserver workers (Linux from Python 3.14) spend seconds importing
    torch before their own set-up could ignore the signal; one killed then printed its traceback and
    the command failed with 'DataLoader worker exited unexpectedly'. This process gets the signal
    once the workers have started (amid the start, it left a half-made iterator whose clean-up
    printed a traceback)."""
    if not getattr(loader, "num_workers", 0) or not hasattr(signal, "pthread_sigmask"):  # Windows: no such signals
        yield
        return
    import multiprocessing

    context = loader.multiprocessing_context
    method = context.get_start_method() if context else multiprocessing.get_start_method(allow_none=True)
    if (method or multiprocessing.get_all_start_methods()[0]) != "fork":
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()  # now: its first start unblocks both signals (CPython's own)
    with signals_held():
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def fetching_from(iterator: Any) -> Iterator[None]:
    """Errors met fetching batches from ``iterator`` (a DataLoader's), said as what they are: a worker's
    DataError as its one line (:func:`unwrap_worker_error`), a failure beside a dead worker as that
    worker's death (:func:`told_worker_deaths`). Every loop over a loader's batches runs in it."""
    with lost_worker_socket(iterator), unwrap_worker_error(), told_worker_deaths(iterator):
        yield


@contextlib.contextmanager
def lost_worker_socket(iterator: Any) -> Iterator[None]:
    """A batch whose worker's socket is gone (its file deleted with the folder multiprocessing made under
    TMPDIR), raised as WorkerSocketLost naming the socket; it was 'No such file or directory', naming
    nothing. The workers are killed first: their folders are gone too, and their own clean-up at exit
    printed a traceback for each file it could not remove."""
    try:
        yield
    except FileNotFoundError as e:
        address = _shared_from(e)
        if address is None:
            raise
        kill_workers(iterator)
        raise WorkerSocketLost(address) from None


def _shared_from(error: OSError) -> str | None:
    """The socket address this process was connecting to, where ``error`` was raised receiving a shared
    tensor from another process (multiprocessing.resource_sharer, torch's fd-passing strategy); else None."""
    for frame, _ in traceback.walk_tb(error.__traceback__):
        code = frame.f_code
        if code.co_name == "get_connection" and os.path.basename(code.co_filename) == "resource_sharer.py":
            address = frame.f_locals.get("address")
            return address if isinstance(address, str) else None
    return None


def kill_workers(iterator: Any) -> None:
    """SIGKILL a DataLoader iterator's workers, told first to torch's SIGCHLD watch (which would raise
    'killed by signal' in this process): they have nothing left to clean up that is still there."""
    if getattr(iterator, "_worker_pids_set", False):
        from torch.utils.data._utils import signal_handling

        signal_handling._remove_worker_pids(id(iterator))
        iterator._worker_pids_set = False
    for worker in getattr(iterator, "_workers", []):
        if worker.is_alive():
            worker.kill()
            worker.join()


@contextlib.contextmanager
def told_worker_deaths(iterator: Any, wait_s: float = 0.5) -> Iterator[None]:
    """A failure met fetching from ``iterator`` (a DataLoader's) while one of its worker processes has
    died, raised as WorkerExited naming that worker: one the kernel killed for want of memory is met
    as 'Connection reset by peer' (it died sending a batch), 'exited unexpectedly' or a signal's
    name, by chance. A dead process is told apart from a live one's error by its exit code, which a
    death makes known within ``wait_s``: only a failure waits for it."""
    try:
        yield
    except (RuntimeError, OSError, EOFError) as e:
        workers = list(getattr(iterator, "_workers", None) or [])
        deadline = time.monotonic() + wait_s
        while workers:
            dead = next((w for w in workers if w.exitcode not in (None, 0)), None)
            if dead is not None:
                raise WorkerExited(dead.pid, dead.exitcode) from e
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        raise


def stop_workers(iterator: Any) -> None:
    """Stop a DataLoader iterator's worker processes now (a no-op without workers)."""
    if hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()


@contextlib.contextmanager
def unwrap_worker_error() -> Iterator[None]:
    """Turn a DataError raised in a DataLoader worker (re-raised with the worker's traceback in its
    message) back into its one-line message."""
    try:
        yield
    except DataError as e:
        text = str(e)
        if "Original Traceback" not in text:
            raise
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        raise type(e)(last.split(f"{type(e).__name__}: ", 1)[-1]) from None  # a DataGone stays one
