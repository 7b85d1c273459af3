"""The ``alexnet`` command line: one sub-command per job, each a thin layer over the Python API."""

from __future__ import annotations

import argparse
import codecs
import contextlib
import gc
import io
import os
import sys
from collections.abc import Iterator

from ..errors import AlexNetError, Interrupted, StoppedAtOnce, rank_voice, terminal_text
from .common import _machine_limit_line
from .options import build_parser

# Commands that run the network on batches: big tensors are allocated and freed every step.
_COMPUTING = {"train", "evaluate", "predict", "features", "retrieve", "prepare", "export"}


def _stdout_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it (poll reports an error on it)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no file descriptor
        return False


def _resumed_threads(args: argparse.Namespace) -> int | None:
    """A resume without --threads takes the count its run started with, where this machine has as many
    cores: CPU sums then round as they did, and the run goes on bitwise (the --resume line it printed
    has no --threads; with every core it went on otherwise, and on a shared machine slowly). So does a
    run started again from a run's config.json (--config RUN/config.json): it repeats that run bitwise."""
    if args.command != "train" or not (getattr(args, "resume", None) or getattr(args, "config", None)):
        return None
    from ..resume import recorded_threads, started_threads

    n = started_threads(args.resume) if args.resume else recorded_threads(args.config)
    return n if n is not None and n <= (os.cpu_count() or 1) else None


# torch warns of more workers than cores when a DataLoader is made and again when it starts them.
# Python's "once" filter did not hold: its memory is cleared whenever any filter changes (sympy's
# import adds one, and torch.optim imports sympy between a loader's making and its start).
_ONCE_A_PROCESS = ("This DataLoader will create",)
_said: set[str] = set()


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """A warning as one line (Python adds the source line that raised it, which says nothing to a
    user of the command line; ALEXNET_DEBUG=1 keeps Python's format), on a line of its own where a
    progress bar is drawn: Python's showwarning appended it to the bar's line ('...batch/s]warning:
    Corrupt EXIF data...' for a camera's JPEG decoded with --workers 0). The bar is redrawn below it.
    A warning of :data:`_ONCE_A_PROCESS` said before is nothing."""
    if str(message).startswith(_ONCE_A_PROCESS):
        if str(message) in _said:
            return ""
        _said.add(str(message))
    if "tqdm.std" not in sys.modules:  # no bar is drawn before tqdm is imported (nor torch, for runtime)
        return f"warning: {terminal_text(str(message))}\n"
    from ..runtime import drawn_bars_blank

    return drawn_bars_blank() + f"warning: {terminal_text(str(message))}\n"


def _import_torch() -> None:
    """Import torch with Ctrl-C and SIGTERM held until it has loaded: a KeyboardInterrupt raised
    inside its C++ start-up aborted the process ('terminate called after throwing an instance of
    pybind11::error_already_set'), and one in its Python start-up printed a traceback."""
    from ..atomic import signals_held

    with signals_held():
        import torch  # noqa: F401


