"""Evaluation the paper's way: centre or ten crops, one model or an ensemble, overall and per class.

The models' softmax outputs are averaged (over the ten crops and over the models), as in the
paper's section 4 and table 2 ("averaging the predictions of five similar CNNs").
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections import Counter
from typing import Any

import torch

from .atomic import atomic_path
from .checkpoint import load, require_recipe
from .data.folder import by_folders, in_data_names
from .data.presets import Preprocess
from .errors import CheckpointError, DataError
from .model import AlexNet
from .predict import check_finite, class_names, mean_of_probs, model_log_probs, recipe
from .runtime import device_argument, eval_mode, progress, resolve_amp


def _decode(p: Preprocess) -> tuple:
    """How a recipe's images are decoded and stored: ensemble members must agree on it (a packed
    folder holds an image folder's photos decoded as they would be)."""
    return ("image_folder" if p.dataset == "packed" else p.dataset, p.resize, p.size)


def _decode_difference(ours: Preprocess, first: Preprocess) -> str:
    """Which of :func:`_decode`'s settings two recipes disagree on, as "X against Y": the user must
    know what to change (a run at another --model-option input_size, a CIFAR model among photos)."""
    said = ("kind of data", "shorter side resized to", "images stored at")
    return "; ".join(f"{what} {a} against {b}" for what, a, b in zip(said, _decode(ours), _decode(first)) if a != b)


def class_orders(
    models: list[AlexNet], names: list[str] | None = None, data_classes: list[str] | None = None, folders: list[str] | None = None
) -> list[list[int] | None]:
    """For each model, the columns of its output in the first model's class order (None: already
    so, or a model without class names). Members that name their classes must name the same ones:
    the same breeds from folders named otherwise come out in another order, and are put back.
    With the data's ``data_classes`` and class ``folders``, a member that names the classes by their
    folders (ImageNet synsets, trained before a mapping beside them named them) is read as the data
    names them (:func:`in_data_names`): it has the classes of a member trained after; and one a
    mapping named, on its folders without the mapping, by the folders it trained on (:func:`_in_data`).

    Raises:
        CheckpointError: a model names classes that the first does not.
    """
    names = names or [f"model {i + 1}" for i in range(len(models))]
    known = [_in_data(m, data_classes, folders) if data_classes else m.classes for m in models]
    first = known[0]
    orders: list[list[int] | None] = []
    for name, classes in zip(names, known):
        if not first or not classes or list(classes) == list(first):
            orders.append(None)
        elif sorted(classes) != sorted(first):
            raise CheckpointError(f"{name} predicts other classes than {names[0]} ({_class_difference(first, classes)}); "
                                  "cannot ensemble them")
        elif len(set(first)) != len(first):  # which of two 'crane's is which cannot be told by name
            twice = next(c for c in first if list(first).count(c) > 1)
            raise CheckpointError(f"{name} lists the classes of {names[0]} in another order, and {twice!r} is named "
                                  "twice: cannot match its classes by name; cannot ensemble them")
        else:
            column = {c: i for i, c in enumerate(classes)}
            orders.append([column[c] for c in first])
    return orders


def _class_difference(first: list[str], other: list[str]) -> str:
    """A class that ``first`` and ``other`` do not name alike: one names it and the other not, or
    one names it more often than the other (two classes alike: a hand-made classes.tsv)."""
    mine, theirs = Counter(first), Counter(other)
    name = next(iter((theirs - mine) or (mine - theirs)))
    if mine[name] and theirs[name]:
        return f"e.g. {name!r} is named {theirs[name]} time{'s' * (theirs[name] != 1)} by it, {mine[name]} by the first"
    return f"e.g. {name!r} is in one only"


def _in_data(model: AlexNet, data_classes: list[str], folders: list[str] | None) -> list[str] | None:
    """``model``'s class names as the data names them: names that are the data's folders read as the
    data names those (:func:`in_data_names`), and names the data lacks read as the data's name of the
    folder the model trained on (:func:`by_folders`: a run a mapping named, scored without it)."""
    known = in_data_names(model.classes, data_classes, folders)
    return by_folders(list(known), getattr(model, "folders", None), data_classes, folders) if known else known


