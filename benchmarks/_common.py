"""Shared by the benchmark scripts: interleaved timing, machine description, roofline, RESULT lines.

Not a test helper: benchmarks print figures and never assert on them.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a benchmark's child process: this checkout's src first on PYTHONPATH, then
    the caller's own entries (where packages may come from on a machine that cannot pip install)."""
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, **extra, PYTHONPATH=path)


def run(main: Callable[[], int | None]) -> None:
    """A benchmark's entry point: bad input (a checkpoint or data folder not found, ...) is one line
    on stderr and exit 2, as in the ``alexnet`` command, not a traceback."""
    from alexnet.errors import AlexNetError

    try:
        code = main()
    except AlexNetError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def whole(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum`` (argparse's one error line and exit 2 otherwise;
    --threads -1 was torch's traceback, --repeats 0 statistics' 'no median for empty data')."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny setting for CI: checks it runs, not how fast")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--repeats", type=whole(1), default=5, help="timed rounds (ours and the peer interleaved); medians reported")
    p.add_argument("--threads", type=whole(0), default=0, help="torch threads (0: torch's default)")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    from alexnet.runtime import keep_freed_memory, resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)  # a ConfigError is one line (:func:`run`)
    if device.type == "cuda":  # as `alexnet train` does; ours and the peer share this process and it
        torch.backends.cudnn.benchmark = True
    # As `alexnet train` and `alexnet evaluate` do; ours and the peer share this process and it.
    tuned = keep_freed_memory()
    print(f"machine: {machine_description(device)}")
    print(f"malloc: {'keeps freed memory (alexnet.runtime.keep_freed_memory)' if tuned else 'system defaults'}")
    cudnn = f", cudnn.benchmark {torch.backends.cudnn.benchmark}" if device.type == "cuda" else ""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}{cudnn}")
    return device


def setup_with_amp(args: argparse.Namespace) -> tuple[torch.device, torch.dtype | None]:
    """:func:`setup` and ``--amp`` resolved for that device (a bad value: one line, :func:`run`)."""
    from alexnet.runtime import resolve_amp

    device = setup(args)
    return device, resolve_amp(args.amp, device)


def settings(**values: object) -> str:
    """One line naming the settings both sides ran with (printed before the RESULT lines)."""
    line = "settings (ours and peer alike): " + ", ".join(f"{k}={v}" for k, v in values.items())
    print(line, flush=True)
    return line


def training_macs(rows: list) -> int:
    """Multiply-accumulates of one training step per image, from ``alexnet.summary.layer_table`` rows.

    Forward (F), weight gradients (F again) and input gradients (F again, except for the first
    layer, whose input, the image, needs none): 3F minus the first layer's forward.
    """
    macs = [r.macs for r in rows if r.macs]
    return 3 * sum(macs) - macs[0]


def macs_per_image(model: torch.nn.Module, peer: torch.nn.Module | None = None) -> tuple[int, int]:
    """(forward, training step) multiply-accumulates of one 224 px image, counted by
    ``alexnet.summary.layer_table``; with ``peer``, ``model`` is first given its weights (a strict
    load: the same layers and shapes, so the count is the peer's)."""
    from alexnet.summary import layer_table

    if peer is not None:
        model.load_state_dict(peer.state_dict(), strict=True)
    rows = layer_table(model, 224)
    return sum(r.macs for r in rows), training_macs(rows)


def machine_description(device: torch.device | None = None) -> str:
    """CPU model and core count (and the GPU name on CUDA)."""
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = fields.get("Model name", model).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    text = f"{model}, {os.cpu_count()} logical CPUs"
    if device is not None and device.type == "cuda":
        text += f"; GPU {torch.cuda.get_device_name(device)}"
    return text


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each fn per round, timed in alternating rounds so that load from others hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        spread = f"min {min(ts):.4f} max {max(ts):.4f}" if len(ts) > 1 else ""
        print(f"  {name:<30} median {statistics.median(ts):.4f} s over {len(ts)} rounds {spread}")
    return times


def median(ts: list[float]) -> float:
    return statistics.median(ts)


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of num[i] / den[i]: the two were timed back to back, so a burst of load
    from other users cancels within a pair, which a ratio of medians does not ensure."""
    return statistics.median(a / b for a, b in zip(num, den))


def _best_rate(fn: Callable[[], object], flop: float, device: torch.device, repeats: int) -> float:
    """GFLOP/s of ``fn`` in its best round. On a GPU a round is 20 calls between synchronisations:
    one large kernel lasts tens of microseconds there, as long as a launch and a sync."""
    calls = 20 if device.type == "cuda" else 1
    fn()  # warm-up: primitive creation, cuBLAS/cuDNN heuristics
    ts = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        ts.append((time.perf_counter() - t0) / calls)
    return flop / min(ts) / 1e9  # the best round: a roof is what the machine can do


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of an n x n x n matmul: the practical compute roof of this machine (on a GPU at
    least 8192: a 2048 matmul is too small to fill an H100/H200)."""
    if device.type == "cuda" and n >= 2048:
        n = max(n, 8192)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    # cuDNN's fp32 convolutions use TF32 unless told not to (torch.backends.cudnn.allow_tf32), cuBLAS's
    # matmuls do not: an fp32 net's roof on a GPU is the matmul under the convolutions' setting.
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32
    try:
        return _best_rate(lambda: a @ b, 2 * n**3, device, repeats)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def conv_gflops(device: torch.device, repeats: int = 5, dtype: torch.dtype = torch.float32, quick: bool = False) -> float:
    """GFLOP/s of a large 3x3 convolution (channels_last, no gradient): on CPUs whose convolution
    library (oneDNN) outruns the BLAS matmul, this is the higher roof for a convolutional net."""
    b, c, hw = (2, 64, 14) if quick else (64, 256, 28)
    if device.type == "cuda" and not quick:
        b = 256
    conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(device, dtype).to(memory_format=torch.channels_last)
    x = torch.randn(b, c, hw, hw, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        return _best_rate(lambda: conv(x), 2 * b * c * c * 9 * hw * hw, device, repeats)


def result(name: str, ours: float, peer: float, unit: str, ref: bool = False) -> str:
    """The machine-readable line every benchmark ends with. ``ref=True``: the second figure is a
    reference, not a peer's measurement (a tolerance, a roofline, a trivial predictor, the pure step
    that a pipeline should keep fed): the line says ``ref=`` instead of ``peer=``."""
    ratio = ours / peer if peer else float("nan")  # e.g. a top-1 of 0 with weights that know nothing
    line = f"RESULT {name} ours={ours:.6g} {'ref' if ref else 'peer'}={peer:.6g} ratio={ratio:.6g} unit={unit}"
    print(line, flush=True)
    return line
