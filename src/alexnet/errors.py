"""Exceptions for problems a user can fix. The CLI prints them as one line and exits non-zero."""

import errno
import os
import re
from collections.abc import Mapping
from typing import Any

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_OR_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def terminal_text(text: str, one_line: bool = False) -> str:
    """``text`` for a terminal: control characters as ``\\xNN``, so that a file or class named with an
    escape sequence (``ESC[2J``, ``ESC]0;title BEL``) cannot clear, recolour or retitle the terminal,
    or a carriage return overwrite what was printed; ``one_line`` escapes newlines and tabs too (a
    name printed on a line of its own)."""
    return (_CONTROL_OR_LINE if one_line else _CONTROL).sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class AlexNetError(Exception):
    """Base class: a user-facing error with a message that names the problem. Which ranks of a
    torchrun run say it: :func:`rank_voice`."""

    exit_status = 2  # of the command line: the input or the options are to mend
    # True for a stop that every rank of a distributed run decided together, from numbers they
    # shared: each raises it, and rank 0 alone says it.
    every_rank: bool = False
    # True for an error of this rank's own (its device, its joining the process group, anything met
    # once the ranks train together): it says it, naming itself. Set by :func:`rank_own`.
    own_rank: bool = False


def rank_own(error: AlexNetError) -> AlexNetError:
    """``error`` marked as its rank's own (:attr:`AlexNetError.own_rank`): ``raise rank_own(ConfigError(...))``."""
    error.own_rank = True
    return error


def rank_voice(error: BaseException | None) -> str | None:
    """How this process says ``error`` (None: argparse's refusal of the command line, or a Ctrl-C or
    SIGTERM, which reach every rank of a machine alike) when torchrun started it as one of several
    ranks: '' (as it is), 'rank N: ' before it, or None (another rank says it; this one exits without
    a word). One process: ''.

    - an ``every_rank`` stop: rank 0 says it;
    - an error of the request (options, paths, presets, config, the checkpoint to resume): every rank
      of a machine reads the same command line and files before the ranks join their process group,
      so local rank 0 says it, once a machine (naming itself where there are several machines);
    - anything else (a rank's own device, a data-loading worker's death, what is met once the ranks
      train together, a bug): each rank that meets it, naming itself unless its message does.

    The quiet ranks exit 0, not with the error's status: torchrun stops the other ranks with SIGTERM
    at the first failure it sees, which could come before the speaking rank had said anything; its
    summary names the rank that failed, the one that said why."""
    env = os.environ
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank, local_world = int(env.get("LOCAL_RANK", rank)), int(env.get("LOCAL_WORLD_SIZE", world))
    except (KeyError, ValueError):  # no torchrun, or its variables unreadable (env_info says so)
        return ""
    named = "" if error is not None and re.search(rf"\brank {rank}\b", str(error)) else f"rank {rank}: "
    if world <= 1:
        return ""
    if getattr(error, "every_rank", False):
        return "" if rank == 0 else None
    if error is None or (isinstance(error, AlexNetError) and not error.own_rank and not isinstance(error, MachineLimit)):
        # several machines (torchrun --nnodes): each one's local rank 0, naming itself (its files may differ)
        return None if local_rank != 0 else "" if local_world == world else named
    return named


class ConfigError(AlexNetError, ValueError):
    """An invalid option or combination of options."""


class UnknownModelError(ConfigError, KeyError):
    """A model name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DataError(AlexNetError):
    """Missing, empty or unreadable data."""


class DataGone(DataError):
    """A folder of the data, there when the command listed its images, gone while it read them (moved,
    deleted, a disk unmounted): not a matter of the files, each of which would otherwise be skipped as
    unreadable. ``resume``: as MachineLimit's, the line that continues a training run once it is back."""

    exit_status = 1
    resume: str | None = None


class CheckpointError(AlexNetError):
    """A file that is not a usable checkpoint, or one that does not fit the request."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """No file at the path given: also a FileNotFoundError, as torch.load's would be, for Python callers."""


