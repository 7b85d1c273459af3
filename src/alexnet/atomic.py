"""Writing a file so that a reader sees the old file or the new one, never half of either.

Every file this package writes beside a user's data (checkpoints, exports, indexes, figures,
statistics, CSV and JSON reports) goes through :func:`atomic_path`: the bytes go to a temporary
``.NAME.XXXXXXXX.tmp`` in the same folder, are flushed to disk, and are renamed over ``NAME``
(atomic within a file system). A failure at any point (a full disk, a crash, Ctrl-C) leaves the
previous file untouched and no temporary behind (except after SIGKILL: ``runfolder`` sweeps those).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError

_UMASK: int | None = None


def _file_mode() -> int:
    """The mode a plain ``open()`` would give: mkstemp makes 0600, these are ordinary files."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0)  # the only way to read the umask is to set it, then put it back
        os.umask(_UMASK)
    return 0o666 & ~_UMASK


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _existing_folder(path: Path) -> Path:
    """The nearest folder above ``path`` that exists; a file there instead is named as such (mkdir
    said 'File exists')."""
    for p in (path.parent, *path.parent.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"{p} is a file, not a folder", str(path))
            return p
    return Path(".")


def _folder_for(path: Path) -> Path:
    """``path.parent``, created."""
    _existing_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent


def _mkstemp(folder: Path, path: Path, prefix: str) -> tuple[int, str]:
    """mkstemp in ``folder``; a read-only or full folder names the file asked for, not a temporary."""
    try:
        return tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


def _prefix(folder: Path, name: str) -> str:
    """``.NAME.``, the prefix of a temporary of ``name``, with NAME cut so that the temporary's name
    (mkstemp adds 8 characters and ``.tmp``) fits the file system's limit on a name: an ``--out``
    name of 243 to 255 bytes, which the file system takes, failed with 'File name too long'."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    room = limit - len("..") - 8 - len(".tmp")
    while len(os.fsencode(name)) > room:  # whole characters: no half of a UTF-8 sequence
        name = name[: min(len(name) - 1, room)]
    return f".{name}."


def temporary(path: Path) -> tuple[int, str]:
    """A temporary file beside ``path`` (its folders created), to be renamed over it."""
    folder = _folder_for(path)
    return _mkstemp(folder, path, _prefix(folder, path.name))


def check_writable(path: str | os.PathLike, option: str, folder: bool = False) -> None:
    """ConfigError, before any work is done, when ``option``'s ``path`` (a file, or a ``folder``)
    cannot be written: a folder in the way of a file, a file in the way of a folder, no permission,
    a read-only file system. Creates nothing and leaves nothing: the probe is a temporary file in the
    nearest folder that exists (where the writer will create the missing ones)."""
    path = Path(path)
    try:
        if folder:
            path = path / ".alexnet-probe"
        elif path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "a folder is in the way of the file to write", str(path))
        fd, name = _mkstemp(_existing_folder(path), path, ".alexnet-probe.")
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise ConfigError(f"{option} {path.parent if folder else path}: cannot write there: {e.strerror or e}") from None


# A writer that ran out of room: matplotlib, torch.jit.save, onnx raise these without a file name,
# and the CLI printed only 'alexnet: error: File too large', not which of the files it was writing.
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def _naming(error: OSError, tmp: Path, path: Path) -> OSError:
    """``error``, naming ``path`` where it names the hidden temporary, or nothing and is a full disk."""
    if error.filename == str(tmp) or (error.filename is None and error.errno in _NO_ROOM):
        return OSError(error.errno, error.strerror, str(path))
    return error


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """A temporary path to write ``path``'s new contents to; renamed over ``path`` when the block
    ends without an exception, removed otherwise. ``durable``: fsync the file and the rename."""
    path = Path(path)
    if path.is_dir():  # found now, not at the rename after all the work (with the temporary's name)
        raise IsADirectoryError(errno.EISDIR, "a folder is in the way of the file to write", str(path))
    fd, name = temporary(path)
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            yield tmp
            # after the writer: some (safetensors >= 0.7) write a file of their own, 0600, renamed over tmp
            os.chmod(tmp, _file_mode())
            if durable:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, path)  # fails naming tmp first (a folder made at path meanwhile, a folder turned read-only)
        except OSError as e:
            raise _naming(e, tmp, path) from None
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        _fsync_folder(path.parent)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_safetensors(path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, str]) -> Path:
    """Write ``tensors`` and ``metadata`` as a safetensors file atomically, the same bytes for the same
    contents: safetensors writes the metadata in the order of a hash map seeded afresh by each process,
    so the header is rewritten in place with it sorted (the tensors, up to an index's gigabytes, are
    streamed to disk by safetensors and not read back)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as e:
            # its Rust writer reports a failed write (a full disk) as 'I/O error: ... (os error 28)'
            # (safetensors 0.4.0: 'IoError(Os { code: 28, ...})'): the OSError it stands for, naming
            # the file asked for (one line, not an internal error)
            found = re.search(r"\(os error (\d+)\)|\bOs \{ code: (\d+)", str(e))
            if found is None:
                raise
            code = int(found.group(1) or found.group(2))
            raise OSError(code, os.strerror(code), str(path)) from None
        _sort_metadata(tmp)
    return Path(path)


def _sort_metadata(path: Path) -> None:
    """Rewrite the header of the safetensors file ``path`` with its ``__metadata__`` in sorted order,
    padded to the length it had (the same keys and values, in safetensors' compact JSON)."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        if "__metadata__" not in header:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
        if len(text) > n:  # escaped otherwise than safetensors does: never seen; the file stays as written
            return
        f.seek(8)
        f.write(text + b" " * (n - len(text)))  # safetensors pads its header with spaces too


# The signals that ask a command to stop: Ctrl-C; kill, systemd, docker stop, a SLURM preemption; the
# terminal hung up (an ssh connection lost, its window closed), whose default ended a run at once.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def quiet_if_hung_up(signum: int) -> None:
    """On SIGHUP, send this process's output to the terminal (gone with the hang-up, where each write
    now fails with EIO: the next line of a progress bar would have ended the run before it saved) to
    /dev/null instead; output to a file or a pipe stays."""
    if signum != getattr(signal, "SIGHUP", None):
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    for fd in (1, 2):
        try:  # a terminal: a character device (isatty's tcgetattr fails on one hung up)
            if stat.S_ISCHR(os.fstat(fd).st_mode) and not os.path.samestat(os.fstat(fd), os.fstat(null)):
                os.dup2(null, fd)
        except OSError:
            pass
    os.close(null)


@contextlib.contextmanager
def signals_held(*signums: int, deliver: bool = True) -> Iterator[None]:
    """Hold ``signums`` (default: :data:`STOP_SIGNALS`) while the block runs, then deliver them to the
    handlers they had: a step that must not be cut in two (the files of a preparation swapped, torch's
    C++ start-up) ends first. Only the main thread sets handlers; elsewhere the block runs as it is.
    ``deliver=False`` drops them instead: for a process that has already said how it ends."""
    held: list[int] = []
    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for s in signums or STOP_SIGNALS:
            if signal.getsignal(s) is not None:  # None: set outside Python, which could not be put back
                previous[s] = signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        raised: BaseException | None = None
        for s in dict.fromkeys(held) if deliver else ():  # each to its handler, though the first raises (Ctrl-C's does)
            try:
                signal.raise_signal(s)
            except BaseException as e:
                raised = raised or e
        if raised is not None:
            raise raised
