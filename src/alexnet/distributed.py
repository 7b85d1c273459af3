"""Data parallelism over processes, GPUs and machines: plain functions around ``torch.distributed``.

The processes are started by ``torchrun`` (or ``alexnet train --nproc N``, which runs it), which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``.
Without those variables every function here is a no-op for one process, so the training loop
calls them unconditionally.
"""

from __future__ import annotations

import datetime
import gc
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from . import runfolder
from .atomic import STOP_SIGNALS
from .errors import ConfigError, TrainingError, rank_own
from .runtime import chosen_threads, shell_arg

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def enabled(self) -> bool:
        """Whether the run has more than one process."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that logs and writes the run's files."""
        return self.rank == 0


def env_info() -> DistInfo:
    """The process's place in the run, from torchrun's environment variables (one process if unset)."""
    values = {}
    for name, key, default in (
        ("RANK", "rank", 0),
        ("WORLD_SIZE", "world", 1),
        ("LOCAL_RANK", "local_rank", 0),
        ("LOCAL_WORLD_SIZE", "local_world", None),
    ):
        text = os.environ.get(name)
        try:
            values[key] = int(text) if text not in (None, "") else default
        except ValueError:
            raise ConfigError(f"environment variable {name}={text!r} is not a whole number") from None
    if values["local_world"] is None:
        values["local_world"] = values["world"]
    info = DistInfo(**values)
    if not 0 <= info.rank < info.world or not 0 <= info.local_rank < info.local_world:
        raise ConfigError(f"bad torchrun environment: RANK={info.rank} WORLD_SIZE={info.world} LOCAL_RANK={info.local_rank}")
    return info


def launched() -> bool:
    """Whether this process was started by torchrun (or an equivalent launcher)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; where there is none, every core)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def rank_device(name: str, info: DistInfo) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` on GPUs, the CPU otherwise."""
    from .runtime import resolve_device

    device = resolve_device(name)
    if not info.enabled:
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count()
        index = device.index if device.index is not None and info.local_world == 1 else info.local_rank
        if index >= count:  # this rank's device: the ranks below it have theirs
            raise rank_own(ConfigError(
                f"rank {info.rank} needs cuda:{index} but this machine has {count} CUDA device(s): "
                f"start at most {count} processes per machine (--nproc / --nproc-per-node)"
            ))
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise ConfigError(f"--device {name}: distributed training runs on CUDA (NCCL) or on CPUs (gloo), not {device.type}")
    return device


