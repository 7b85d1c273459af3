"""PNG figures: the paper's figures 3 and 4, training curves and confusion matrices.

matplotlib (Agg backend, no display needed) is imported inside the functions so importing
alexnet stays cheap. Every figure has a fixed size in pixels (given in its docstring) and is
written to a temporary name and then renamed, so a failure never leaves half a PNG.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import jsonio
from .atomic import atomic_path
from .data.folder import printable
from .errors import ConfigError, DataError
from .runfolder import CONFIG_NAME, CURVES_NAME, METRICS_NAME

DPI = 100


def plain(name: str) -> str:
    """A name (of a file, a folder, a class) as matplotlib draws it, letter for letter: bytes that are
    not UTF-8 escaped (:func:`printable`; matplotlib cannot draw lone surrogates) and ``$`` escaped,
    which would start a TeX formula ('a$^$.jpg' stopped a figure with a parse error, 'cost $5 - $10'
    was drawn as maths). Every name drawn goes through it: titles, labels, ticks and legends."""
    return printable(name).replace("$", r"\$")


# matplotlib >= 3.7 names the fonts ("missing from font(s) DejaVu Sans."); 3.6 says "from current font."
_MISSING_GLYPH = re.compile(r"Glyph (\d+) .*missing from (?:font\(s\) (.+?)|current font)\.?$")


# matplotlib's log lines for a font family it has no file of: "Font family ['X'] not found. Falling
# back to Y." at its first use, "Font family 'X' not found." on every text drawn in it (437 lines for
# a curves.png in a font.family not installed), "Generic family 'X' not found because ...".
_FONT_NOT_FOUND = re.compile(r"findfont: (?:Font|Generic) family (.+?) not found(?:\. Falling back to (.+?)\.$| because|\.$)")


class _FontsNotFound(logging.Filter):
    """Holds back matplotlib's 'findfont: Font family [...] not found' lines, noting the families."""

    def __init__(self) -> None:
        super().__init__()
        self.families: dict[str, None] = {}
        self.fallback = "another font"

    def filter(self, record: logging.LogRecord) -> bool:
        found = _FONT_NOT_FOUND.match(record.getMessage())
        if found is None:
            return True
        self.families.update(dict.fromkeys(re.findall(r"'([^']*)'", found[1]) or [found[1]]))
        self.fallback = found[2] or self.fallback
        return False


def _say_fonts_not_found(families: list[str], fallback: str) -> None:
    """One warning for the font families matplotlib found no file of. Where its font list holds none
    of matplotlib's own fonts (a list made by another install of the same version, or while this one
    was being installed: every figure with maths, such as a log axis, said 21 lines), it names the file."""
    import matplotlib
    from matplotlib import font_manager

    own = Path(matplotlib.get_data_path(), "fonts").resolve()
    names = ", ".join(families[:4]) + (f" and {len(families) - 4} more" if len(families) > 4 else "")
    listed = any(own in Path(f.fname).resolve().parents for f in font_manager.fontManager.ttflist)
    if listed or not any(own.glob("ttf/*.ttf")):
        warnings.warn(f"matplotlib has no font {names}: the figure draws {'them' if len(families) > 1 else 'it'} in {fallback}",
                      stacklevel=3)
        return
    cache = Path(matplotlib.get_cachedir(), f"fontlist-v{font_manager.FontManager.__version__}.json")
    warnings.warn(f"matplotlib's font list {cache} holds none of its own fonts (in {own}), so the figure draws "
                  f"{names} in {fallback}; delete that file and matplotlib lists them again", stacklevel=3)


