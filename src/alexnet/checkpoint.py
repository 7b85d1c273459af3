"""Checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(..., weights_only=True)``. Keys:

- ``model``: the state dict; ``model_config``: :class:`AlexNetConfig` as a dict;
- ``classes``: class names in index order; ``preprocess``: how inputs were prepared;
- ``folders``: a trained run's class folders in index order (its classes may name them otherwise);
- training state (``optimizer``, ``epoch``, ``rng``, ...) in ``last.pt``, when present.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from . import atomic, faults, jsonio, runfolder
from .data import presets
from .data.folder import class_name
from .data.presets import Preprocess
from .errors import (
    CheckpointError,
    CheckpointNotFound,
    DataError,
    OutOfMemory,
    check_weights,
    is_worker_death,
    memory_shortage,
    state_dict_mismatch,
)
from .model import AlexNet, AlexNetConfig
from .runtime import device_argument

FORMAT = "alexnet-checkpoint-1"  # what train.py and interop.py write under "format"


def _on_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in its dicts, lists and tuples moved to the CPU (CPU ones as they are)."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """Save ``obj`` with ``torch.save`` so that ``path`` is either the old file or the new one.

    The data goes to a temporary file in the same folder, is flushed and fsynced, then renamed
    over ``path`` (rename is atomic within a file system). On any failure (a full disk, say) the
    temporary file is removed and the previous ``path`` is untouched. Tensors are stored on the CPU:
    a checkpoint trained on a GPU loads with plain ``torch.load`` on a machine without one.
    """
    path = Path(path)
    obj = _on_cpu(obj)
    fd, tmp = atomic.temporary(path)  # a read-only folder is named by the file asked for
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as f:
            if faults.ACTIVE:  # tests only (ALEXNET_FAULT=kill:write): die with half a temporary file
                faults.reached("write", before=lambda: faults.write_half(obj, f))
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, RuntimeError) and isinstance(e.__context__, KeyboardInterrupt):
            # torch.save's writer reports an interrupt inside its write() as '[enforce fail at
            # inline_container.cc] unexpected pos': a second Ctrl-C is an interrupt, not a failed write
            raise e.__context__ from None
        if isinstance(e, RuntimeError) and e.__context__ is not None and is_worker_death(e.__context__):
            # torch's SIGCHLD handler raises a data-loading worker's death wherever this process is:
            # inside the writer's write() too, which it then reports as 'unexpected pos'. It is the death.
            raise e.__context__ from None
        if isinstance(e, RuntimeError) and isinstance(e.__context__, OSError):
            # torch.save's writer reports a failed write() (a full disk, EFBIG past 'ulimit -f') as
            # '[enforce fail at inline_container.cc] unexpected pos': the OSError behind it says why
            cause = e.__context__
            raise OSError(cause.errno, cause.strerror, str(path)) from None
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def read_entry(path: str | os.PathLike, key: str) -> Any:
    """One entry of a .pt checkpoint (``train_config``, ``position``) without reading its tensors
    (they are memory-mapped, not loaded: a paper-size file is 233 MB); None where the file holds
    none, or is not a .pt checkpoint (an export, a damaged file: :func:`load_checkpoint` says why)."""
    path = Path(path)
    if not path.is_file() or is_safetensors(path) or _export_kind(path) is not None:
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - whatever torch.load raises on a file it cannot map
        return None
    return _held_out_on_top(ckpt).get(key) if isinstance(ckpt, dict) else None


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", torchvision: bool = False, mmap: bool = False
) -> dict[str, Any]:
    """Read a checkpoint dict with ``weights_only=True``; with ``torchvision``, torchvision's own
    alexnet file (a bare state dict) as ``alexnet import torchvision`` reads it: ``alexnet_owt``.
    With ``mmap`` a .pt file (torch.save's zip format) is mapped, not read: only the tensors used
    are read from it, and they are let go with the dict. A trained run's checkpoint holds its
    optimizer's momentum, as large as the weights, which :func:`load` never uses.

    Raises:
        CheckpointError: the file is missing, is not a torch checkpoint, holds foreign pickled
            objects, or lacks a ``model`` state dict.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"a checkpoint is given by its path (str or os.PathLike), not {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        inside = [n for n in (runfolder.BEST_NAME, runfolder.LAST_NAME) if (path / n).is_file()]
        hint = f": give one of its checkpoints, {' or '.join(str(path / n) for n in inside)}" if inside else ", not a checkpoint file"
        raise CheckpointError(f"{path} is a folder{hint}")
    if not path.is_file():
        raise CheckpointNotFound(f"checkpoint not found: {path}{runfolder.set_aside_hint(path.parent)}")
    if is_safetensors(path):  # torchvision's weights saved with safetensors are read as its .pth is
        ckpt = load_safetensors(path, map_location)
        return _from_torchvision(ckpt, path) if torchvision else ckpt
    export = _export_kind(path)
    if export is not None:  # before torch.load, which would hand a TorchScript file to torch.jit.load
        raise CheckpointError(f"{path}: {export}; alexnet.load and the commands read .pt checkpoints and .safetensors")
    zipped = _check_sums(path)
    try:
        with warnings.catch_warnings():  # a pickle of another protocol: the error below says it all
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            warnings.filterwarnings("ignore", "Validating sparse tensor invariants")  # the weights' check names the tensor
            # torch maps only zip files ("mmap can only be used with files saved with ..."): an older one is read
            ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and zipped)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:  # a pickle that would build foreign objects (and could run code): refuse, name it
            whole = ""
            if found.group(1) == "alexnet.model.AlexNet":  # torch.save(model), as torch's tutorials show
                whole = ("; torch.save(model) pickled the module: alexnet.export.export_safetensors(model, path) saves one "
                         "alexnet.load reads (torch.load(path, weights_only=False) unpickles a file you trust)")
            raise CheckpointError(
                f"{path}: refused to load: it holds a {found.group(1)} object, not only tensors and plain containers{whole}"
            ) from None
        raise _unreadable(path, e) from None
    except Exception as e:  # torch.load raises many kinds on junk: EOFError, IndexError, RuntimeError...
        raise (_not_the_files_doing(path, e) or _unreadable(path, e)) from None
    ckpt = _held_out_on_top(_with_model(ckpt, path))
    return _from_torchvision(ckpt, path) if torchvision else ckpt