def setup(info: DistInfo, device: torch.device, timeout_s: float) -> None:
    """Join the process group: NCCL when this rank trains on a GPU, gloo on CPUs.

    ``timeout_s`` bounds every collective: a rank that dies or hangs makes the others stop with an
    error after at most this long instead of waiting for ever.
    """
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        # N ranks on one machine share its cores; torch would give each of them all of the cores.
        torch.set_num_threads(chosen_threads() or max(1, cpu_cores() // info.local_world))
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as e:
        raise rank_own(TrainingError(
            f"rank {info.rank} could not join the {backend} process group at {where}: {_first_line(e)}"
        )) from None


def teardown() -> None:
    """Leave the process group (never raises: it also runs after a failure).

    The DDP wrapper sits in reference cycles and holds the process group through its reducer; if
    only the interpreter's exit frees it, gloo's worker threads are torn down during finalization
    and the process can die in ``std::terminate`` (SIGABRT) after a successful run. So collect
    the cycles first, while everything is alive.
    """
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a peer is gone: nothing left to tidy
            pass


def _reduce_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sums over all ranks (float64, so counts stay exact); unchanged for one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank (e.g. Ctrl-C seen by one of them)."""
    return all_reduce_sum([float(flag)])[0] > 0


def all_gather_object(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` for one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank of the process group; nothing when none is initialised (one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def is_comm_error(e: BaseException) -> bool:
    """Whether ``e`` says that another rank died, hung or became unreachable."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(
        w in text for w in ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket", "broken pipe")
    )


def lost_peer(e: BaseException) -> BaseException | None:
    """The error of ``e``'s chain that says another rank was lost: ``e`` itself, or one it was raised
    while handling. torchrun's agent stops the surviving ranks with SIGTERM once one has died; it met
    rank 0 as it closed its loader's workers after the lost connection, and the KeyboardInterrupt it
    raised had said 'alexnet: interrupted' in place of the lost rank and the command to continue."""
    seen: set[int] = set()
    error: BaseException | None = e
    while error is not None and id(error) not in seen:
        if is_comm_error(error):
            return error
        seen.add(id(error))
        error = error.__context__
    return None


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    # gloo prefixes its source location ("[.../pair.cc:545] Read error ...") and adds advice.
    return re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", lines[0]).split(". ")[0]


def resume_command(run_dir: Any, info: DistInfo) -> str:
    """The command that continues the run in ``run_dir`` as it was started (one process, --nproc N,
    or torchrun on several machines)."""
    if not info.enabled:
        hint = ""
    else:
        hint = f" --nproc {info.world}" if info.world == info.local_world else " (started by torchrun as before)"
    return f"alexnet train --resume {shell_arg(run_dir)}{hint}"


def comm_failure(e: BaseException, info: DistInfo, run_dir: Any) -> TrainingError:
    """The one-line error for a run stopped by a lost rank."""
    return TrainingError(
        f"rank {info.rank}: another process of the distributed run stopped or stopped answering "
        f"({_first_line(e)[:200]}); the last checkpoint is {Path(run_dir) / runfolder.LAST_NAME}; "
        f"continue with: {resume_command(run_dir, info)}"
    )


# -- the launcher behind `alexnet train --nproc N` ------------------------------------------------
def without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE`` (so torchrun's workers do not re-launch)."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == option:
            skip = True
        elif not item.startswith(option + "="):
            out.append(item)
    return out


def _named_failure(e: ChildFailedError) -> tuple[int, ProcessFailure]:
    """The failed rank the launcher's line names, and its failure, of torchrun's ``ChildFailedError``.

    torchrun orders failures by time stamps in whole seconds, and lists the ranks it found stopped at
    one look in rank order: a rank killed by SIGKILL (the kernel's OOM killer, say) and rank 0, which
    had exited 2 on the lost connection before the agent looked, tied, and the line blamed rank 0
    ('rank 0 exited with code 2', exit 2). A rank killed by a signal other than a stop request is
    named first: no rank dies of one because another failed. Not one the agent killed itself, 30 s
    after its SIGTERM (a rank stuck in a collective): its time stamp is that much later.
    """
    stops = STOP_SIGNALS  # the agent stops the other ranks with SIGTERM; a hang-up stops a rank too
    first = min(f.timestamp for f in e.failures.values())
    killed = [r for r, f in sorted(e.failures.items())
              if f.exitcode < 0 and -f.exitcode not in stops and f.timestamp <= first + 1]
    if killed:
        rank = min(killed, key=lambda r: e.failures[r].timestamp)
        return rank, e.failures[rank]
    rank, failure = e.get_first_failure()
    if 0 in e.failures and e.failures[0].exitcode == failure.exitcode:
        rank, failure = 0, e.failures[0]  # ranks that stopped alike: rank 0 said why (cli: every_rank)
    return rank, failure


def launch(nproc: int, argv: list[str], run_dir: str | None) -> int:
    """Run ``alexnet ARGV`` in ``nproc`` processes on this machine with torchrun; returns an exit code.

    torchrun's agent runs in this process, so that a failed rank ends in one line saying which rank
    failed and how to continue, instead of the agent's traceback.
    """
    import logging
    import signal

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun would give each process 1 thread; give each its share of the cores instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cpu_cores() // nproc)))
    # The summary below says what the agent would log ("Received 15 death signal, shutting down
    # workers"); each of its loggers has its own level (torch sets one per module), so each is set.
    for name in ["torch.distributed.elastic", *logging.root.manager.loggerDict]:
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    # The agent's own log folder (error.json of a failed rank) is ours to remove: left to torchrun, an
    # empty torchelastic_* tree stayed in the temporary folder after every run.
    logs = tempfile.mkdtemp(prefix="alexnet-torchrun-")
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", f"--log-dir={logs}", "-m", "alexnet", *argv])

    def resume() -> str:  # asked when the run has ended: its checkpoint exists or not by then
        if run_dir is not None and not (Path(run_dir) / runfolder.LAST_NAME).is_file():
            return "no checkpoint had been written yet: nothing to resume"
        return f"continue from the last checkpoint with: alexnet train --resume {shell_arg(run_dir) if run_dir else 'RUN'} --nproc {nproc}"

    try:
        run(args)
        return 0
    except ChildFailedError as e:
        rank, failure = _named_failure(e)
        if failure.exitcode == 130:  # Ctrl-C on any rank: every rank saved the same step and stopped
            print(f"alexnet: interrupted; {resume()}", file=sys.stderr)
            return 130
        if failure.exitcode < 0:
            try:
                how = f"was killed by {signal.Signals(-failure.exitcode).name}"
            except ValueError:
                how = f"was killed by signal {-failure.exitcode}"
        else:
            how = f"exited with code {failure.exitcode} (its message is above)"
        print(f"alexnet: error: the {nproc}-process run stopped: rank {rank} {how}; {resume()}", file=sys.stderr)
        return 2 if failure.exitcode == 2 else 1  # 2: the rank refused bad input, as one process does
    except (KeyboardInterrupt, SignalException):
        print(f"alexnet: interrupted; {resume()}", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(logs, ignore_errors=True)