class TrainingError(AlexNetError):
    """Training cannot go on (e.g. a non-finite loss)."""


class NonFiniteLoss(TrainingError):
    """A loss that is NaN or infinite on some rank, where the run does not skip such batches."""

    every_rank = True


class Interrupted(TrainingError):
    """Ctrl-C during training: the state was saved and the run can be resumed."""


class StoppedAtOnce(TrainingError):
    """A second Ctrl-C (or SIGTERM) before the run's first checkpoint: nothing to keep, so the run
    folder is cleared as after any failure of a new run (the CLI exits 130 all the same)."""


_SIZE = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) from checkpoint, "
                   r"the shape in current model is torch\.Size\((\[.*?\])\)")


def state_dict_mismatch(error: Exception, most: int = 3) -> str:
    """What ``load_state_dict``'s error says beyond its first line ("Error(s) in loading state_dict
    for AlexNet:"): which tensors are missing, unexpected or of another shape."""
    text = str(error).strip()
    lines = [line.strip().rstrip(".") for line in text.splitlines()[1:] if line.strip()]
    if not lines:
        return text.splitlines()[0] if text else type(error).__name__
    said = []
    for line in lines[:most]:
        m = _SIZE.match(line)
        said.append(f"{m[1]} is {m[2]} in the file but {m[3]} in the model" if m else line)
    return "; ".join(said) + (f" (and {len(lines) - most} more)" if len(lines) > most else "")


def check_weights(state: Mapping[Any, Any], source: str, most: int = 3) -> None:
    """CheckpointError naming ``source`` unless ``state`` maps names (strings) to floating-point
    tensors that hold data (not meta tensors), none of them NaN or inf: such weights give NaN
    outputs (a model that predicts nothing, a loss that is NaN from the first step)."""
    import torch  # here, not with the module: the command line reads its options before torch loads

    odd = [k for k, v in state.items() if not isinstance(k, str) or (isinstance(v, torch.Tensor) and v.is_meta)]
    if odd:
        raise CheckpointError(f"{source}: its weights are not a state dict of named tensors with data (entry {odd[0]!r})")
    # Loading would cast integers, flags and complex numbers to float without a word: not weights.
    kinds = [f"{k} is {str(v.dtype).replace('torch.', '')}" for k, v in state.items() if isinstance(v, torch.Tensor)
             and not v.is_floating_point() and not k.endswith("num_batches_tracked")]
    if kinds:
        raise CheckpointError(f"{source}: its weights must be floating point, but {', '.join(kinds[:most])}"
                              f"{f' and {len(kinds) - most} more' if len(kinds) > most else ''}; refused")
    bad = []
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not value.is_sparse:
            n = nonfinite(value)
            if n:
                bad.append(f"{name} ({n:,} of {value.numel():,} values)")
    if bad:
        more = f" and {len(bad) - most} more" if len(bad) > most else ""
        raise CheckpointError(f"{source}: weights hold NaN or inf: {', '.join(bad[:most])}{more}; refused")


def nonfinite(value: Any, chunk: int = 1 << 20) -> int:
    """How many of a floating-point tensor's values are NaN or inf, counted ``chunk`` values at a
    time: ``torch.isfinite`` of a whole tensor makes a copy of its absolute values and masks as
    large (fc6's weight of 151 MB: about 300 MB more), which malloc then keeps for the process."""
    import torch

    flat = value.reshape(-1)  # a view, unless the tensor is not contiguous
    return sum(part.numel() - int(torch.isfinite(part).sum()) for part in flat.split(chunk))


def check_labels(labels: Any, classes: int, path: object, whose: str) -> None:
    """DataError naming ``path`` unless every one of ``labels`` (an integer array) indexes one of
    ``classes`` classes (``whose``: whose classes, for the message): a label out of range ends
    training in cross-entropy's bare IndexError, or evaluation in a bincount's."""
    odd = labels[(labels < 0) | (labels >= classes)]
    if len(odd):
        raise DataError(f"{path}: labels outside 0..{classes - 1} ({whose}): {len(odd):,} of {len(labels):,}, e.g. {odd[0]}")