def _held_out_on_top(ckpt: Any) -> Any:
    """``ckpt`` with the held-out listing that checkpoints of 6e9ad8d to 071c77d (2026-12-04) kept
    inside ``data`` (whose values a resume checks as image counts) moved to its own entry, as written since."""
    data = ckpt.get("data") if isinstance(ckpt, dict) else None
    if isinstance(data, dict) and "held_out_of" in data and "held_out_of" not in ckpt:
        ckpt["data"] = {k: v for k, v in data.items() if k != "held_out_of"}
        ckpt["held_out_of"] = data["held_out_of"]
    return ckpt


def _from_torchvision(ckpt: dict[str, Any], path: Path) -> dict[str, Any]:
    """``ckpt``, or, where it is a bare state dict of torchvision's alexnet (no ``model_config``),
    the ``alexnet_owt`` checkpoint ``alexnet import torchvision`` makes of it."""
    if ckpt.get("model_config") is None:
        from .interop import from_torchvision, is_torchvision_alexnet

        if is_torchvision_alexnet(ckpt["model"]):
            return from_torchvision(ckpt["model"], str(path))
    return ckpt


def _check_sums(path: Path) -> bool:
    """CheckpointError if a record of the zip archive torch.save writes fails its CRC-32: torch.load
    does not check them, and a flipped bit in a weight loads as a silently different network. A
    tenth of a second for the paper's 240 MB. Returns whether the file is such an archive."""
    with open(path, "rb") as f:
        if f.read(2) != b"PK":
            return False
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, zlib.error):
        return False  # not an archive zipfile reads (torch.save's records are stored, not deflated): torch.load's error says
    if bad is not None:
        raise CheckpointError(f"{path}: damaged: its record {bad.split('/', 1)[-1]} fails its checksum (a flipped bit, an "
                              "incomplete copy); use another copy (a run folder's best.pt or last.pt)")
    return True


