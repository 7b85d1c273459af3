"""The network a run starts as: its architecture (``--model``, or the checkpoint it resumes or
starts from) and, when fine-tuning (``--init-from``), the weights it takes over: fc8's rows kept
for the classes the file names, layers frozen, a note when the pixels are scaled otherwise."""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from .checkpoint import config_from_file
from .checks import is_whole
from .config import TrainConfig
from .data.folder import by_folders, class_name, in_data_names
from .data.loaders import DataBundle, held_out
from .data.presets import Preprocess
from .errors import CheckpointError, check_weights, state_dict_mismatch
from .model import AlexNet, AlexNetConfig, expand_layers, expand_lr_mult, model_config, torchvision_key


def architecture(cfg: TrainConfig, start: dict[str, Any] | None, source: str) -> tuple[AlexNetConfig, bool]:
    """The network a run trains, and whether its input channels are fixed (else the data's).

    ``start`` is the checkpoint the run resumes or starts from (``source`` names it): its saved
    architecture, with ``--model-option`` on top; a bare state dict (torchvision's file) or no
    checkpoint: ``--model``'s. Fine-tuning imported Caffe weights thus runs at their 227 px.
    """
    saved = start.get("model_config") if start is not None else None
    if saved:
        values = {**saved, **cfg.model_options} if isinstance(saved, dict) else saved
        return config_from_file(values, source), True
    return model_config(cfg.model, **cfg.model_options), "in_chans" in cfg.model_options


def build_model(
    cfg: TrainConfig, arch: AlexNetConfig, classes: list[str], init: dict[str, Any] | None, log: Callable[[str], None] = print,
    folders: list[str] | None = None,
) -> AlexNet:
    """The model to train: ``arch`` with an output per class of ``classes``, with the weights of
    ``init`` (``--init-from``; fc8 as :func:`fc8_rows` keeps it, also for classes it names by the
    data's ``folders``: :func:`in_data_names`), layers frozen."""
    arch = dataclasses.replace(arch, num_classes=len(classes))
    if init is None:
        model = AlexNet(arch)
    else:
        check_weights(init["model"], f"--init-from {cfg.init_from}")  # the file's own tensor names
        log(f"weights from {cfg.init_from}" + (" (its architecture)" if init.get("model_config") else ""))
        state = {torchvision_key(k): v for k, v in init["model"].items()}  # torchvision names -> ours
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(finetune_seed(cfg.seed, state))
            model = AlexNet(arch)
        known = in_data_names(named_classes(init), classes, folders)
        trained = init.get("folders")  # a run named by a mapping file, fine-tuned on its folders without it
        if known and isinstance(trained, list) and all(isinstance(f, str) for f in trained):
            known = by_folders(known, [class_name(f) for f in trained], classes, folders)
        fresh = fc8_rows(state, known, classes, model, cfg.init_from, log)
        if fresh and "fc8" in expand_layers(cfg.freeze):
            warnings.warn(f"--freeze {','.join(cfg.freeze)} keeps the re-initialised fc8 at its random weights: "
                          "only the layers before it learn (--freeze features trains fc6-fc8)", stacklevel=2)
        elif fresh == len(classes) and "fc8" not in expand_lr_mult(cfg.lr_mult):
            # Only where every row is new: a multiplier would also hurry the rows the file's training had settled.
            log("  --lr-mult fc8=10 lets the new fc8 learn ten times as fast as the layers it sits on "
                "(README's fine-tuning table measures what it gains)")
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:
            why = state_dict_mismatch(e)
            raise CheckpointError(f"--init-from {cfg.init_from}: weights do not fit {cfg.model}: {why}") from None
        if missing or unexpected:
            raise CheckpointError(
                f"--init-from {cfg.init_from}: weights do not fit {cfg.model} "
                f"(missing {', '.join(missing[:4]) or 'none'}; unexpected {', '.join(unexpected[:4]) or 'none'}); pass --model"
            )
    for name in expand_layers(cfg.freeze):
        for p in getattr(model, name).parameters():
            p.requires_grad_(False)
    return model


def first_weights(config: AlexNetConfig, train_config: Any) -> AlexNet | None:
    """The network a run from scratch started as, drawn again from its recorded --seed as train
    draws it (:func:`build_model`); None for a run that started from a file (--init-from) or a
    checkpoint that records no run (an import)."""
    if not isinstance(train_config, dict) or train_config.get("init_from") or not is_whole(train_config.get("seed")):
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train_config["seed"])
        return AlexNet(config)


def finetune_seed(seed: int, state: dict[str, torch.Tensor]) -> int:
    """The seed a fine-tuning run draws its fresh layers (fc8's new rows) from: ``seed`` mixed with
    the --init-from file's fc8. Drawn from ``seed`` itself, they were the file's own first fc8 when the
    file had been trained with that seed (same network and class count): each new row started as the
    old class of its number had, at cosine 0.5 with that class's trained row, so a dog-breed model fine-
    tuned from the Imagenette run at its seed called 64 % of Imagenette's tench photos its class 0."""
    digest = hashlib.sha256(f"fine-tuning, --seed {seed}".encode())
    if isinstance(state.get("fc8.weight"), torch.Tensor):
        digest.update(state["fc8.weight"].detach().cpu().float().contiguous().numpy().tobytes())
    return int.from_bytes(digest.digest()[:8], "little") >> 1  # torch takes seeds below 2**63