class MachineLimit(Exception):
    """A limit of this machine met (its memory, its shared memory, a data-loading worker the kernel
    killed), not bad input: the command line exits 1. ``resume``: the line that continues a training
    run so stopped, which the run folder adds where it keeps a checkpoint (runfolder.RunFolder).
    ``workers_memory``: the data-loading workers' memory ran short, so fewer of them ask for less;
    ``shared_memory``: their shared memory (/dev/shm), which --workers 0 does not use."""

    exit_status = 1
    resume: str | None = None

    def __init__(self, message: str, workers_memory: bool = False, shared_memory: bool = False) -> None:
        super().__init__(message)
        self.workers_memory, self.shared_memory = workers_memory, shared_memory


class OutOfMemory(MachineLimit, MemoryError):
    """This machine ran out of memory for what was asked. The message names what ran out, how much
    was asked and what asks for less."""


# torch's CPU allocator (c10/core/impl/alloc_cpu.cpp: posix_memalign's failure, and plain malloc's)
_CPU_FAILED = r"DefaultCPUAllocator: (?:can't allocate memory|not enough memory)"
_CPU_ASK = re.compile(_CPU_FAILED + r": you tried to allocate (\d+) bytes")
_RECORDED = re.compile(r"^\w*MemoryError\b|" + _CPU_FAILED)  # a reason as BadFiles records it: "Type: message"
_DEVICE_ASK = re.compile(r"[Tt]ried to allocate ([\d.]+ ?[KMGTP]?i?B)")
_CUDA_FREE = re.compile(r"GPU (\d+) has a total capacity of ([\d.]+ [KMGTP]?i?B) of which ([\d.]+ [KMGTP]?i?B) is free")
_LIBRARY_ALLOC = re.compile(r"\b(CUBLAS|CUDNN|CUSOLVER|CUFFT)_STATUS_ALLOC_FAILED\b")
_NUMPY_ASK = re.compile(r"Unable to allocate (\d+)\.?\d* ([KMGTP]?i?B) for an array")


def recorded_as_memory(reason: str) -> bool:
    """Whether a reason recorded for an unreadable file ("MemoryError: ...", or torch's allocator's
    words) was a want of memory: releases before :func:`decoding_failure` listed such images as bad."""
    return bool(_RECORDED.search(reason))


def _mib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{max(1, round(n / 2**20))} MiB"


def memory_shortage(error: BaseException) -> tuple[str, bool] | None:
    """What ran out, where ``error`` is a failure to allocate memory ('out of CPU memory (it tried to
    allocate 384 MiB)'), and whether a data-loading worker process ran out (its error re-raised in
    the main process; one the kernel killed outright is not told apart from other deaths); None for
    any other error.
    Only torch's and Python's own allocation failures count, by their type or the allocator's words."""
    import sys

    torch = sys.modules.get("torch")
    text = str(error)
    worker = "in DataLoader worker process" in text
    numpy_ask = _NUMPY_ASK.search(text)
    ours = re.search(r"OutOfMemory: (.+)\s*$", text) if worker else None  # a worker's decoding_failure
    if ours:
        return f"a data-loading worker ran {ours[1].strip()}", True
    if worker and re.match(r"Caught (_Array)?MemoryError in DataLoader worker process", text):  # numpy's: as a RuntimeError
        return "a data-loading worker ran out of CPU memory" + (f" (it tried to allocate {numpy_ask[1]} {numpy_ask[2]})"
                                                                 if numpy_ask else ""), True
    ask = _CPU_ASK.search(text)
    if ask:
        said = f"out of CPU memory (it tried to allocate {_mib(int(ask[1]))})"
    elif isinstance(error, MemoryError):  # Python's own (numpy, PIL), or one of ours saying where
        why = f"it tried to allocate {numpy_ask[1]} {numpy_ask[2]}" if numpy_ask else " ".join(text.split()) if not worker else ""
        said = "out of CPU memory" + (f" ({why})" if why else "")
    elif torch is not None and isinstance(error, torch.cuda.OutOfMemoryError):
        said = f"out of memory on {_device_of(text)}{_device_ask(text)}"
    elif isinstance(error, RuntimeError) and _LIBRARY_ALLOC.search(text):
        said = f"out of memory on the CUDA device ({_LIBRARY_ALLOC.search(text)[0]})"
    else:
        return None
    return (f"a data-loading worker ran {said}" if worker else said), worker