@contextlib.contextmanager
def _stops_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (kill, docker stop, a scheduler's preemption) and SIGHUP (the terminal hung up) raise
    KeyboardInterrupt, as Ctrl-C does, where they would otherwise end the process on the spot: each
    command's clean-up runs (temporaries removed, the old pack kept) and it says so in one line (on
    SIGHUP, to a terminal no more: :func:`alexnet.atomic.quiet_if_hung_up`). Training saves on each (train._CtrlC)."""
    import signal
    import threading

    from ..atomic import STOP_SIGNALS, quiet_if_hung_up

    def stop(signum: int, frame: object) -> None:
        quiet_if_hung_up(signum)
        signal.default_int_handler(signum, frame)

    ours = [s for s in STOP_SIGNALS if s != signal.SIGINT and signal.getsignal(s) == signal.SIG_DFL]
    if threading.current_thread() is not threading.main_thread():
        ours = []  # called from a thread; a signal the caller handles is left to it
    for s in ours:
        signal.signal(s, stop)
    try:
        yield
    finally:
        for s in ours:
            signal.signal(s, signal.SIG_DFL)


def _escape_unencodable(e: UnicodeError) -> tuple[bytes, int]:
    """A codec error handler: a path's undecodable bytes (lone surrogates) as those bytes, as
    surrogateescape writes them; a character the codec lacks as \\uXXXX, as backslashreplace does."""
    if not isinstance(e, UnicodeEncodeError):
        raise e
    chunk = e.object[e.start : e.end]
    out = b"".join(bytes([ord(c) - 0xDC00]) if 0xDC80 <= ord(c) <= 0xDCFF else c.encode("ascii", "backslashreplace")
                   for c in chunk)
    return out, e.end


def _tolerant_stdout() -> None:
    """Standard output that prints any name instead of failing the command (stderr already escapes).
    A path that is not UTF-8 is printed as its bytes, as ls prints it; under a locale that is not
    UTF-8 (LC_ALL=C with PYTHONUTF8=0, LANG=en_US.ISO-8859-1, Windows's cp1252 when redirected) a
    character it lacks, such as a class named 日本 in a checkpoint, is printed as \\uXXXX."""
    if not isinstance(sys.stdout, io.TextIOWrapper) or sys.stdout.errors not in ("strict", "surrogateescape"):
        return
    try:
        utf8 = codecs.lookup(sys.stdout.encoding).name == "utf-8"
    except LookupError:
        utf8 = False
    if utf8:
        sys.stdout.reconfigure(errors="surrogateescape")
        return
    codecs.register_error("alexnet.escape", _escape_unencodable)
    sys.stdout.reconfigure(errors="alexnet.escape")


def main(argv: list[str] | None = None) -> int:
    """The ``alexnet`` command: parse ``argv`` (default: ``sys.argv[1:]``), run its sub-command, and
    return the exit status: the command's own (0; ``benchmark`` 1 when one failed), 1 for an OS error
    or a bug, 2 for a bad request (an AlexNetError) or no command, 130 when interrupted (Ctrl-C,
    SIGTERM), 141 when standard output's reader went away; each failure is one line on stderr. Bad
    options exit through argparse (SystemExit 2), as ``--help`` and ``--version`` do (0)."""
    import warnings

    if not os.environ.get("ALEXNET_DEBUG"):
        warnings.formatwarning = _warning_line
        _said.clear()  # once a command
    if os.environ.get("RANK", "0") != "0":  # a rank of a torchrun run: rank 0 says what each would (the data's warnings)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"alexnet(\.|$)")
    _tolerant_stdout()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for relaunching under torchrun
    if args.command is None:
        parser.print_help()
        return 2
    if args.command != "train":  # train leaves unset options to its preset and config file
        workers = min(8, os.cpu_count() or 1) if args.command == "prepare" else 0  # prepare decodes every image
        for name, default in (("workers", workers), ("amp", "auto"), ("device", "auto")):
            if getattr(args, name, default) is None:
                setattr(args, name, default)
    with _stops_as_ctrl_c():
        return _run(args)


def _line(text: str) -> None:
    """``text`` and its newline on stderr in one write (print writes them apart): the ranks of a
    torchrun run share the stream, and two ranks' lines came out run together ('... --nproc
    2alexnet: interrupted at ...'). A pipe keeps a write of up to 4 KiB whole."""
    sys.stderr.write(terminal_text(text) + "\n")
    sys.stderr.flush()


def _set_up(args: argparse.Namespace) -> None:
    """What every command needs before it runs: torch, and for a computing one its threads and malloc."""
    _import_torch()
    if args.command in _COMPUTING:
        from ..runtime import keep_freed_memory, set_threads

        keep_freed_memory()
        threads = getattr(args, "threads", None) or _resumed_threads(args)
        if threads:
            set_threads(threads)


def _unexpected(args: argparse.Namespace, e: Exception) -> int:
    """An exception no command raises on purpose, said in one line: this machine's limit (torch's
    allocators raise RuntimeErrors on CPU and OutOfMemoryError, its loaders RuntimeErrors for a dead
    worker), a failed --compile, else a bug."""
    said, rank = _machine_limit_line(args, e), rank_voice(e)  # a rank's own: 'rank 1: ' under torchrun
    if said is not None:  # this machine's limit, as a MemoryError is
        _line(f"alexnet: error: {rank}{said}")
        return 1
    if getattr(args, "compile", None) and type(e).__module__.startswith("torch._"):  # inductor, dynamo
        reason = " ".join(str(e).strip().splitlines()[0].split()) if str(e).strip() else type(e).__name__
        _line(f"alexnet: error: {rank}--compile failed ({reason}); run without --compile (set ALEXNET_DEBUG=1 for the traceback)")
        return 2
    _line(f"alexnet: internal error: {rank}{type(e).__name__}: {e} (set ALEXNET_DEBUG=1 for the traceback)")
    return 1


def _run(args: argparse.Namespace) -> int:
    """Run the command of ``args``: its exit status, and a failure as one line on stderr."""
    try:
        _set_up(args)  # inside the try: a Ctrl-C while torch loads ends in one line, as later ones do
        code = args.func(args)
        sys.stdout.flush()  # a reader that went away is met here, not at the interpreter's exit
        return code
    except BrokenPipeError as e:
        if not _stdout_gone():  # another pipe (a worker's, a subprocess's): an error like any other
            _line(f"alexnet: error: {rank_voice(e)}{e.strerror or e}")
            return 1
        # 'alexnet models | head -1': the reader went away; stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 141
    except (Interrupted, StoppedAtOnce) as e:
        _line(f"alexnet: {e}")
        return 130
    except AlexNetError as e:
        rank = rank_voice(e)  # under torchrun: said once (by rank 0, or local rank 0) or by its rank
        if rank is None:  # another rank stops with this same error and says it
            return 0
        _line(f"alexnet: error: {rank}{e}")
        return e.exit_status
    except KeyboardInterrupt:
        # Under torchrun a Ctrl-C reaches every rank of its terminal's machine, and the agent stops them
        # with SIGTERM once one has ended (on an error it said): said once a machine, by its local rank 0.
        # A rank still starting had added the line below rank 0's error.
        said = rank_voice(None)
        if said is not None:
            _line(f"alexnet: {said}interrupted")
        return 130
    except MemoryError as e:  # this machine's limit, not a bug: what ran out where, where it says
        _line(f"alexnet: error: {rank_voice(e)}{_machine_limit_line(args, e)}")
        return 1
    except OSError as e:  # disk full, permissions, ...
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        _line(f"alexnet: error: {rank_voice(e)}{e.strerror or e}{where}")
        return 1
    except Exception as e:  # a bug: one line by default, the traceback on request
        if os.environ.get("ALEXNET_DEBUG"):
            raise
        return _unexpected(args, e)
    finally:
        # A distributed run's DDP wrapper holds its process group and sits in reference cycles
        # (after a failure also through the traceback): free it now, while the interpreter is
        # whole, not during its exit, where gloo's threads can end the process in std::terminate.
        # The outcome is said by now: a Ctrl-C or SIGTERM here (torchrun stops the other ranks with
        # SIGTERM once one has failed) raised KeyboardInterrupt, a traceback below the error line.
        from ..atomic import signals_held

        with signals_held(deliver=False):
            gc.collect()
