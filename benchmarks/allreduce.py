"""All-reduce bandwidth: is the interconnect fast enough for data-parallel AlexNet?

Every training step of a data-parallel run all-reduces AlexNet's gradients (61 M float32 = 244 MB)
in DistributedDataParallel's buckets. This measures, in the same run, interleaved round by round:

- ours: AlexNet's gradients all-reduced bucket by bucket, in the buckets DDP uses after its first
  step (it rebuilds them in the order gradients become ready, fc8 first: a first bucket that
  closes at 1 MiB, then 25 MiB ones; a parameter is never split): 15.6, 64.0, 144.0 and 8.9 MiB
  for alexnet_paper;
- peer: one all-reduce of a flat tensor of the same size (the interconnect's best case, what
  ``nccl-tests``' all_reduce_perf measures),

both as bus bandwidth (``2 (n-1) / n * bytes / seconds``, comparable across process counts), and
prints the gradient synchronisation time per step.

One machine (gloo on CPUs, NCCL on GPUs)::

    python benchmarks/allreduce.py --nproc 2 [--quick]

Many machines: start it on each with torchrun (it then runs as it is)::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 benchmarks/allreduce.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from alexnet import distributed  # noqa: E402
from alexnet.errors import ConfigError  # noqa: E402
from alexnet.model import count_parameters, create_model  # noqa: E402

BUCKET_MB = 25  # DistributedDataParallel's default bucket_cap_mb
FIRST_BUCKET_BYTES = 2**20  # torch.distributed._DEFAULT_FIRST_BUCKET_BYTES


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_allreduce(sets: dict[str, list[torch.Tensor]], iters: int, device: torch.device) -> dict[str, float]:
    """Median seconds to all-reduce every tensor of each set (one round), the sets interleaved round
    by round after a warm-up round; each the slowest rank's median (a step waits for it)."""
    times: dict[str, list[float]] = {name: [] for name in sets}
    for i in range(iters + 1):
        for name, tensors in sets.items():
            dist.barrier()
            _sync(device)
            t0 = time.perf_counter()
            for t in tensors:
                dist.all_reduce(t)
            _sync(device)
            if i:
                times[name].append(time.perf_counter() - t0)
    out = {}
    for name, ts in times.items():
        slowest = torch.tensor([statistics.median(ts)], dtype=torch.float64, device=device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        out[name] = slowest.item()
    return out


def ddp_bucket_sizes(sizes: list[int], first: int = FIRST_BUCKET_BYTES, cap: int = BUCKET_MB * 2**20) -> list[int]:
    """Byte sizes of DDP's gradient buckets for parameters of ``sizes`` bytes (in registration order),
    as DDP rebuilds them after its first step: in the order gradients become ready (the reverse), a
    parameter never split, a bucket closed once it holds its limit (``first``, then ``cap``)."""
    out, current, limit = [], 0, first
    for n in reversed(sizes):
        current += n
        if current >= limit:
            out.append(current)
            current, limit = 0, cap
    return out + ([current] if current else [])


def buckets(model: torch.nn.Module, device: torch.device, first: int, cap: int) -> list[torch.Tensor]:
    sizes = [p.numel() * 4 for p in model.parameters()]
    return [torch.ones(n // 4, dtype=torch.float32, device=device) for n in ddp_bucket_sizes(sizes, first, cap)]


def report(ours: float, peer: float, factor: float) -> None:
    """The RESULT lines from the seconds per step of ours and the peer (``factor``: the bus bytes in GB),
    through ``_common.result`` as every script: the ratio is ours/peer of the figures themselves (it
    was rounded to 3 decimals, e.g. ratio=0.012 beside ours=1 peer=81.3)."""
    from _common import result

    result("allreduce_busbw", factor / ours, factor / peer, "GB/s")
    result("grad_sync_ms", ours * 1e3, peer * 1e3, "ms")


def launch_device(name: str, nproc: int) -> str:
    """The device every rank of ``nproc`` on this machine uses, decided once before launching.

    ``auto``: NCCL on the GPUs when there is one per process, else gloo on the CPUs (said out
    loud); ``cuda`` with fewer GPUs than processes: a ConfigError (one GPU per process).
    """
    from alexnet.runtime import resolve_device

    device = resolve_device(name)  # ConfigError for --device cuda without a GPU
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and count < nproc:
        if name != "auto":
            raise ConfigError(f"--device {name}: {nproc} processes need {nproc} GPUs but this machine has "
                              f"{count} CUDA device(s); use --nproc {count} or --device cpu")
        print(f"{nproc} processes but {count} CUDA device(s): benchmarking gloo on the CPUs (--device cpu)", flush=True)
        return "cpu"
    return device.type if device.type in ("cpu", "cuda") else "cpu"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2, help="processes on this machine when not started by torchrun")
    p.add_argument("--quick", action="store_true", help="a small tensor and few rounds (CI)")
    from _common import whole  # beside this script (sys.path[0]), as in every rank torchrun starts

    # At least one timed round: --iters 0 was statistics' 'no median for empty data' traceback in every rank.
    p.add_argument("--iters", type=whole(1), default=10)
    p.add_argument("--device", default="auto",
                   help="auto (NCCL on the GPUs if there is one per process, else gloo on CPUs), cpu or cuda")
    args = p.parse_args()
    if not distributed.launched():
        if args.nproc < 1:
            p.exit(2, f"allreduce.py: error: --nproc {args.nproc}: expected a positive number of processes\n")
        try:
            device = launch_device(args.device, args.nproc)
        except ConfigError as e:
            p.exit(2, f"allreduce.py: error: {e}\n")
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, distributed.cpu_cores() // args.nproc)))
        rest = distributed.without_option(distributed.without_option(sys.argv[1:], "--nproc"), "--device")
        with tempfile.TemporaryDirectory(prefix="allreduce-torchrun-") as logs:  # else torchrun leaves a torchelastic_* folder
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
                   f"--log-dir={logs}", __file__]
            return subprocess.call(cmd + rest + ["--device", device], env=env)
    info = distributed.env_info()
    try:
        device = distributed.rank_device(args.device, info)
    except ConfigError as e:  # started by torchrun with more ranks than GPUs: one line per rank
        print(f"allreduce.py: error: {e}", file=sys.stderr)
        return 2
    distributed.setup(info, device, 300)
    try:
        if args.quick:  # a thin net (2.2 M floats), limits scaled down alike
            model = create_model("alexnet_paper", widths=(8, 8, 8, 8, 8), fc_width=512, input_size=67)
            first, cap, iters = 2**16, 2**20, 3
        else:
            model, first, cap, iters = create_model("alexnet_paper"), FIRST_BUCKET_BYTES, BUCKET_MB * 2**20, args.iters
        numel = count_parameters(model)
        sets = {"ours": buckets(model, device, first, cap), "peer": [torch.ones(numel, dtype=torch.float32, device=device)]}
        n_buckets = len(sets["ours"])
        secs = time_allreduce(sets, iters, device)
        ours, peer = secs["ours"], secs["peer"]
        n = info.world
        factor = 2 * (n - 1) / n * numel * 4 / 1e9
        if info.is_main:
            backend = dist.get_backend()
            print(f"{n} processes, {backend} on {device.type}; {numel:,} float32 gradients ({numel * 4 / 1e6:.0f} MB)")
            ours_label = f"ours (AlexNet's gradients in DDP's {n_buckets} buckets)"
            for label, t in ((ours_label, ours), ("peer (one flat all-reduce of the same bytes)", peer)):
                print(f"{label:<54} {t * 1e3:9.2f} ms/step  bus bandwidth {factor / t:7.3f} GB/s")
            report(ours, peer, factor)
    finally:
        distributed.teardown()
    return 0


if __name__ == "__main__":
    import _common  # here: the pipelines' and ranks' processes import this module, not its main

    _common.run(main)