def _device_of(text: str) -> str:
    """The device that torch's OutOfMemoryError names."""
    found = _CUDA_FREE.search(text)
    if found:
        return f"cuda:{found[1]}"
    return "the MPS device" if "MPS" in text else "the CUDA device"


def _device_ask(text: str) -> str:
    """' (it tried to allocate 2.00 GiB; 1.50 MiB of its 79.19 GiB free)', as much as torch's message says."""
    ask, free = _DEVICE_ASK.search(text), _CUDA_FREE.search(text)
    parts = ([f"it tried to allocate {ask[1]}"] if ask else []) + ([f"{free[3]} of its {free[2]} free"] if free else [])
    return f" ({'; '.join(parts)})" if parts else ""


def decoding_failure(error: BaseException, path: object) -> OutOfMemory | None:
    """``error``, raised decoding the image ``path``, as OutOfMemory naming the file where it is a
    failure to allocate memory (no fault of the file's: it is not to be skipped as unreadable); None
    for any other error."""
    short = memory_shortage(error)
    if short is None:
        return None
    error.__traceback__ = None  # its frames hold the half-decoded image: freed before the error is passed on
    return OutOfMemory(f"{short[0]} decoding {path}")


class WorkerExited(RuntimeError):
    """A data-loading worker process that ended without an error of its own (killed by a signal, or
    exited), as the loader met it (:func:`alexnet.data.sources.told_worker_deaths`): torch says such
    a death, by where this process was when it came, as 'Connection reset by peer', as 'exited
    unexpectedly' or by the signal's name. A RuntimeError, as torch's own words are."""

    def __init__(self, pid: int, exitcode: int) -> None:
        super().__init__(f"DataLoader worker (pid {pid}) exited with exitcode {exitcode}")
        self.pid, self.exitcode = pid, exitcode


class WorkerSocketLost(RuntimeError):
    """This process could not reach the socket through which a data-loading worker hands over a batch:
    the socket's file, in the folder that multiprocessing makes under TMPDIR (``pymp-...``), was deleted
    while the command ran (:func:`alexnet.data.sources.lost_worker_socket`). A RuntimeError, as WorkerExited."""

    def __init__(self, address: str) -> None:
        super().__init__(f"the socket {address} of a DataLoader worker is gone")
        self.address = address


class WorkersUnstarted(RuntimeError):
    """A DataLoader's worker processes could not be started: no room in shared memory (/dev/shm) for
    the semaphores of their queues, which multiprocessing said as a bare 'No space left on device'
    (:func:`alexnet.data.sources.start_workers`). A RuntimeError, as a dead worker's WorkerExited."""


class WorkerDied(MachineLimit, AlexNetError):
    """A data-loading worker process died, or could not be started: a limit of the machine (the kernel
    kills a process for want of memory, shared memory runs out) or a crash, which the command line
    says as a limit (exit 1)."""


# A worker's exit status where multiprocessing could not send a batch it made (data.sources.exit_on_unsent_batch):
# its tensors go through shared memory (/dev/shm), and without room there the batch was dropped, unsaid.
UNSENT_SHARED_MEMORY = 75  # sysexits' EX_TEMPFAIL: /dev/shm had no room for it
UNSENT_OTHER = 70  # EX_SOFTWARE: another failure to send it