def label_map(
    data_classes: list[str], model: AlexNet, source: str = "the data", model_name: str = "the model", folders: list[str] | None = None
) -> list[int] | None:
    """The output of ``model`` that each of the data's classes is, matched by name: Imagewoof's dog
    breeds among ImageNet's 1000, or the same breeds in another order. None where the labels are the
    outputs already (the same names in the same order, or names that do not match at all with as many
    classes as outputs: a warning then says the accuracy counts matching class numbers).

    ``folders``: the data's class folders, which a model may name its classes by (:func:`in_data_names`).

    Raises:
        CheckpointError: fewer or more classes than outputs, not all of them among the model's by name.
    """
    ours, n = list(in_data_names(model.classes, list(data_classes), folders) or []), model.fc8.out_features
    ours = by_folders(ours, getattr(model, "folders", None), list(data_classes), folders)
    if ours == list(data_classes):
        return None
    unique = len(set(data_classes)) == len(data_classes)
    if unique and ours and all(ours.count(c) == 1 for c in data_classes):
        return [ours.index(c) for c in data_classes]
    if len(data_classes) != n:
        missing = next((c for c in data_classes if c not in ours), None) if ours else None
        why = f"; {missing!r} is not among its classes" if missing else ("; it names no classes" if not ours else "")
        why = why or _named_twice(data_classes, ours)
        raise CheckpointError(f"{source} has {len(data_classes)} classes but {model_name} predicts {n}{why}")
    i = next((i for i, (a, b) in enumerate(zip(ours, data_classes)) if a != b), None)
    if i is not None:
        warnings.warn(f"the data's classes are not those of {model_name} (class {i} is {data_classes[i]!r} there, "
                      f"{ours[i]!r} in the checkpoint): the accuracy counts matching class numbers", stacklevel=2)
    return None


def _named_twice(data_classes: list[str], ours: list[str]) -> str:
    """Why classes that are all among the model's cannot be matched by name: one is named twice
    (ImageNet's two cranes, where a class list such as synset_words.txt calls both 'crane')."""
    twice = next((c for c in data_classes if ours.count(c) > 1), None)
    if twice is not None:
        outputs = [i for i, c in enumerate(ours) if c == twice]
        return f"; {twice!r} names its outputs {', '.join(map(str, outputs))}, and which one the data's is cannot be told by name"
    twice = next((c for c in data_classes if data_classes.count(c) > 1), None)
    return f"; {twice!r} names {data_classes.count(twice)} of the data's classes" if twice is not None else ""


def load_models(
    paths: str | os.PathLike | list[str | os.PathLike], device: str | torch.device = "cpu", match_classes: bool = True
) -> list[AlexNet]:
    """Load one or more checkpoints (an ensemble) and check that they can share one data stream.
    ``match_classes=False`` leaves their classes to be matched once the data is known
    (:func:`class_orders` with its folders): one may name them by the folders, another by a mapping.

    Raises:
        CheckpointError: a file is not a checkpoint, lacks a preprocessing recipe, or the models
            disagree on the classes or on how images are decoded. Members whose classes are the
            first's in another order are put in its order by :func:`evaluate`.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)  # one file, not its characters
    if not paths:
        raise ValueError("load_models: no checkpoint given")
    device = device_argument(device, "load_models")  # once, and named as this function's
    models = [require_recipe(load(p, device), p) for p in paths]
    first = models[0]
    for path, m in zip(paths, models):
        if m.config.num_classes != first.config.num_classes:
            raise CheckpointError(
                f"{path} predicts {m.config.num_classes} classes but {paths[0]} predicts {first.config.num_classes}"
            )
        if _decode(m.preprocess) != _decode(first.preprocess):
            raise CheckpointError(f"{path}: its images are prepared differently from {paths[0]}'s "
                                  f"({_decode_difference(m.preprocess, first.preprocess)}); cannot ensemble them")
    if match_classes:
        class_orders(models, [str(p) for p in paths])
    return models


@torch.no_grad()
def ensemble_log_probs(
    models: list[AlexNet],
    images: torch.Tensor,
    ten_crop: bool = False,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    orders: list[list[int] | torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """The log of the softmax averaged over ``models`` (each with its own ``preprocess``) for a uint8
    batch, in the first model's class order (``orders``: :func:`class_orders`, computed here if not given)."""
    orders = orders if orders is not None else class_orders(models)
    each = []  # an order is a list, or (evaluate) an index tensor already on the batch's device
    for m, order in zip(models, orders):
        log_p = model_log_probs(m, images, m.preprocess, ten_crop, amp, channels_last)
        each.append(log_p if order is None else log_p[:, order])
    return mean_of_probs(torch.stack(each, dim=1), dim=1)


