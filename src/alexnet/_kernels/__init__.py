"""Small C kernels, compiled on first use with the system C compiler and cached on disk.

Nothing is compiled at import. The first call of :func:`load` compiles ``<name>.c`` (about a
second: plain C, no PyTorch headers) into a cache directory keyed by the source, the flags and
the CPU, and later calls (and later processes) reuse it. Without a compiler, or with
``ALEXNET_NO_KERNELS=1``, :func:`load` returns None and callers use their pure-PyTorch path.

Kernels are called through ctypes, which releases the GIL, so :func:`parallel` can spread one
call over ``torch.get_num_threads()`` Python threads without OpenMP.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import secrets
import shlex
import shutil
import subprocess
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
_FLAG_SETS = (
    ["-O3", "-march=native", "-fno-math-errno", "-fPIC", "-shared"],
    ["-O3", "-fno-math-errno", "-fPIC", "-shared"],  # compilers without -march=native
)
_LIBS: dict[str, ctypes.CDLL | None] = {}
_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None


def cache_dir() -> Path:
    """``$ALEXNET_KERNEL_CACHE``, else ``kernels`` in alexnet's cache: ``$ALEXNET_CACHE``, else
    ``$XDG_CACHE_HOME/alexnet``, else ``~/.cache/alexnet`` (the folder data statistics use too)."""
    if os.environ.get("ALEXNET_KERNEL_CACHE"):
        return Path(os.environ["ALEXNET_KERNEL_CACHE"])
    # $ALEXNET_CACHE moves all of alexnet's cache (README), e.g. off a read-only home: the kernels too.
    from ..runtime import cache_home

    return cache_home() / "kernels"


def _cpu_id() -> str:
    # -march=native code must not run on another CPU sharing the same home directory.
    text = platform.processor() + platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags")):
                    text += line
                if line.startswith("flags"):
                    break
    except OSError:
        pass
    return text


_STALE_SECONDS = 600  # a live compiler's temporary is younger: each compile is stopped after 120 s


def _sweep(folder: Path) -> None:
    """Remove the temporaries that compiles killed outright (SIGKILL, out of memory) left in ``folder``;
    before, each stayed for good (``tmpXXXXXXXX.so`` until now). Those of compiles still running are too young."""
    for stale in [*folder.glob(".*.so.*.tmp"), *folder.glob("tmp*.so")]:
        try:
            if time.time() - stale.stat().st_mtime > _STALE_SECONDS:
                stale.unlink()
        except OSError:  # gone meanwhile (another process swept it), or not ours to remove
            pass


def _compile(src: Path, name: str) -> Path | None:
    # $CC is a command line, as make and setuptools take it ("ccache gcc", "gcc -m64"), not one path.
    found = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    cc = shlex.split(os.environ.get("CC", "")) or ([found] if found else [])
    if not cc:
        return None
    source = src.read_bytes()
    for flags in _FLAG_SETS:
        key = hashlib.sha256(source + " ".join([*cc, *flags]).encode() + _cpu_id().encode()).hexdigest()[:16]
        out = cache_dir() / f"{name}-{key}.so"
        if out.exists():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        _sweep(out.parent)
        # Made with the umask's mode, as the compiler's own files are: mkstemp's 0600 became 0711 once
        # linked, a library no other user of a shared $ALEXNET_CACHE could load.
        tmp = str(out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp")
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        try:
            done = subprocess.run([*cc, *flags, "-o", tmp, str(src)], capture_output=True, timeout=120)
            if done.returncode == 0:
                os.replace(tmp, out)  # atomic: concurrent processes never load half a file
                return out
        except (OSError, subprocess.SubprocessError):
            pass
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return None


def load(name: str) -> ctypes.CDLL | None:
    """The compiled kernel library ``name`` (``_kernels/<name>.c``), or None if it cannot be built."""
    with _LOCK:
        if name in _LIBS:
            return _LIBS[name]
        lib = None
        if os.environ.get("ALEXNET_NO_KERNELS", "") in ("", "0"):
            why = "no working C compiler (set CC)"
            try:
                path = _compile(_HERE / f"{name}.c", name)
                lib = ctypes.CDLL(str(path)) if path else None
            except (OSError, ValueError) as exc:  # an unwritable cache, a broken library, a $CC that shlex cannot split
                why = str(exc)
            if lib is None:  # said once per process: the result is cached below
                warnings.warn(f"alexnet: C kernel {name!r} unavailable ({why}); using the slower PyTorch path", stacklevel=2)
        _LIBS[name] = lib
        return lib


def parallel(fn: Callable[[int, int], int], tasks: int, min_tasks_per_thread: int = 4) -> None:
    """Run ``fn(t0, t1)`` over ``[0, tasks)`` split among ``torch.get_num_threads()`` threads.

    ``fn`` returns the kernel's code: 0 done, 1 out of memory, 2 arguments it cannot take.
    """
    global _POOL
    threads = max(1, min(torch.get_num_threads(), tasks // min_tasks_per_thread))
    if threads == 1:
        bounds = [(0, tasks)]
    else:
        step = -(-tasks // threads)
        bounds = [(a, min(tasks, a + step)) for a in range(0, tasks, step)]
    if len(bounds) == 1:
        codes = [fn(*bounds[0])]
    else:
        with _LOCK:
            if _POOL is None or _POOL._max_workers < len(bounds):
                _POOL = ThreadPoolExecutor(max_workers=len(bounds), thread_name_prefix="alexnet-kernel")
        codes = list(_POOL.map(lambda b: fn(*b), bounds))
    if 1 in codes:
        raise MemoryError("alexnet C kernel could not allocate its scratch memory")
    if any(codes):  # the callers check arguments first: this is a bug
        raise RuntimeError(f"alexnet C kernel refused its arguments (code {max(codes)})")