# torch's words where posix_fallocate found no room for a tensor in /dev/shm (ATen's MapAllocator)
_TORCH_SHM_ALLOCATE = re.compile(r"unable to allocate shared memory\(shm\) for file <[^>]*>: [^\n]*\((\d+)\)")
# posix_fallocate's errors that are not a want of room. torch 2.10 and 2.11 at least (pytorch#176069) state
# errno instead of its error, a stale number from an earlier call: 'Resource temporarily unavailable (11)'
# on torch 2.11 in a full /dev/shm; any number outside these is that, and the room is what was wanting.
_FALLOCATE_OTHER = {errno.EBADF, errno.EFBIG, errno.EINTR, errno.EINVAL, errno.ENODEV, errno.EOPNOTSUPP,
                    errno.EPERM, errno.ESPIPE}


def is_shared_memory_shortage(error: BaseException) -> bool:
    """Whether ``error``, raised putting a tensor in shared memory, is a want of room there (torch: 'unable
    to allocate shared memory(shm) for file </torch_...>: No space left on device (28)')."""
    text = str(error)
    if (found := _TORCH_SHM_ALLOCATE.search(text)) and int(found[1]) not in _FALLOCATE_OTHER:
        return True
    return getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in text or "Cannot allocate memory" in text


# torch's words for a worker's death (torch/csrc/DataLoader.cpp, torch/utils/data/dataloader.py)
_TORCH_KILLED = re.compile(r"DataLoader worker \(pid (\d+)\) is killed by signal: ([^.]+)\.")
_TORCH_EXITED = re.compile(r"DataLoader worker \(pid (\d+)\) exited unexpectedly with exit code (\d+)")
_TORCH_GONE = re.compile(r"DataLoader worker \(pid\(s\) ([\d, ]+)\) exited unexpectedly")


def _worker_end(error: BaseException) -> tuple[str, int | None, int | None] | None:
    """(pid, signal number, exit status) of the worker death ``error`` tells, either number None where
    it does not say; None for any other error."""
    import signal

    if isinstance(error, WorkerExited):
        code = error.exitcode
        return str(error.pid), (-code if code < 0 else None), (code if code >= 0 else None)
    text = str(error)
    if found := _TORCH_KILLED.search(text):
        names = {signal.strsignal(s): s for s in signal.Signals if signal.strsignal(s)}
        return found[1], int(names.get(found[2].strip(), 0)) or None, None
    if found := _TORCH_EXITED.search(text):
        return found[1], None, int(found[2])
    if found := _TORCH_GONE.search(text):
        return found[1], None, None
    return None


def is_worker_death(error: BaseException) -> bool:
    """Whether ``error`` tells that a data-loading worker process died (torch's words, or WorkerExited)."""
    return _worker_end(error) is not None


def _shared_memory_room() -> str:
    """' (/dev/shm: 12 MiB free of 64 MiB; docker run --shm-size gives a container more)': what is
    free where shared memory ran short, and what gives more."""
    def size(n: int) -> str:  # a container's is 64 MiB; less is said in KiB
        return _mib(n) if n >= 2**20 else f"{n // 1024} KiB"

    try:
        st = os.statvfs("/dev/shm")
        free = f"/dev/shm: {size(st.f_bavail * st.f_frsize)} free of {size(st.f_blocks * st.f_frsize)}"
    except (AttributeError, OSError):  # no such folder (macOS, Windows)
        free = "shared memory"
    return f" ({free}; docker run --shm-size gives a container more)"


def _how_it_ended(signum: int | None, status: int | None) -> str:
    """'was killed by SIGKILL', 'exited with status 3', ... of a worker that ended so."""
    import signal

    if signum is not None:
        try:
            return f"was killed by {signal.Signals(signum).name}"
        except ValueError:  # a number this platform does not name
            return f"was killed by signal {signum}"
    if status == UNSENT_SHARED_MEMORY:
        return "could not pass a batch to this process for want of shared memory"
    if status == UNSENT_OTHER:
        return "could not pass a batch to this process (it said why above)"
    return "ended unexpectedly" if status is None else f"exited with status {status}"