def named_classes(init: dict[str, Any]) -> list[str] | None:
    """The class names of the --init-from file, None where it names none. An imported file (a bare
    torchvision state dict, a Caffe model) of other than ImageNet's 1000 outputs gets the numbers
    "0", "1", ... as stand-ins (``interop._classes``): matched by name, they met none of the data's
    classes and fc8 was thrown away, though a file without names keeps fc8 for as many classes."""
    known = init.get("classes")
    if init.get("imported_from") and known == [str(i) for i in range(len(known))]:
        return None
    return known


def fc8_rows(
    state: dict[str, torch.Tensor], known: list[str] | None, classes: list[str], model: AlexNet, source: str,
    log: Callable[[str], None],
) -> int:
    """fc8 of ``state`` (the --init-from weights) made to fit ``classes``, in place; how many of its
    rows are new. A class the file names keeps its row, matched by name (Imagewoof's breeds among
    ImageNet's 1000 start where ImageNet left them); the others get ``model``'s fresh rows. A file
    without class names keeps fc8 if it has as many outputs."""
    if "fc8.weight" not in state or "fc8.bias" not in state or state["fc8.weight"].shape[1:] != model.fc8.weight.shape[1:]:
        return 0  # load_state_dict names what does not fit
    known = [class_name(c) for c in known] if known else None  # as the data names them, on any machine
    if known == list(classes) or (known is None and len(state["fc8.bias"]) == len(classes)):
        return 0
    # A name given to two of the data's classes (a classes.tsv from synset_words.txt calls ImageNet's
    # bird and machine cranes both 'crane') cannot say which row is whose: both start fresh.
    ours, theirs, row_of = Counter(classes), Counter(known or []), {c: j for j, c in enumerate(known or [])}
    rows = [row_of[c] if theirs[c] == 1 and ours[c] == 1 else None for c in classes]
    weight, bias = model.fc8.weight.detach().clone(), model.fc8.bias.detach().clone()
    for i, j in enumerate(rows):
        if j is not None:
            weight[i], bias[i] = state["fc8.weight"][j], state["fc8.bias"][j]
    state["fc8.weight"], state["fc8.bias"] = weight, bias
    kept = sum(j is not None for j in rows)
    twice = sorted(c for c, n in ours.items() if n > 1 and theirs[c])
    why = f" ({', '.join(map(repr, twice))} names more than one of the data's classes)" if twice else ""
    if kept:
        log(f"fc8: {kept} of {len(classes)} classes keep their rows of {source} (matched by name)"
            + (f", {len(classes) - kept} re-initialised{why}" if kept < len(classes) else ""))
    else:
        log(f"fc8 re-initialised for {len(classes)} classes" + (" (none of them is among the file's)" if known else ""))
    return len(classes) - kept


def warn_held_out(cfg: TrainConfig, init: dict[str, Any], data: DataBundle) -> None:
    """A warning where the run validates on images its --init-from file trained on: the same folder
    without a val split (the same images, :func:`~alexnet.data.loaders.listing`), held out at another
    --seed than the file's, of which the file saw none. Some nine tenths of this run's are then the
    file's training images (continuing a run with new options under another --seed, say)."""
    then, seed = init.get("held_out_of"), (init.get("train_config") or {}).get("seed")
    now = data.held_out_of
    if not (isinstance(then, dict) and now and "digest" in now and then == now and isinstance(seed, int)) or seed == cfg.seed:
        return
    ours = set(held_out(now["images"], cfg.seed)[1])
    learnt = len(ours - set(held_out(now["images"], seed)[1]))
    warnings.warn(f"{learnt} of the {len(ours)} images this run holds out for validation trained {cfg.init_from}, which held "
                  f"out another tenth of {data.source} (--seed {seed}): the validation figures count images the weights "
                  f"learnt; --seed {seed} holds out the file's tenth", stacklevel=2)


def note_scale(cfg: TrainConfig, weights: Preprocess, data: DataBundle) -> None:
    """A note when the data's pixels are scaled otherwise than the --init-from weights learnt on:
    imported Caffe weights take raw pixels minus the mean (std 1), the photos recipe divides by
    the pixels' std (about 60), and conv1 would see inputs some 60x smaller than it was made for."""
    ratio = (sum(weights.std) / len(weights.std)) / (sum(data.preprocess.std) / len(data.preprocess.std))
    if not 0.5 <= ratio <= 2.0:
        data.notes.append(
            f"the weights of {cfg.init_from} were trained on pixels divided by {weights.std[0]:.3g}, this run's by "
            f"{data.preprocess.std[0]:.3g} (data preset {data.preprocess.preset}); "
            f"--data-preset {'paper' if max(weights.std) == 1.0 else 'photos'} scales them alike"
        )