@torch.no_grad()
def evaluate(
    models: AlexNet | list[AlexNet],
    loader: Any,
    device: torch.device | str | None = None,
    amp: torch.dtype | str | None = None,
    ten_crop: bool = False,
    channels_last: bool = False,
    show_progress: bool | None = None,
    classes: list[str] | None = None,
    names: tuple[str, str] = ("the data", "the model"),
) -> dict[str, Any]:
    """Top-1/top-5 accuracy and error, mean loss and the confusion matrix over ``loader``.

    ``loader`` yields (uint8 images, labels, ...) batches, as
    :func:`alexnet.data.loaders.load_eval_data` gives them; ``classes`` names its labels (default: the
    loader's ``classes``), matched to the first model's by name (:func:`label_map`, whose messages
    call the data and the model by ``names``); ``device``:
    where the models are (default: the first one's); ``amp``: a dtype, None, or its ``--amp`` name ("bf16").
    ``models`` carry their ``preprocess`` (as :func:`alexnet.load` attaches it). Returns a dict with
    ``top1``, ``top5``, ``top1_error``, ``top5_error``, ``loss`` (negative log of the averaged
    probability of the true class), ``images`` and ``confusion`` (classes x classes int64 tensor,
    rows = true class, columns = predicted class, both the first model's outputs) and ``label_map``
    (the output each data class is, or None where they are the same).
    """
    models = _checked(models, loader)
    device = device_argument(device, "evaluate") if device is not None else next(models[0].parameters()).device
    amp = resolve_amp(amp, device)
    for m in models:
        recipe(m)  # what model_log_probs feeds each model: its own recipe (after the device, which a bare network can name)
    k = models[0].fc8.out_features
    classes = classes if classes is not None else getattr(loader, "classes", None)
    folders = getattr(loader, "folders", None)  # the names a model trained before they were named knows
    positions = label_map(list(classes), models[0], *names, folders=folders) if classes is not None else None
    mapping = torch.tensor(positions, device=device) if positions is not None else None
    orders = class_orders(models, data_classes=list(classes) if classes is not None else None, folders=folders)
    orders = [o if o is None else torch.tensor(o, device=device) for o in orders]  # moved once, not per batch
    confusion = torch.zeros(k, k, dtype=torch.int64)
    loss_sum, c1, c5, n, batches = 0.0, 0, 0, 0, 0
    desc = "evaluate" + (" (10 crops)" if ten_crop else "") + (f" ({len(models)} models)" if len(models) > 1 else "")
    total = len(loader) if hasattr(loader, "__len__") else None  # a generator of batches has none
    with eval_mode(*models):
        for batch in progress(loader, total=total, desc=desc, enabled=show_progress, unit="batch"):
            batches += 1
            if batch is None:  # every image of the batch was unreadable
                continue
            _check_images(batch[0])
            _check_labels(batch[1], len(positions) if positions is not None else k)
            images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device)
            if mapping is not None:  # the data's class numbers -> the model's
                labels = mapping[labels]
            log_probs = ensemble_log_probs(models, images, ten_crop, amp, channels_last, orders)
            nll, k1, k5, pred = score(log_probs, labels)
            if not math.isfinite(nll):  # overflowed outputs (NaN probabilities), told by the read score makes anyway
                check_finite(log_probs, amp)
            loss_sum, c1, c5, n = loss_sum + nll, c1 + k1, c5 + k5, n + labels.numel()
            confusion += torch.bincount((labels * k + pred).cpu(), minlength=k * k).reshape(k, k)
    if not batches:
        raise DataError("evaluate: the loader gave no batch of images to score")
    return {**summarize(loss_sum, c1, c5, n), "confusion": confusion, "label_map": positions}


def _checked(models: AlexNet | list[AlexNet], loader: Any) -> list[AlexNet]:
    """``models`` as a list, each an AlexNet with an output per class name; a ValueError or
    TypeError for what :func:`evaluate` cannot take."""
    models = [models] if isinstance(models, AlexNet) else list(models)
    if not models:
        raise ValueError("evaluate: no models given")
    if isinstance(loader, (str, os.PathLike)):
        raise TypeError(f"evaluate takes batches of (uint8 images, labels), not the path {loader!r}: "
                        "alexnet.data.loaders.load_eval_data(path, model.preprocess)[0] gives them")
    for m in models:
        class_names(m)
    return models