def _is_state_dict(obj: Any) -> bool:
    """Whether ``obj`` is a non-empty dict of tensors."""
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _with_model(ckpt: Any, path: Path) -> dict[str, Any]:
    """``ckpt`` with its weights under ``model``: a bare state dict (torchvision's weights) and a
    ``{'state_dict': ...}`` (as many training scripts save) are taken too; else say what it holds."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not an alexnet checkpoint: it holds a {type(ckpt).__name__}, not a dict")
    if "model" not in ckpt and _is_state_dict(ckpt):
        return {"model": ckpt}
    if "model" not in ckpt and _is_state_dict(ckpt.get("state_dict")):
        return {**ckpt, "model": ckpt["state_dict"]}
    if "model" in ckpt and not isinstance(ckpt["model"], dict):
        raise CheckpointError(f"{path}: not an alexnet checkpoint: its 'model' is a {type(ckpt['model']).__name__}, "
                              "not a state dict of weights")
    if not isinstance(ckpt.get("model"), dict):
        keys = ", ".join(repr(k) for k in list(ckpt)[:10]) + (", ..." if len(ckpt) > 10 else "")
        raise CheckpointError(f"{path}: not an alexnet checkpoint: no 'model' or 'state_dict' weights (its keys: {keys or 'none'})")
    fmt = ckpt.get("format", FORMAT)  # older checkpoints name none
    if fmt != FORMAT:
        newer = re.fullmatch(r"alexnet-checkpoint-(\d+)", fmt) if isinstance(fmt, str) else None
        if newer and int(newer[1]) > 1:
            raise CheckpointError(f"{path}: written by a newer alexnet (format {fmt}; this one reads {FORMAT}): upgrade alexnet")
        raise CheckpointError(f"{path}: its format is {fmt!r:.40}, not {FORMAT}: damaged, or not an alexnet checkpoint")
    return ckpt


def _not_the_files_doing(path: Path, error: Exception) -> OutOfMemory | None:
    """What torch.load raised for want of memory (torch's CPU allocator says so in a RuntimeError), as
    OutOfMemory naming ``path``: the file is not damaged. None for any other error (an OSError too: a
    truncated zip is EINVAL). One rule for what is a want of memory: :func:`errors.memory_shortage`."""
    short = memory_shortage(error)
    return None if short is None else OutOfMemory(f"{short[0]} reading {path}")


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    """The error for a file torch.load could not read, saying what the file is."""
    with open(path, "rb") as f:
        head = f.read(2)
    if not head:
        return CheckpointError(f"{path}: an empty file, not a checkpoint")
    if head == b"PK":  # torch.save's zip format
        what = "a zip archive but not a readable PyTorch checkpoint"
    elif head[:1] == b"\x80":  # a pickle: torch.save's legacy format
        what = "a pickle but not a readable PyTorch checkpoint"
    else:
        return CheckpointError(f"{path}: not a PyTorch checkpoint or safetensors file")
    if isinstance(error, EOFError):
        return CheckpointError(f"{path}: {what} (it ends early: truncated?)")
    line = str(error).strip().splitlines()[0] if isinstance(error, RuntimeError) and str(error).strip() else ""
    line = re.sub(r"^\[enforce fail at [^\]]*\]\W*", "", line).split(". This is an internal")[0]
    return CheckpointError(f"{path}: {what} ({line or 'damaged?'})")


def _export_kind(path: Path) -> str | None:
    """What a file that is not a checkpoint is, when it is one of our other export formats."""
    if path.suffix.lower() == ".onnx":
        return "an ONNX file (run it with onnxruntime)"
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        tops = {tuple(name.split("/")[1:2]) for name in names}
        if ("code",) in tops:  # TorchScript: ROOT/code/... beside ROOT/data/...
            return "a TorchScript file (load it with torch.jit.load)"
        # torch.export's PT2 archive: ROOT/archive_format beside ROOT/models/ (torch >= 2.8), or
        # serialized_exported_program.json at the top (earlier)
        if ("archive_format",) in tops or "serialized_exported_program.json" in names:
            return "a torch.export program (load it with torch.export.load)"
    except (OSError, zipfile.BadZipFile):
        pass
    return None


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a safetensors file (an 8-byte header length, then a JSON object)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= os.path.getsize(path) - 8


def load_safetensors(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint dict from ``alexnet export --format safetensors`` output.

    The configuration comes from the file's metadata, or from the ``.json`` file beside it.
    """
    import json

    try:
        from safetensors import SafetensorError, safe_open
    except ImportError:
        raise CheckpointError(f"{path}: reading safetensors files needs the safetensors package") from None
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__})") from None
    if str(meta.get("format", "")).startswith("alexnet-fc7-index"):  # retrieval.INDEX_FORMAT
        try:
            built = jsonio.loads(meta.get("checkpoint") or "null")
        except json.JSONDecodeError:
            built = None
        raise CheckpointError(f"{path}: a feature index ('alexnet features'), not weights: give it to retrieve --index"
                              + (f"; the model that built it is {built}" if isinstance(built, str) else ""))
    config = {k: meta[k] for k in ("model_config", "classes", "folders", "preprocess") if k in meta}
    side = path.with_suffix(".json")
    if "model_config" not in config and side.is_file():
        try:
            config = jsonio.loads(side.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{side}: not valid JSON") from None
        if not isinstance(config, dict):
            raise CheckpointError(f"{side}: holds a JSON {type(config).__name__}, not the table of model_config, classes and preprocess")
    else:
        try:
            config = {k: jsonio.loads(v) for k, v in config.items()}
        except json.JSONDecodeError:
            raise CheckpointError(f"{path}: its metadata is not valid JSON") from None
    mean_image = state.pop(presets.MEAN_IMAGE_KEY, None)  # not a weight: the recipe's mean image
    ckpt = {"model": state}
    ckpt.update({k: config[k] for k in ("model_config", "classes", "folders") if k in config})
    if config.get("preprocess") is not None:  # checked, and in a .pt's form (a table, the mean image a tensor)
        ckpt["preprocess"] = _preprocess(config["preprocess"], str(path), mean_image).state()
    return ckpt


def _preprocess(stored: Any, source: str, mean_image: torch.Tensor | None = None) -> Preprocess:
    """The checkpoint's recipe, typed and checked (a malformed one is a one-line CheckpointError)."""
    try:
        return Preprocess.from_dict(stored, mean_image, source)
    except DataError as e:
        raise CheckpointError(str(e)) from None


# Far above any AlexNet (the paper's has 61 million): a config beyond it is corrupt or hostile, and
# building it would try to allocate it (fc_width=2e6: 4e12 fc7 weights) before any other check.
MAX_PARAMETERS = 10**9


def bounded_config(config: AlexNetConfig, source: str) -> AlexNetConfig:
    """``config`` if its network has at most MAX_PARAMETERS parameters (counted without allocating)."""
    n = config.num_parameters()
    if n > MAX_PARAMETERS:
        raise CheckpointError(f"{source}: its model_config asks for {n:.3g} parameters (limit {MAX_PARAMETERS:.0e}); refused")
    return config


def config_from_file(values: Any, source: str) -> AlexNetConfig:
    """The AlexNetConfig of a ``model_config`` read from a file, checked and bounded before any
    allocation; CheckpointError naming ``source`` if it is not a usable one."""
    if not isinstance(values, dict):
        raise CheckpointError(f"{source}: bad model_config: not a table of options")
    try:
        config = AlexNetConfig.from_dict(dict(values))
    except (TypeError, ValueError) as e:  # ConfigError is a ValueError
        raise CheckpointError(f"{source}: bad model_config: {e}") from None
    return bounded_config(config, source)


def model_from_checkpoint(ckpt: dict[str, Any], source: str = "checkpoint") -> AlexNet:
    """Rebuild the model a checkpoint describes and load its weights."""
    cfg = ckpt.get("model_config")
    if cfg is None:
        raise CheckpointError(f"{source}: no 'model_config'; build the model yourself and load_state_dict")
    model = AlexNet(config_from_file(cfg, source))
    check_weights(ckpt["model"], source)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{source}: weights do not fit the model: {state_dict_mismatch(e)}") from None
    return model


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> AlexNet:
    """Load a ready-to-use model from a checkpoint, in eval mode.

    The architecture comes from the checkpoint's ``model_config``; class names and input
    preparation are attached as ``model.classes`` and ``model.preprocess``. A state dict of
    torchvision's alexnet (its ``alexnet-owt-7be5be79.pth``) is read as ``alexnet import`` reads it.

    Args:
        path: A checkpoint of ``alexnet train``, ``alexnet import`` or ``alexnet export --format
            safetensors`` (.pt or .safetensors).
        device: Where the model goes: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``, ...

    Raises:
        CheckpointNotFound: ``path`` does not exist (a CheckpointError and a FileNotFoundError).
        CheckpointError: ``path`` is a folder or not a checkpoint, or its network, class names and
            recipe do not fit together.
        ConfigError: ``device`` is not one this machine has.
    """
    ckpt = load_checkpoint(path, torchvision=True, mmap=True)  # its optimizer state is never read
    model = model_from_checkpoint(ckpt, str(path))
    classes = ckpt.get("classes") or [str(i) for i in range(model.config.num_classes)]
    if not (isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"{path}: its classes must be a list of names (strings)")
    if "" in classes:  # a prediction would name nothing (a name may repeat: ImageNet has two cranes)
        raise CheckpointError(f"{path}: its class {classes.index('')} has an empty name")
    model.classes = [class_name(c) for c in classes]  # as the data names them, on any machine
    if len(model.classes) != model.config.num_classes:
        raise CheckpointError(f"{path}: lists {len(model.classes)} class names for {model.config.num_classes} outputs")
    folders = ckpt.get("folders")  # a trained run's class folders: evaluate matches them where the names differ
    if isinstance(folders, list) and len(folders) == len(model.classes) and all(isinstance(f, str) for f in folders):
        model.folders = [class_name(f) for f in folders]
    model.preprocess = _preprocess(ckpt["preprocess"], str(path)) if ckpt.get("preprocess") is not None else None
    if model.preprocess is not None:
        _check_recipe_fits(model.config, model.preprocess, str(path))
    return model.to(device_argument(device, "load")).eval()  # "cuda" without a GPU: one line, not torch's driver error


def require_recipe(model: AlexNet, path: str | os.PathLike) -> AlexNet:
    """``model`` if it carries its preprocessing recipe (what commands that read images need);
    else CheckpointError naming ``path``."""
    if model.preprocess is None:
        raise CheckpointError(f"{path}: no 'preprocess' recipe; it was not written by 'alexnet train' or 'alexnet import' "
                              "(a .safetensors export keeps it in its metadata)")
    return model


def _check_recipe_fits(config: AlexNetConfig, recipe: Preprocess, source: str) -> None:
    """CheckpointError unless the recipe's inputs (channels, input size) are ones the network takes."""
    if recipe.channels != config.in_chans:
        raise CheckpointError(f"{source}: its preprocess is for {recipe.channels}-channel images but its network "
                              f"takes {config.in_chans}-channel ones")
    if recipe.input_size != config.input_size:
        try:
            fits = dataclasses.replace(config, input_size=recipe.input_size).feature_size() == config.feature_size()
        except ValueError:  # too small for the network
            fits = False
        if not fits:
            raise CheckpointError(f"{source}: its preprocess feeds {recipe.input_size}-px inputs, which its network "
                                  f"(built for {config.input_size} px) cannot take")