def _missing_glyphs_said_once(draw):
    """``draw`` (a figure's function) with matplotlib's warnings of characters its font lacks (one line
    per character: a confusion matrix of Japanese class names said dozens) said in one line, and its
    log lines of fonts not found (one per family) in another."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        fonts_not_found, log = _FontsNotFound(), logging.getLogger("matplotlib.font_manager")
        log.addFilter(fonts_not_found)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                return draw(*args, **kwargs)
        finally:  # out of catch_warnings: what is said here reaches the caller's filters
            log.removeFilter(fonts_not_found)
            if fonts_not_found.families:
                _say_fonts_not_found(list(fonts_not_found.families), fonts_not_found.fallback)
            glyphs, fonts = {}, {}
            for w in caught:
                found = _MISSING_GLYPH.match(str(w.message))
                if found is None:  # another warning: said as the caller's filters say it
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                else:
                    glyphs[chr(int(found[1]))], fonts[found[2] or _default_font()] = None, None
            if glyphs:
                warnings.warn(f"the figure's font ({', '.join(fonts)}) lacks {''.join(glyphs)}, drawn as empty boxes; "
                              "a font that has them (e.g. Noto Sans CJK) draws them", stacklevel=2)

    return wrapper


def _default_font() -> str:
    """The name of the font matplotlib draws text in by default ("DejaVu Sans")."""
    from matplotlib import font_manager

    return font_manager.FontProperties(fname=font_manager.findfont(font_manager.FontProperties())).get_name()


def _matplotlib_folders() -> list[Path]:
    """The config and cache folders matplotlib makes where MPLCONFIGDIR is unset (its rule on Linux;
    elsewhere ~/.matplotlib). Path.home() may raise RuntimeError (no home folder)."""
    if sys.platform.startswith(("linux", "freebsd")):
        return [Path(os.environ.get(var) or Path.home() / sub, "matplotlib")
                for var, sub in (("XDG_CONFIG_HOME", ".config"), ("XDG_CACHE_HOME", ".cache"))]
    return [Path.home() / ".matplotlib"]


def _writable_matplotlib_folder() -> None:
    """MPLCONFIGDIR set to a temporary folder (removed at exit) where matplotlib's own folders cannot be
    made or written (a read-only or missing home): matplotlib made one itself, saying so in two lines
    of its own ('mkdir -p failed ...', 'Matplotlib created a temporary cache directory ...')."""
    if os.environ.get("MPLCONFIGDIR") or "matplotlib" in sys.modules or sys.platform == "win32":
        return
    try:
        folders = _matplotlib_folders()
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        if all(folder.is_dir() and os.access(folder, os.W_OK) for folder in folders):
            return
    except (OSError, RuntimeError):
        pass
    temporary = tempfile.mkdtemp(prefix="alexnet-matplotlib-")
    atexit.register(shutil.rmtree, temporary, ignore_errors=True)
    os.environ["MPLCONFIGDIR"] = temporary


def _figure(**options: Any) -> Any:
    """A matplotlib Figure of its own, not pyplot's: pyplot's backend was set to Agg for it, which in
    a caller's notebook or script closed their open figures and stopped plt.show() showing any."""
    _writable_matplotlib_folder()  # before matplotlib is imported: it reads its folders then
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**options)
    FigureCanvasAgg(fig)  # what pyplot's Agg gave it: a renderer to measure text with
    return fig


# What a figure's name asks for: matplotlib's formats for plots, PIL's for the filter image (which
# writes raster images only). The writer gets the format named, since it writes a temporary file.
PLOT_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg", ".jpg": "jpeg", ".jpeg": "jpeg"}
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def figure_format(path: str | os.PathLike, formats: dict[str, str] = PLOT_FORMATS) -> str:
    """The format ``path``'s suffix names; ConfigError for another (a .jpg was written as PNG data)."""
    suffix = Path(path).suffix.lower()
    if suffix not in formats:
        raise ConfigError(f"{path}: a figure is written as {', '.join(sorted(set(formats)))}; name it so")
    return formats[suffix]


# No date in a PDF or an SVG, and SVG ids from a fixed salt: the same figure is the same bytes each time.
_SAME_BYTES = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}


def _save(fig, path: str | os.PathLike) -> Path:
    import matplotlib

    path = Path(path)
    fmt = figure_format(path)
    with atomic_path(path, durable=False) as tmp, matplotlib.rc_context({"svg.hashsalt": "alexnet"}):
        # no bbox_inches="tight": the size stays as documented
        same = _SAME_BYTES.get(fmt)  # matplotlib 3.6's JPEG writer takes no metadata at all (a TypeError)
        fig.savefig(tmp, dpi=DPI, format=fmt, **({"metadata": same} if same else {}))
    return path


def _save_array(rgb: np.ndarray, path: str | os.PathLike) -> Path:
    from PIL import Image

    path = Path(path)
    fmt = figure_format(path, IMAGE_FORMATS)
    with atomic_path(path, durable=False) as tmp:
        Image.fromarray(rgb).save(tmp, format=fmt)
    return path


