"""Device, mixed precision, seeding and progress: the machine-facing bits shared by every command."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import random
import shlex
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np
import torch

from .errors import ConfigError, terminal_text

if TYPE_CHECKING:  # for annotations only: tqdm is imported where a bar is made (its import says one may be drawn)
    from tqdm.std import tqdm


def cache_home() -> Path:
    """alexnet's cache folder: ``$ALEXNET_CACHE``, else ``$XDG_CACHE_HOME/alexnet``, else
    ``~/.cache/alexnet``. An OSError (which its users take as a cache that cannot be written) where
    neither is set and there is no home folder: HOME unset for a user id with no passwd entry (a
    container's), where Path.home() raised RuntimeError and the command ended in an internal error."""
    if os.environ.get("ALEXNET_CACHE"):
        return Path(os.environ["ALEXNET_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "alexnet"
    try:
        return Path.home() / ".cache" / "alexnet"
    except RuntimeError:
        raise OSError(errno.ENOENT, "no home folder to keep a cache in (HOME is not set); set ALEXNET_CACHE", "~/.cache") from None


def shell_arg(value: object) -> str:
    """``value`` (a path) as one word of a command line printed for the user to paste into a shell:
    quoted where it holds spaces or other characters the shell reads ('runs/my run'), and a relative
    path that starts with '-' as ./-name, which the command would otherwise take for an option."""
    text = str(value)
    return shlex.quote(f"./{text}" if text.startswith("-") else text)


def resolve_device(name: str = "auto", arg: str = "--device") -> torch.device:
    """``auto`` -> CUDA if present, else Apple MPS, else CPU. Errors name the missing device, and the
    setting as ``arg`` says: the command line's ``--device``, or a Python function's ``load: device=``."""
    cli = arg.startswith("-")
    said = f"{arg} {name}" if cli else f"{arg}{name!r}"
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):  # torch's others (meta, xla, xpu, hpu) it cannot run on
        unknown = f"{arg}: unknown device {name!r}" if cli else f"{said} is not a device this package runs on"
        raise ConfigError(f"{unknown} (use auto, cpu, cuda, cuda:N or mps)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{said}: no CUDA device is available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        devices = f"{count} CUDA devices, cuda:0 to cuda:{count - 1}" if count > 1 else "1 CUDA device, cuda:0"
        raise ConfigError(f"{said}: this machine has {devices}")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{said}: MPS is not available on this machine")
    return dev


def device_argument(device: object, caller: str) -> torch.device:
    """A Python function's ``device=`` (a name such as ``"cuda:1"`` or ``"auto"``, a torch.device, or a
    CUDA index as torch takes it: ``3`` is ``"cuda:3"``, as a DDP script's ``local_rank``) as
    :func:`resolve_device` takes it, its errors naming ``caller``'s ``device=``, not the CLI's ``--device``."""
    if isinstance(device, torch.device):
        device = str(device)
    elif isinstance(device, int) and not isinstance(device, bool) and device >= 0:
        device = f"cuda:{device}"
    if not isinstance(device, str):
        raise TypeError(f"{caller}: device= takes a name ('cpu', 'cuda', 'cuda:1', 'mps', 'auto'), a torch.device or a "
                        f"CUDA index, not {type(device).__name__} {device!r}")
    return resolve_device(device, f"{caller}: device=")


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic: AVX512-BF16 or AMX on x86, bf16 instructions on Arm.
    oneDNN's own test (``_is_mkldnn_bf16_supported``) also says yes for plain AVX-512, where it emulates
    bf16: on such a Xeon (Ice Lake, 2026-12-06) a training step of alexnet_paper ran at 0.42x its float32
    speed under bf16 autocast, so --amp auto must not pick it there."""
    import platform

    if platform.machine().lower() in ("x86_64", "amd64", "i686", "i386"):
        tests = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        if all(callable(t) for t in tests):
            return any(t() for t in tests)
        return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})  # a torch without those tests
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (/proc/cpuinfo); none elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def resolve_amp(amp: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """``auto`` -> bf16 where the hardware has it (CUDA with bf16, CPUs with AVX512-BF16), fp16 on a CUDA
    GPU without bf16 (V100, T4), else off. A dtype (the Python API's form) or None is taken as it is."""
    if amp is None or amp == torch.float32 or amp in ("none", "off", "fp32", "no"):
        return None
    if isinstance(amp, torch.dtype):
        if amp not in (torch.bfloat16, torch.float16):
            raise ConfigError(f"amp: expected torch.bfloat16, torch.float16 or None, got {amp}")
        if amp == torch.float16 and device.type == "cpu":  # the rule of "fp16", for the dtype too
            raise ConfigError("amp torch.float16 is for GPUs; use torch.bfloat16 on a CPU")
        return amp
    if amp == "auto":
        if device.type == "cuda":
            with torch.cuda.device(device):  # the device asked about, not cuda:0
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_supports_bf16():
            return torch.bfloat16
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type == "cpu":
            raise ConfigError("--amp fp16 is for GPUs; use --amp bf16 on a CPU")
        return torch.float16
    raise ConfigError(f"--amp: expected auto, bf16, fp16 or none, got {amp!r}")


def precision_name(amp: torch.dtype | None) -> str:
    """The precision a resolved ``amp`` computes in, as results and files record it: float32, or the
    autocast dtype (bfloat16, float16)."""
    return str(amp or torch.float32).removeprefix("torch.")


def amp_name(amp: torch.dtype | None) -> str:
    """A resolved ``amp`` as config.json's environment.amp and evaluate.json's settings.amp record it:
    the autocast dtype ("bfloat16", "float16") or "none". One rule: ``train --config RUN/config.json``
    compares the replay's precision with the recorded one, and a name spelt otherwise is a false note."""
    return str(amp).removeprefix("torch.") if amp else "none"


_ALLOCATOR_TUNED: bool | None = None


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep large freed blocks for reuse (once per process; True if applied).

    By default glibc serves every block over 32 MB with a fresh ``mmap`` and unmaps it on free, so
    each such tensor (a batch of 32 conv1 outputs of the paper's net is 37 MB; fc6's weight
    gradient is 151 MB) costs the kernel a page fault per 4 kB every step: a quarter of a CPU
    training step on a 2-core machine, and more for the paper's net than for torchvision's, whose
    64-channel conv1 stays under the limit. Raising the mmap and trim thresholds keeps that memory
    in the heap, so the process holds on to its peak memory instead of returning it. Only the
    commands that compute call this; ``ALEXNET_MALLOC=system`` leaves malloc alone; elsewhere
    (macOS, musl, Windows) it does nothing.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED is not None:
        return _ALLOCATOR_TUNED
    _ALLOCATOR_TUNED = False
    if os.environ.get("ALEXNET_MALLOC", "") == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    _ALLOCATOR_TUNED = bool(mallopt(m_mmap_threshold, 1 << 30) and mallopt(m_trim_threshold, (1 << 31) - 1))
    return _ALLOCATOR_TUNED


def release_freed_memory() -> None:
    """Give the memory that malloc keeps (:func:`keep_freed_memory`) back to the system now (glibc's
    ``malloc_trim``; elsewhere nothing). Before forking data-loading workers: a child shares its
    parent's pages, and each page the parent writes afterwards is copied, so a worker forked from a
    heap of freed blocks keeps a stale copy of every one the parent reuses, for as long as it lives."""
    if not _ALLOCATOR_TUNED:
        return
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# A socket's path is at most 107 bytes on Linux; multiprocessing's are TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX.
_SOCKET_PATH_MAX, _SOCKET_NAME = 107, len("/pymp-XXXXXXXX/listener-XXXXXXXX")


def short_worker_sockets() -> None:
    """Give multiprocessing a socket folder whose paths fit, where TMPDIR is too long for them.

    A data-loading worker hands each batch to the run through a Unix socket that multiprocessing
    makes under TMPDIR. Past 75 characters (a batch system's job folder, a test's own temporary
    folder) the socket cannot be made: the worker prints 'OSError: AF_UNIX path too long' and the
    run waits for that batch for ever. Python falls back to /tmp itself only in releases since mid-2025
    (CPython gh-132124; 3.13.0 does not, checked); this does so on every version, once, before any
    worker starts (workers inherit the choice).
    """
    import multiprocessing.process
    import multiprocessing.util
    import shutil
    import tempfile

    config = multiprocessing.process.current_process()._config
    if not sys.platform.startswith("linux") or config.get("tempdir") is not None:
        return
    if len(tempfile.gettempdir()) + _SOCKET_NAME <= _SOCKET_PATH_MAX:
        return
    for base in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK):
            folder = tempfile.mkdtemp(prefix="pymp-", dir=base)
            # removed at exit, as multiprocessing removes the folder it makes itself
            multiprocessing.util.Finalize(None, shutil.rmtree, args=[folder], kwargs={"ignore_errors": True}, exitpriority=-100)
            config["tempdir"] = folder
            return


_THREADS: int | None = None  # set by --threads; None: torch's own choice (one per core)


def set_threads(n: int) -> None:
    """Use ``n`` CPU threads for torch's operators and this package's C kernels (``--threads``).

    Two jobs on one machine that each take every core slow each other down badly (two Fashion-MNIST
    epochs at once on 2 cores: 110 images/s each; with one thread each: 490). An explicit choice
    also wins over the per-rank share that :func:`alexnet.distributed.setup` gives a CPU run's ranks.
    """
    global _THREADS
    torch.set_num_threads(n)
    _THREADS = n


def chosen_threads() -> int | None:
    """The thread count given by ``--threads``, or None."""
    return _THREADS


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[None]:
    """An autocast context for ``dtype``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def eval_mode(*models: torch.nn.Module) -> Iterator[None]:
    """Every module of ``models`` in eval mode inside, and back in its own mode after: a model scored
    in the middle of fine-tuning keeps its dropout (as torch.no_grad keeps grad mode)."""
    modes = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's (``seed`` mod 2**32) and torch's (CPU and CUDA) random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG state, as tensors and plain containers (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    # Only where this process has used CUDA: asking an uninitialised CUDA for its states would
    # create a context on every visible GPU (seconds and memory) in a CPU run on a GPU machine.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the RNG states :func:`rng_state` returned: Python's, numpy's and torch's, and CUDA's for the
    devices there are, where this process has initialised CUDA."""
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    # A CPU run (CUDA untouched) ignores saved GPU states; a run on fewer GPUs than the one that
    # saved them restores the devices it has (set_rng_state_all would fail on the missing ones).
    if "cuda" in state and torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: "1 image", "3 unreadable images"."""
    return f"{n:,} {noun}{'s' * (n != 1)}"


_PARENT_BARS: str | None = None  # in a data-loading worker: what blanks its parent's bars' line, as told


def say(line: str) -> None:
    """One line on stderr, above this process's progress bars: tqdm.write clears them, prints and
    redraws them (a plain print was appended to the bar's line: '[00:00, 9.44batch/s]warning: ...').
    A data-loading worker does not draw its parent's bars (tqdm's lock may have been held as it
    forked): it blanks the line they are on, as its parent told it (:func:`tell_worker_bars`), else as
    the bars it inherited by fork show, and the parent redraws them."""
    import multiprocessing

    from tqdm.std import tqdm

    line = terminal_text(line)  # names in it (an unreadable image's) may hold escape sequences
    if multiprocessing.parent_process() is not None:
        sys.stderr.write((_blank_bars(tqdm) if _PARENT_BARS is None else _PARENT_BARS) + line + "\n")
        sys.stderr.flush()
        return
    tqdm.write(line + "\n", file=sys.stderr, end="")  # one write: ranks sharing stderr keep their lines whole
    sys.stderr.flush()


def drawn_bars_blank() -> str:
    """What blanks the line of the progress bars this process draws now ("" where it draws none), for
    the data-loading workers it starts: one started by spawn or forkserver has no copy of the bars."""
    tqdm = sys.modules.get("tqdm.std")  # no bar is drawn before tqdm is imported
    return "" if tqdm is None else _blank_bars(tqdm.tqdm)


def tell_worker_bars(blank: str) -> None:
    """In a data-loading worker, as it starts: what blanks the line of its parent's progress bars
    (:func:`drawn_bars_blank` in the parent; "" where none is drawn, so that a log gets no returns)."""
    global _PARENT_BARS
    _PARENT_BARS = blank


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: TextIO | None = None,
                 line: str | None = None) -> None:
    """warnings.showwarning for data-loading workers: the warning (PIL's on a corrupt EXIF block, the
    data path's own) printed as :func:`say` prints, on a line of its own, where Python's was appended
    to the progress bar's line ('...batch/s]warning: ...')."""
    import warnings

    text = warnings.formatwarning(message, category, filename, lineno, line)
    if file is not None and file is not sys.stderr:
        file.write(text)
        return
    say(text.rstrip("\n").rpartition("\r")[2])  # say blanks the bars' line itself


def _blank_bars(tqdm: type) -> str:
    """What blanks the line of ``tqdm``'s drawn progress bars (none when none is drawn: off, or a worker
    started by spawn): a carriage return, spaces as wide as the line, another return."""
    drawn = [bar for bar in list(getattr(tqdm, "_instances", ())) if not bar.disable]
    if not drawn:
        return ""
    import shutil

    width = max([shutil.get_terminal_size().columns - 1, *(len(str(bar)) for bar in drawn)])
    return "\r" + " " * width + "\r"


def progress(
    iterable: Iterable, total: int | None = None, desc: str = "", enabled: bool | None = None, unit: str = "it"
) -> tqdm:
    """A tqdm bar (rate and ETA) on a terminal; silent when output is not a terminal unless forced."""
    return progress_bar(total, desc, enabled, unit, iterable)


def progress_bar(
    total: int | None, desc: str = "", enabled: bool | None = None, unit: str = "it", iterable: Iterable | None = None
) -> tqdm:
    """A tqdm bar to ``update`` by hand (or over ``iterable``); bytes (``unit="B"``) shown as kB/MB."""
    # tqdm.std, not tqdm.auto: auto's asyncio class calls iter(iterable) in its constructor and then
    # iterates afresh, so a DataLoader was iterated twice: a second set of workers decoded the first
    # batches for nothing, and reported the same unreadable files again.
    from tqdm.std import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(
        iterable, total=total, desc=desc, disable=not enabled, unit=unit, unit_scale=unit == "B", dynamic_ncols=True, leave=False
    )
