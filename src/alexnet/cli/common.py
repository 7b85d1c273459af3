"""What several commands share: output checks, the progress flag, the training options typed."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def _progress_flag(args: argparse.Namespace) -> bool | None:
    return {"auto": None, "on": True, "off": False}[args.progress]


def _key_values(items: list[str] | None, flag: str, parse=json.loads) -> dict:
    """KEY=VALUE pairs; VALUE is JSON when it parses (numbers, true/false, lists), else a string."""
    from ..errors import ConfigError

    out = {}
    for item in items or []:
        for part in item.split(",") if flag == "--lr-mult" else [item]:
            key, eq, value = part.partition("=")
            if not eq or not key:
                raise ConfigError(f"{flag}: expected KEY=VALUE, got {part!r}")
            try:
                out[key.strip()] = parse(value)
            except (ValueError, json.JSONDecodeError):
                if parse is float:
                    raise ConfigError(f"{flag}: {key} needs a number, got {value!r}") from None
                out[key.strip()] = value
    return out


def _train_option_names() -> list[str]:
    from ..config import field_types

    return list(field_types())


def _config_overrides(args: argparse.Namespace) -> dict:
    """The TrainConfig values given on the command line (unset ones are None)."""
    from ..config import field_types, flag

    out = {name: getattr(args, name, None) for name in field_types()}
    for name in ("freeze", "tower_devices"):  # comma-separated lists
        if out[name] is not None:
            out[name] = [v for item in out[name] for v in item.split(",") if v]
    out["lr_mult"] = _key_values(out["lr_mult"], flag("lr_mult"), float) or None
    model_options = _key_values(out["model_options"], flag("model_options"))
    if args.dropout is not None:
        model_options["dropout"] = args.dropout
    out["model_options"] = model_options or None
    return out


def _check_output(path: str | None, option: str, figure: bool = False, image: bool = False, folder: bool = False) -> None:
    """Refuse, before the work, an output that cannot be written: a figure's format (by its suffix),
    then its folder (a file in the way, no permission, a read-only file system)."""
    if not path:
        return
    from ..atomic import check_writable
    from ..errors import ConfigError

    if figure or image:
        from .. import figures

        try:
            figures.figure_format(path, figures.IMAGE_FORMATS if image else figures.PLOT_FORMATS)
        except ConfigError as e:
            raise ConfigError(f"{option} {e}") from None
    check_writable(path, option, folder)


def _not_the_input(out: str, given: str, what: str) -> None:
    """ConfigError where ``--out`` names the file ``given`` (by any path): the output would replace
    the input it is made from (a training checkpoint by a weights-only export, say)."""
    from ..errors import ConfigError

    if Path(out).is_file() and Path(given).is_file() and os.path.samefile(out, given):
        raise ConfigError(f"--out {out}: is the {what} it reads ({given}), which writing would replace; give another name")


def _same_folder(data: object, trained_on: object) -> bool:
    """Whether ``data`` is the folder a checkpoint recorded as its training data."""
    return isinstance(data, str) and isinstance(trained_on, str) and Path(data).resolve() == Path(trained_on).resolve()


def _memory_options(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The options of ``args.command`` that ask for less memory: what lowers the batches' (or the
    shards') and what lowers the data-loading workers'; None where the command has none."""
    batch = getattr(args, "batch_size", None)
    workers = getattr(args, "workers", None)
    per_worker = f"--workers ({workers} now)" if workers else None
    if args.command == "train":
        return None, per_worker or "--workers"  # train says which, where a step or a validation ran out
    if args.command == "prepare":
        return f"--shard-size ({args.shard_size} now) or --size ({args.size} now)", per_worker
    if batch is None:  # export, retrieve: one image
        return None, per_worker
    crops = "; --ten-crop computes 10 crops of each image" if getattr(args, "ten_crop", False) else ""
    return f"--batch-size ({batch} now{crops})", per_worker


def _machine_limit_line(args: argparse.Namespace, error: BaseException) -> str | None:
    """``error`` as one line where it is a limit of this machine, met in ``args.command``: a failure to
    allocate memory (what ran out, the option that asks for less) or a data-loading worker process that
    died (how, the likely cause); None for any other error."""
    from ..errors import machine_limit

    found = machine_limit(error, f"in {args.command}", *_memory_options(args))
    return None if found is None else str(found)
