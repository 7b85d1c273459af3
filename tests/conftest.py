"""Shared fixtures: tiny data sets that the tests write themselves."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import forked_cli
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout; ALEXNET_SHARED names another place (a GPU machine gets the checkout
# only: scripts/gpu-check.sh points it at a copy carried inside the checkout).
SHARED = Path(os.environ.get("ALEXNET_SHARED") or ROOT.parent / "shared")
IMAGEWOOF = SHARED / "data" / "imagewoof-mini"


# A narrow network (--model-option): a test's runs then cost their start-up, not writing 187 MB checkpoints.
TINY = ["--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32"]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX file (uint8 data), gzipped when the name ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.fixture(autouse=True)
def _restore_threads():
    """Every test starts with the thread count the session started with. ``main([...])`` in this
    process sets it for good, as the command does (--threads, or the count a resumed or replayed
    run recorded): a replayed record of 1 thread left the rest of the suite on 1, and a reference
    run computed on 1 thread is not bitwise the subprocess's on 2 (test_resume.py)."""
    import torch

    from alexnet import runtime

    threads, chosen = torch.get_num_threads(), runtime._THREADS
    yield
    torch.set_num_threads(threads)
    runtime._THREADS = chosen


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt during the test, as in a terminal: a pytest-xdist worker, like
    a background job, ignores it, so a Ctrl-C the test sends itself would do nothing there."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture
def tiny_fmnist(tmp_path: Path) -> Path:
    """Fashion-MNIST-format IDX files: 10 classes, 64 train and 40 test images of simple patterns."""
    return make_tiny_fmnist(tmp_path / "fmnist")


def make_tiny_fmnist(root: Path) -> Path:
    """The files of the ``tiny_fmnist`` fixture, written to ``root``."""
    rng = np.random.default_rng(0)
    root.mkdir()
    for split, n in (("train", 64), ("t10k", 40)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, size=(n, 28, 28))
        for i, y in enumerate(labels):  # a bright bar whose position is the class
            images[i, 2 * y + 4 : 2 * y + 7, 4:24] = 220
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def make_image_folder(root: Path, classes: int = 3, per_class: int = 4, size: tuple[int, int] = (80, 64)) -> Path:
    """CLASS/IMAGE.jpg tree of coloured noise images, one dominant colour per class."""
    rng = np.random.default_rng(1)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 60, size=(size[1], size[0], 3), dtype=np.uint8)
            arr[..., c % 3] += 150
            Image.fromarray(arr).save(folder / f"img{i}.jpg", quality=90)
    return root


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


def src_pythonpath() -> str:
    """PYTHONPATH of a subprocess: this checkout's src first, then the caller's own (where packages
    may come from on a machine that cannot pip install them)."""
    return os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)