# -- figure 3: conv1 kernels -------------------------------------------------------------------
def filters_grid(weight: torch.Tensor, towers: int = 2, columns: int = 16, scale: int = 4, gap: int = 2) -> np.ndarray:
    """conv1 kernels (O, C, k, k) as one uint8 RGB image laid out as the paper's figure 3: each
    tower a grid of ``columns`` kernels per row, the first tower's ("GPU 1") above the second's.

    Each kernel is stretched to the full 0-255 range on its own (as in the paper's figure 3), and
    drawn ``scale`` times enlarged; tiles are ``gap`` pixels apart, towers ``4 * gap`` apart.
    One-channel kernels are grey; kernels with other than 3 channels show their channel mean.
    A tower of fewer kernels than ``columns`` is one row of them, not a row mostly blank.
    Image size: width ``cols * (k*scale + gap) + gap``, height ``towers * rows * (k*scale + gap)
    + (towers - 1) * 4 * gap + gap`` with ``cols = min(columns, ceil(O / towers))`` and
    ``rows = ceil(O / towers / cols)``.
    """
    w = weight.detach().float().cpu()
    if w.shape[1] != 3:
        w = w.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    o, _, k, _ = w.shape
    per_tower = math.ceil(o / towers)
    columns = min(columns, per_tower)
    rows = math.ceil(per_tower / columns)
    tile = k * scale + gap
    tower_h = rows * tile
    width = columns * tile + gap
    height = towers * tower_h + (towers - 1) * 4 * gap + gap
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    flat = w.reshape(o, -1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    norm = (w - lo.reshape(-1, 1, 1, 1)) / (hi - lo).clamp_min(1e-12).reshape(-1, 1, 1, 1)
    for i in range(o):
        t, j = divmod(i, per_tower)
        r, c = divmod(j, columns)
        img = (norm[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        img = img.repeat(scale, axis=0).repeat(scale, axis=1)
        y = gap + t * (tower_h + 4 * gap) + r * tile
        x = gap + c * tile
        canvas[y : y + k * scale, x : x + k * scale] = img
    return canvas


def plot_filters(
    model: torch.nn.Module, path: str | os.PathLike, columns: int = 16, scale: int = 4, minus: torch.nn.Module | None = None
) -> Path:
    """The paper's figure 3: the conv1 kernels, one grid per tower (GPU), the first above the second;
    with ``minus`` (the network the run started as), what training changed in them."""
    towers = getattr(getattr(model, "config", None), "towers", 1)
    weight = model.conv1.weight.detach() - (minus.conv1.weight.detach() if minus is not None else 0)
    return _save_array(filters_grid(weight, towers, columns, scale), path)


# -- training curves ---------------------------------------------------------------------------
CURVES_SIZE = (1500, 400)  # pixels


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch records of ``run_dir/metrics.jsonl`` (DataError if missing or empty)."""
    path = Path(run_dir) / METRICS_NAME
    if Path(run_dir).is_file():  # a run's checkpoint, given as filters takes one: "RUN/last.pt: no metrics.jsonl"
        run = Path(run_dir).parent
        hint = f": give its run folder, {run}" if (run / METRICS_NAME).is_file() else ""
        raise DataError(f"{run_dir} is a file, not a run folder of 'alexnet train'{hint} (a checkpoint's conv1: visualize filters)")
    if not path.is_file():
        raise DataError(f"{run_dir}: no {METRICS_NAME} (is it a run folder of 'alexnet train'?)")
    records = []
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines[-1].strip() and not _is_json(lines[-1]):
        lines.pop()  # an unfinished last line: the run was killed while appending an epoch's record
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                records.append(_check_record(jsonio.loads(line)))
            except json.JSONDecodeError:
                raise DataError(f"{path}: line {n} is not JSON") from None
            except ValueError as e:
                raise DataError(f"{path}: line {n} is not an epoch's record: {e}") from None
    if not records:
        raise DataError(f"{path}: no epochs recorded yet")
    return records


def _is_json(text: str) -> bool:
    try:
        jsonio.loads(text)
    except json.JSONDecodeError:
        return False
    return True


# The fields of an epoch's record that the curves plot: numbers, or null where there is none.
PLOTTED = ("epoch", "train_loss", "val_loss", "train_top1", "val_top1_error", "val_top5_error", "lr")


def _check_record(record: Any) -> dict[str, Any]:
    """``record`` if it is a JSON object whose plotted fields are numbers (or null; not true/false, which
    Python takes for 1 and 0), else ValueError."""
    if not isinstance(record, dict):
        raise ValueError(f"{json.dumps(record)[:40]}, not an object")
    odd = [k for k in PLOTTED if record.get(k) is not None and (isinstance(record[k], bool) or not isinstance(record[k], int | float))]
    if odd:
        raise ValueError(f"{odd[0]} is {record[odd[0]]!r}, not a number")
    return record


@_missing_glyphs_said_once
def plot_curves(run_dirs: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike | None = None) -> Path:
    """Loss, top-1/top-5 error and learning rate per epoch from ``metrics.jsonl``; writes ``curves.png``.

    Several run folders (seeds, recipes) share one figure, a colour per run, named by its folder;
    solid lines are validation, dashed ones training; a run short of its planned epochs is named
    with how far it got and its last points are ringed (:func:`unfinished`). Default ``out``: ``RUN/curves.png`` for one
    run, ``curves.png`` here for several. Cheap enough to call after every epoch. Size:
    :data:`CURVES_SIZE` pixels.
    """
    runs = [run_dirs] if isinstance(run_dirs, str | os.PathLike) else list(run_dirs)
    if not runs:
        raise DataError("curves: no run folder given")
    records = [read_metrics(run) for run in runs]
    fig = _figure(figsize=(CURVES_SIZE[0] / DPI, CURVES_SIZE[1] / DPI), layout="constrained")
    axes = fig.subplots(1, 3)
    for i, (run, recs) in enumerate(zip(runs, records)):
        short = unfinished(run, recs)
        name = "" if len(runs) == 1 else f"{plain(Path(run).resolve().name)}{f' ({short})' if short else ''}: "
        _plot_run(axes, recs, f"C{i % 10}", name, open_end=bool(short))
        if short and len(runs) == 1:
            fig.suptitle(f"{plain(Path(run).resolve().name)}: {short}", fontsize="medium")
    axes[0].set(title="loss (solid: validation, dashed: train)", xlabel="epoch")
    axes[1].set(title="error rate (dotted: val top-5)", xlabel="epoch", ylim=(0, 1))
    axes[2].set(title="learning rate (end of epoch)", xlabel="epoch")
    if any((r.get("lr") or 0) > 0 for recs in records for r in recs):  # a missing or null lr draws nothing
        axes[2].set_yscale("log")
    for ax in axes[:2]:
        ax.legend(fontsize="small")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs: 1, 2, 3, not 1.25
    default = Path(runs[0]) / CURVES_NAME if len(runs) == 1 else Path(CURVES_NAME)
    return _save(fig, out if out is not None else default)


def unfinished(run_dir: str | os.PathLike, records: list[dict[str, Any]]) -> str:
    """``"12 of 30 epochs"`` for a run with fewer epochs recorded than its config.json planned
    (still running, stopped, or ended by the plateau rule); ``""`` for a finished run or when
    config.json does not say. Runs of different lengths share a figure's axis: this tells a run
    that was cut short from one that was planned short."""
    try:
        planned = int(jsonio.loads((Path(run_dir) / CONFIG_NAME).read_text(encoding="utf-8"))["train"]["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    done = records[-1].get("epoch", len(records))
    return f"{done} of {planned} epochs" if isinstance(done, int) and done < planned else ""


def _plot_run(axes, records: list[dict[str, Any]], colour: str, name: str, open_end: bool = False) -> None:
    """One run's lines on the three panels of :func:`plot_curves`, in ``colour``; ``open_end``
    rings each line's last point (the run has not reached its planned epochs)."""
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(records)]

    def series(key: str, fn=lambda v: v):
        return [fn(r[key]) if r.get(key) is not None else float("nan") for r in records]

    style = {"color": colour, "marker": "o", "markersize": 3}
    lines = [
        (axes[0], series("train_loss"), "--", f"{name}train"),
        (axes[0], series("val_loss"), "-", f"{name}validation"),
        (axes[1], series("train_top1", lambda v: 1 - v), "--", f"{name}train top-1"),
        (axes[1], series("val_top1_error"), "-", f"{name}val top-1"),
        (axes[1], series("val_top5_error"), ":", f"{name}val top-5"),
        (axes[2], series("lr"), "-", None),
    ]
    for ax, ys, fmt, label in lines:
        ax.plot(epochs, ys, fmt, label=label, **style)
        if open_end:
            ax.plot(epochs[-1:], ys[-1:], "o", markersize=9, fillstyle="none", color=colour)


# -- confusion matrix --------------------------------------------------------------------------
CONFUSION_SIZE = (900, 800)


def tick_label(name: str, width: int = 24) -> str:
    """A class name for an axis: whole up to ``width`` characters, else cut with an ellipsis (a cut
    without one read as another name: 'Rhodesian_ridgebac')."""
    return name if len(name) <= width else name[: width - 1] + "\u2026"


@_missing_glyphs_said_once
def plot_confusion(confusion: torch.Tensor, classes: list[str], path: str | os.PathLike, columns: list[str] | None = None) -> Path:
    """Row-normalised confusion matrix (true class down, predicted across: ``columns``, default
    ``classes``). Size: :data:`CONFUSION_SIZE`."""
    columns = columns or classes
    m = confusion.double()
    m = (m / m.sum(dim=1, keepdim=True).clamp_min(1)).numpy()
    fig = _figure(figsize=(CONFUSION_SIZE[0] / DPI, CONFUSION_SIZE[1] / DPI), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="fraction of the true class")
    n = len(classes)
    size = 10 if n <= 12 else 7  # a few classes get readable labels
    if n <= 40:  # names are unreadable beyond that
        ax.set_xticks(range(len(columns)), [plain(tick_label(c)) for c in columns], rotation=90, fontsize=size)
        ax.set_yticks(range(n), [plain(tick_label(c)) for c in classes], fontsize=size)
    if n <= 15:
        for i in range(n):
            for j in range(len(columns)):
                if confusion[i, j]:
                    ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=size,
                            color="white" if m[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    return _save(fig, path)


# -- figure 4 (left): predictions --------------------------------------------------------------
CELL = (300, 400)  # pixels per image in the prediction and retrieval figures
# Agg draws at most 65,535 pixels a side: 700 predictions (175 rows) or 220 neighbours in a row
# stopped the command with an internal error after the work. Figures this size are read anyway.
MOST_PREDICTIONS_DRAWN = 100  # 25 rows of 4 cells, 10,000 pixels tall
MOST_NEIGHBOURS_DRAWN = 20  # a row 6,300 pixels wide


def _the_first(items: list, most: int, what: str, path: str | os.PathLike) -> list:
    """``items`` up to ``most``, with a warning naming the figure when some are left out of it."""
    if len(items) > most:
        warnings.warn(f"{path}: the figure shows the first {most} of the {len(items)} {what}", stacklevel=3)
    return items[:most]


def grid_size(n: int, columns: int) -> tuple[int, int]:
    """Pixel size (width, height) of a figure of ``n`` cells in rows of ``columns``."""
    cols = min(n, columns)
    return cols * CELL[0], math.ceil(n / cols) * CELL[1]


def _show(ax, image: torch.Tensor) -> None:
    img = image.permute(1, 2, 0).cpu().numpy()
    if img.shape[2] == 1:
        # vmin/vmax: the 0-255 scale, as RGB tiles are shown; matplotlib would stretch each grey
        # image to its own range (a uniform grey tile showed black, a dim photo bright).
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(img)
    ax.set_xticks([])
    ax.set_yticks([])


# One cell of the prediction figure in pixels, top to bottom: title, image, gap, bars, the bars' x
# ticks and note; left to right: margin, image and bars, margin. The sums are CELL.
_CELL_ROWS = (24, 196, 8, 120, 52)
_CELL_COLUMNS = (12, 276, 12)
MAX_BARS = 5  # bars per image, as in the paper; more would not leave the names room


@_missing_glyphs_said_once
def plot_predictions(
    images: list[torch.Tensor], results: list[dict[str, Any]], path: str | os.PathLike, columns: int = 4
) -> Path:
    """The paper's figure 4 (left): each image above the bars of its top classes (at most 5).

    ``results`` are :func:`alexnet.predict.predict` entries. The true class, when known, is written
    above the image and its bar is red (a note under the bars says when it is not among them). The
    class names are written on the bars, shortened with an ellipsis only where they would leave the
    cell. Size: :func:`grid_size` (len(images), columns), every row of cells the same height; at most
    :data:`MOST_PREDICTIONS_DRAWN` images are drawn (a warning says so).
    """
    images = _the_first(images, MOST_PREDICTIONS_DRAWN, "images", path)
    n = len(images)
    w, h = grid_size(n, columns)
    cols, rows = min(n, columns), math.ceil(n / min(n, columns))
    fig = _figure(figsize=(w / DPI, h / DPI))
    # Fixed pixel margins (no relative ones): a tall figure of many images gets no blank bands.
    grid = fig.add_gridspec(rows * len(_CELL_ROWS), cols * len(_CELL_COLUMNS), height_ratios=_CELL_ROWS * rows,
                            width_ratios=_CELL_COLUMNS * cols, left=0, right=1, top=1, bottom=0, hspace=0, wspace=0)
    texts = []
    for i, (image, res) in enumerate(zip(images, results)):
        r, c = divmod(i, cols)
        ax = fig.add_subplot(grid[r * len(_CELL_ROWS) + 1, c * len(_CELL_COLUMNS) + 1])
        _show(ax, image)
        truth = res.get("label")
        title = ax.set_title(f"true: {plain(truth)}" if truth is not None else plain(Path(res["path"]).name), fontsize=8)
        bars = fig.add_subplot(grid[r * len(_CELL_ROWS) + 3, c * len(_CELL_COLUMNS) + 1])
        texts += [(title, bars), *_draw_bars(bars, res["top"][:MAX_BARS], truth)]
    renderer = fig.canvas.get_renderer()
    for text, ax in texts:
        _fit(text, ax.get_window_extent(renderer), renderer)
    return _save(fig, path)


def _draw_bars(ax, top: list[dict[str, Any]], truth: str | None) -> list[tuple[Any, Any]]:
    """Horizontal probability bars, the most probable on top, each with its class name written on it
    (inside the axes, so no name can run off the figure's edge); returns the texts and their axes."""
    y = range(len(top) - 1, -1, -1)
    colours = ["tab:red" if t["class"] == truth else "tab:blue" for t in top]
    ax.barh(list(y), [t["probability"] for t in top], color=colours, alpha=0.45, height=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.5, len(top) - 0.5)
    ax.set_yticks([])
    ax.tick_params(axis="x", labelsize=6)
    texts = [(ax.text(0.01, j, plain(t["class"]), fontsize=7, va="center", ha="left"), ax) for j, t in zip(y, top)]
    if truth is not None and truth not in [t["class"] for t in top]:
        texts.append((ax.set_xlabel(f"(the true class is not in the top {len(top)})", fontsize=7, color="tab:red"), ax))
    return texts


def _fit(text, box, renderer) -> None:
    """Shorten ``text`` with an ellipsis until it lies within ``box``'s width (pixels)."""
    full = text.get_text()
    keep = len(full)
    while keep > 1:
        extent = text.get_window_extent(renderer)
        if extent.x0 >= box.x0 - 0.5 and extent.x1 <= box.x1 + 0.5:
            return
        keep -= 1
        text.set_text(full[:keep].rstrip() + "\u2026")


# -- figure 4 (right): retrieval ---------------------------------------------------------------
RETRIEVAL_CELL = (300, 340)  # pixels per image: a 2-line title above a square photo
@_missing_glyphs_said_once
def plot_retrieval(query: torch.Tensor, neighbours: list[tuple[torch.Tensor | None, dict[str, Any]]], path: str | os.PathLike) -> Path:
    """The paper's figure 4 (right): the query, then its nearest images by fc7 distance, in one row
    (an image of None, one that could not be read, an empty tile saying so).

    Size: :data:`RETRIEVAL_CELL` per image, in one row; at most :data:`MOST_NEIGHBOURS_DRAWN` neighbours
    are drawn (a warning says so).
    """
    neighbours = _the_first(neighbours, MOST_NEIGHBOURS_DRAWN, "neighbours", path)
    n = 1 + len(neighbours)
    w, h = n * RETRIEVAL_CELL[0], RETRIEVAL_CELL[1]
    fig = _figure(figsize=(w / DPI, h / DPI))
    axes = fig.subplots(1, n, squeeze=False)
    # Square tiles filling the cells: the default margins left a strip of small photos in white.
    fig.subplots_adjust(left=8 / w, right=1 - 8 / w, bottom=8 / h, top=1 - 44 / h, wspace=0.06)
    _show(axes[0, 0], query)
    axes[0, 0].set_title("query", fontsize=9, color="tab:red")
    for ax, (image, hit) in zip(axes[0, 1:], neighbours):
        if image is None:
            ax.set_box_aspect(1)  # square, as the photos' tiles
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, "cannot read the image", ha="center", va="center", fontsize=8, color="gray", transform=ax.transAxes)
        else:
            _show(ax, image)
        label = f"{plain(hit['label'])}\n" if hit.get("label") else ""
        ax.set_title(f"{label}d = {hit['distance']:.3g}", fontsize=8)
    return _save(fig, path)