def _check_images(images: Any) -> None:
    """ValueError for a batch that is not uint8 pixels: evaluate prepares them by each model's recipe,
    so inputs already prepared (model.preprocess.transforms()) would be refused by model_input in its words."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        what = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"evaluate takes batches of uint8 images (0-255 pixels, as load_eval_data gives them), which it "
                         f"prepares by the model's recipe, not {what}: inputs already prepared (transforms()) go to the model itself")


def _check_labels(labels: torch.Tensor, classes: int) -> None:
    """DataError for a label outside 0..classes-1 (torch's 'index 12 is out of bounds' otherwise)."""
    if not labels.numel():
        return
    low, high = (int(v) for v in labels.aminmax())  # one pass, one read
    if low < 0 or high >= classes:
        bad = high if high >= classes else low
        raise DataError(f"evaluate: label {bad} is not one of the data's {classes} classes (0..{classes - 1})")


def score(log_probs: torch.Tensor, labels: torch.Tensor) -> tuple[float, int, int, torch.Tensor]:
    """A batch's summed negative log-likelihood, top-1 and top-5 hits, and top-1 predictions.

    ``log_probs`` is (B, classes): log-softmax of one model's logits, or the log of averaged
    probabilities (crops, ensembles). Top-5 is top-k for fewer than five classes.
    """
    top = log_probs.topk(min(5, log_probs.shape[1]), dim=1).indices
    hit = top.eq(labels.reshape(-1, 1))
    nll = -log_probs.gather(1, labels.reshape(-1, 1)).sum()
    # one wait for the device; float64 holds the float32 sum and the counts exactly
    nll, k1, k5 = torch.stack([nll.double(), hit[:, 0].sum().double(), hit.any(dim=1).sum().double()]).tolist()
    return nll, int(k1), int(k5), top[:, 0]


def summarize(loss_sum: float, c1: float, c5: float, n: float) -> dict[str, float]:
    """Accuracies, errors and mean loss from the sums of :func:`score` over ``n`` images."""
    n = int(n)
    if n == 0:  # an accuracy of 0.0000 would read as a model that learned nothing
        raise DataError("no image to score: every one was unreadable (each was named in a warning above)")
    # errors as counts over n, not 1 - accuracy: 88 of 500 right is an error of 0.824, not 0.8240000000000001
    return {"top1": c1 / n, "top5": c5 / n, "top1_error": (n - c1) / n, "top5_error": (n - c5) / n, "loss": loss_sum / n,
            "images": n}


def per_class_accuracy(confusion: torch.Tensor, classes: list[str]) -> list[dict[str, Any]]:
    """One row per class: index, name, number of images and top-1 accuracy (NaN for an absent class)."""
    rows = []
    for i, name in enumerate(classes):
        total = int(confusion[i].sum())
        rows.append({"index": i, "class": name, "images": total, "top1": int(confusion[i, i]) / total if total else float("nan")})
    return rows


def data_confusion(confusion: torch.Tensor, positions: list[int] | None, classes: list[str]) -> tuple[torch.Tensor, list[str]]:
    """:func:`evaluate`'s confusion (the model's outputs) in the data's classes (rows and columns in
    the data's order), and the names of its columns: a last column counts the images predicted as
    none of the data's classes, where the model has more (Imagewoof's breeds among ImageNet's 1000)."""
    if positions is None:
        return confusion, list(classes)
    index = torch.tensor(positions)
    rows = confusion[index]
    sub = rows[:, index]
    if len(positions) == confusion.shape[1]:
        return sub, list(classes)
    return torch.cat([sub, (rows.sum(1) - sub.sum(1)).unsqueeze(1)], 1), [*classes, "(another class)"]


def write_confusion_csv(confusion: torch.Tensor, classes: list[str], path: str | os.PathLike, columns: list[str] | None = None) -> None:
    """The confusion matrix as CSV (atomically): a row per true class, a column per predicted class
    (``columns``, default: ``classes``)."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *(columns or classes)])
        writer.writerows([name, *row] for name, row in zip(classes, confusion.tolist()))


def write_per_class_csv(rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Write :func:`per_class_accuracy` rows as CSV (atomically); a class without images has an empty
    top1 (no value, as spreadsheets and CSV readers take a missing one), not NaN's 'nan'."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["index", "class", "images", "top1"])
        writer.writeheader()
        writer.writerows({**r, "top1": "" if math.isnan(r["top1"]) else r["top1"]} for r in rows)