def worker_lost(error: BaseException, doing: str, workers: str | None = None) -> WorkerDied | None:
    """``error``, where it tells that a data-loading worker process died (:func:`_worker_end`), as one
    line: which worker, how, ``doing`` ('in evaluate'), the likely cause and ``workers`` ('--workers (2 now)'),
    the option that asks for less; workers that could not be started (WorkersUnstarted) likewise. None
    for any other error; a WorkerDied is returned as it is."""
    import signal

    if isinstance(error, WorkerDied):
        return error
    if isinstance(error, WorkersUnstarted):  # no room for their queues' semaphores: not a matter of the batches
        return WorkerDied(f"data-loading worker processes could not be started for want of shared memory {doing}"
                          + _shared_memory_room() + (f": lower {workers}; --workers 0 uses none" if workers else ""),
                          workers_memory=True, shared_memory=True)
    if isinstance(error, WorkerSocketLost):
        return _socket_lost(error.address, doing, workers)
    found = _worker_end(error)
    if found is None:
        return None
    pid, signum, status = found
    who = f"data-loading worker processes (pids {pid})" if "," in pid else f"a data-loading worker process (pid {pid})"
    said = f"{who} {_how_it_ended(signum, status)} {doing}"
    shared = signum == getattr(signal, "SIGBUS", None) or status == UNSENT_SHARED_MEMORY
    memory = shared or signum == getattr(signal, "SIGKILL", None)
    if signum == getattr(signal, "SIGKILL", None):
        said += ", most likely by the kernel for want of memory (its log, dmesg, names what it killed)"
    elif shared:
        said += (", most likely for want of shared memory" if signum else "") + _shared_memory_room()
    if workers:
        said += f": lower {workers}, or the batch size; --workers 0 uses none" if shared else f": lower {workers}" if memory \
            else "; --workers 0 loads the data in this process, where its error shows"
    return WorkerDied(said, workers_memory=memory, shared_memory=shared)


def _socket_lost(address: str, doing: str, workers: str | None) -> WorkerDied:
    """A worker's socket deleted (WorkerSocketLost) as one line: a cleaner of old files in TMPDIR (systemd's
    ten days in /tmp, a cron job) or an rm while the command ran; what it said was 'No such file or directory'."""
    folder = os.path.dirname(address)
    gone = " with its folder" if not os.path.isdir(folder) else ""
    return WorkerDied(f"a data-loading worker's socket {address} was deleted{gone} {doing} (by a cleaner of old files in "
                      f"{os.path.dirname(folder) or folder}, or an rm): set TMPDIR to a folder that nothing cleans while alexnet "
                      "runs" + ("; --workers 0 uses no such socket" if workers else ""))


def out_of_memory(error: BaseException, doing: str, lower: str | None = None, workers: str | None = None) -> OutOfMemory | None:
    """``error``, where it is a failure to allocate memory (:func:`memory_shortage`), as one line:
    what ran out, ``doing`` ('in evaluate'), and the option that asks for less: ``lower`` ('--batch-size
    (256 now)'), or for a data-loading worker's, ``workers``. None for any other error; an
    OutOfMemory already said is returned as it is."""
    if isinstance(error, OutOfMemory) and "in DataLoader worker process" not in str(error):
        return error
    found = memory_shortage(error)
    if found is None:
        return None
    said, worker = found
    option = workers if worker and workers else lower
    return OutOfMemory(f"{said} {doing}" + (f": lower {option}" if option else ""), workers_memory=worker)


def machine_limit(error: BaseException, doing: str, lower: str | None = None, workers: str | None = None) -> MachineLimit | None:
    """``error`` as one line where it is a limit of this machine met ``doing`` ('in evaluate'): memory
    that ran out (:func:`out_of_memory`: ``lower``, the option that asks for less, or ``workers``
    where a data-loading worker's ran out) or a worker process that died (:func:`worker_lost`). None
    for any other error; one already said is returned as it is."""
    return out_of_memory(error, doing, lower, workers) or worker_lost(error, doing, workers)