def cli_env(cuda: bool = False, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess of the tests.

    ``cuda=False`` (the default) hides every GPU (``CUDA_VISIBLE_DEVICES=""``): a test whose subject
    is not the device (error lines, bitwise resume, run folders) then runs on the CPU on every
    machine, deterministic and without CUDA start-up or first-call kernel compilation. Tests of the
    GPU path pass ``cuda=True`` and carry the ``cuda`` marker.
    """
    # PYTHONFAULTHANDLER: a process that aborts (SIGSEGV, SIGABRT) prints every thread's Python stack.
    env = dict(os.environ, PYTHONPATH=src_pythonpath(), ALEXNET_DEBUG="", PYTHONFAULTHANDLER="1", **extra)
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, cuda: bool = False, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    """Run ``python -m alexnet ARGS`` in a process of its own, as a user would (on the CPU unless
    ``cuda``; ``env``: variables to set, as ``cli_env``'s): forked from one that has imported torch
    where the environment is the session's (tests/forked_cli.py), a plain ``python`` otherwise."""
    argv = [sys.executable, "-m", "alexnet", *args]
    return forked_cli.run(argv, cwd, cli_env(cuda, **(env or {})), _SESSION_ENV[-1] if _SESSION_ENV else {}, timeout)


def cuda_available() -> bool:
    """Whether this process sees a CUDA device (imports torch only when asked)."""
    import torch

    return torch.cuda.is_available()


# ``@requires_cuda`` (or ``@pytest.mark.cuda``): a test that needs a GPU; skipped, with the reason,
# where none is visible (CPU CI), run by scripts/gpu-check.sh on a GPU machine.
requires_cuda = pytest.mark.cuda


_TEST_CACHE: list[str] = []
_SESSION_ENV: list[dict[str, str]] = []  # a CLI run's environment as the session began: the fork server's


def pytest_configure(config: pytest.Config) -> None:
    """The data statistics that the tests' runs compute go to a cache folder of their own (removed
    at the end), not to the user's ``~/.cache/alexnet``; the compiled C kernels stay in the user's,
    compiled once for every run of the suite. Set before any test runs: CLI subprocesses inherit it."""
    if not os.environ.get("ALEXNET_KERNEL_CACHE"):
        from alexnet import _kernels

        try:
            os.environ["ALEXNET_KERNEL_CACHE"] = str(_kernels.cache_dir())
        except OSError:  # no home folder: the kernels' loader says so, as for a user
            pass
    _TEST_CACHE.append(tempfile.mkdtemp(prefix="alexnet-test-cache-"))
    os.environ["ALEXNET_CACHE"] = _TEST_CACHE[-1]
    _SESSION_ENV.append(cli_env())


def pytest_unconfigure(config: pytest.Config) -> None:
    for folder in _TEST_CACHE:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``cuda`` when no CUDA device is visible."""
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    if marked and not cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible); scripts/gpu-check.sh runs it on one")
        for item in marked:
            item.add_marker(skip)


# A process with torch loaded (its libraries take some GiB of address space), then held to ROOM more
# MiB of it: an allocation beyond that fails as on a machine out of memory (torch's CPU allocator
# raises "DefaultCPUAllocator: can't allocate memory"). torch._dynamo is loaded first: a custom op's
# first call imports it, and an import cut off by the limit would fail as no machine's does.
_UNDER_LIMIT = """
import resource, sys
import torch, torch._dynamo
from alexnet.cli import main
size = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + (int(sys.argv[1]) << 20), resource.RLIM_INFINITY))
sys.exit(main(sys.argv[2:]))
"""


def run_cli_with_memory(room_mib: int, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """``alexnet ARGS`` in a subprocess on the CPU, allowed ``room_mib`` MiB of address space beyond
    what importing torch took (Linux: RLIMIT_AS): real allocation failures, as a machine without the memory gives."""
    return subprocess.run([sys.executable, "-c", _UNDER_LIMIT, str(room_mib), *args], capture_output=True, text=True,
                          env=cli_env(), timeout=timeout)


def make_fmnist(root: Path, train: int, val: int) -> Path:
    """Fashion-MNIST-format IDX files of ``train`` and ``val`` random images in 10 classes."""
    rng = np.random.default_rng(0)
    root.mkdir()
    for split, n in (("train", train), ("t10k", val)):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, size=(n, 28, 28)))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


def fail_checkpoint_write(monkeypatch: pytest.MonkeyPatch, prefix: str, error: BaseException, at: int = 3) -> None:
    """Make the ``at``-th write() into a temporary checkpoint file whose name starts with ``prefix``
    (``.last.pt.``) raise ``error``, as an exception of a signal handler (a second Ctrl-C, torch's
    SIGCHLD handler) lands in torch.save's writer, which then reports '[enforce fail at
    inline_container.cc] unexpected pos'. A few records in: the first write's exception torch.save
    passes on as it is."""
    real_fdopen = os.fdopen

    class Failing:
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, data):
            self.writes += 1
            if self.writes == at:
                raise error
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fdopen(fd, *args, **kw):
        f = real_fdopen(fd, *args, **kw)
        return Failing(f) if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(prefix) else f

    monkeypatch.setattr(os, "fdopen", fdopen)
