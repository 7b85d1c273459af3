"""Folders of class sub-folders of images (the ImageFolder layout), decoded the paper's way,
surviving the broken files every real image collection has."""

from __future__ import annotations

import collections
import errno
import functools
import io
import math
import operator
import os
import stat
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .. import faults
from ..errors import DataError, DataGone, decoding_failure
from ..runtime import counted, say

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
BAD_FILES_NAME = "bad_files.txt"
MAX_IMAGE_BYTES = 256 << 20  # a bigger "image" is junk (or /dev/zero): a bad file, not read forever
# PIL's names of JPEG files: "MPO" is a JPEG that carries more pictures after its first (a depth map,
# a large preview), as many phones and cameras write; decoders read the first, the photo.
JPEG_FORMATS = ("JPEG", "MPO")


@functools.cache
def jpeg_decoder() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torchvision's JPEG decoder on the CPU (a file's bytes -> RGB uint8 CHW), or None where
    torchvision has none (PIL decodes).

    It is torchvision's own operator, ``torch.ops.image.decode_jpeg``, which ``torchvision.io.decode_jpeg``
    calls for a CPU tensor: loading its library is 3 ms, while importing ``torchvision.io`` (all of
    torchvision: its models, and torch._dynamo with them) was 1.7 s of every command that reads a
    JPEG (a third of a short training's start). Where the library is not where torchvision keeps it,
    or fails a decode of a JPEG made here, ``torchvision.io.decode_jpeg`` is imported as before."""
    return _torchvision_jpeg_op() or _torchvision_io_decoder()


def _torchvision_jpeg_op() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``torch.ops.image.decode_jpeg`` from torchvision's image library, found as torchvision finds it
    (``torchvision.extension._get_extension_path``: ``image_stable`` since 0.24, ``image`` before),
    without importing torchvision; None if that fails or its decode of an 8x8 JPEG is not PIL's."""
    import importlib.machinery
    import importlib.util

    try:
        spec = importlib.util.find_spec("torchvision")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations or os.name == "nt":  # Windows needs its DLL folders set
        return None
    finder = importlib.machinery.FileFinder(
        spec.submodule_search_locations[0],
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES))
    rgb = 3  # torchvision.io.ImageReadMode.RGB
    for name in ("image_stable", "image"):
        lib = finder.find_spec(name)
        if lib is None or lib.origin is None:
            continue
        try:
            torch.ops.load_library(lib.origin)
            op = torch.ops.image.decode_jpeg
            decode = functools.partial(op, mode=rgb, apply_exif_orientation=False)
            return decode if _decodes_as_pil(decode) else None
        except (OSError, AttributeError, RuntimeError, TypeError):
            return None
    return None


def _decodes_as_pil(decode: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """Whether ``decode`` gives PIL's pixels (within libjpeg's rounding) for an 8x8 JPEG made here."""
    pixels = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3) * 3
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    with Image.open(io.BytesIO(data)) as img:
        want = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).int()
    got = decode(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    return got.shape == want.shape and got.dtype == torch.uint8 and int((got.int() - want).abs().max()) <= 2


def _torchvision_io_decoder() -> Callable[[torch.Tensor], torch.Tensor] | None:
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:  # pragma: no cover
        return None
    return functools.partial(decode_jpeg, mode=ImageReadMode.RGB)


def read_class_names(root: Path, folders: list[str]) -> list[str]:
    """Human-readable names: a ``classes.tsv`` (folder, [index,] name) in ``root`` or its parent;
    else torchvision's ImageNet-1k names when the folders are all 1000 ILSVRC synsets, or some of
    them that the user's devkit ``meta.mat`` or Kaggle ``LOC_synset_mapping.txt`` lists
    (:func:`imagenet_names`); else the names of Imagenette's or Imagewoof's synsets; else the
    folder names."""
    return class_names_from(root, folders)[0]


def class_names_from(root: Path, folders: list[str]) -> tuple[list[str], str]:
    """:func:`read_class_names`'s names and where they came from (a file's path, or what named
    them), for a run to record: the file may lie folders above the data, or be gone later."""
    names = dict.fromkeys(folders)
    for tsv in (root / "classes.tsv", root.parent / "classes.tsv"):
        if tsv.is_file():
            for line in tsv.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 2 and parts[0] in names:
                    names[parts[0]] = parts[-1]
            return [class_name(names[f] or f) for f in folders], str(tsv.resolve())
    from .ilsvrc import is_wnid
    from .imagenette import synset_names

    if len(folders) == 1000 and all(is_wnid(f) for f in folders):
        # The 1000 ILSVRC-2012 synsets sorted by WNID: the order of torchvision's categories. No
        # devkit file is read (it would rank them so too; without scipy it only warned).
        return _categories(), "torchvision's ImageNet-1k categories (the 1000 ILSVRC-2012 synset folders)"
    named = imagenet_names(root, folders)
    if named is not None:
        return named[0], f"{named[1].resolve()} (by torchvision's ImageNet-1k categories)"
    known = synset_names(folders)  # Imagenette / Imagewoof without their classes.tsv
    if known is not None:
        return known, "Imagenette's and Imagewoof's synset names"
    return [class_name(f) for f in folders], "the class folder names"


def imagenet_names(root: Path, folders: list[str]) -> tuple[list[str], Path] | None:
    """torchvision's names of ``folders`` when every one is among the 1000 ILSVRC-2012 synsets of the
    user's own devkit or Kaggle files beside the data (an "ImageNet-100"), and that file; else None.
    The data folder is ``root``'s parent for its train/ or val/, where those files are looked for
    from (as for a flat val/): both splits must find the same ones. A synset's torchvision index is
    its rank in WNID order."""
    from .ilsvrc import imagenet_wnids, is_wnid

    if not folders or not all(is_wnid(f) for f in folders):
        return None  # not ImageNet's folders: no file is looked for
    found = imagenet_wnids(root.parent if root.name in ("train", "val") else root)
    if found is None:
        return None
    rank = {w: i for i, w in enumerate(found[0])}
    missing = [f for f in folders if f not in rank]
    if missing:  # an ImageNet-21k synset among them: said, or the WNIDs look like a file not found
        warn_once(f"{found[1]}: lists {len(folders) - len(missing)} of the {len(folders)} synset folders "
                   f"({printable(missing[0])!r} is none of its 1000 ILSVRC-2012 synsets), so the classes keep their "
                   "folder names; a classes.tsv names them otherwise")
        return None
    categories = _categories()
    return [categories[rank[f]] for f in folders], found[1]


@functools.cache
def warn_once(message: str) -> None:
    """A warning said once per process: train/ and val/ each name their classes (reading the same
    mapping files), and each image's decode resets the registry that Python's own once-only rule keeps."""
    warnings.warn(message, stacklevel=4)


def _categories() -> list[str]:
    """torchvision's 1000 ImageNet-1k class names, in its class index order."""
    from torchvision.models import AlexNet_Weights

    return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


def in_data_names(known: list[str] | None, classes: list[str], folders: list[str] | None) -> list[str] | None:
    """A model's or run's class names ``known`` as the data names its classes now: a name that is one of
    the data's class folders (and none of its class names) becomes that folder's class name. A run
    trained on ImageNet synset folders before a devkit or Kaggle file beside them named the folders
    by torchvision's categories (:func:`imagenet_names`) saved their WNIDs: it must still resume,
    and evaluate and --init-from must still find its classes."""
    if not known or not folders or len(folders) != len(classes):
        return known
    named, of_folder = set(classes), {class_name(f): c for f, c in zip(folders, classes)}
    return [of_folder[k] if k in of_folder and k not in named else k for k in known]


def by_folders(ours: list[str], trained: list[str] | None, data_classes: list[str], folders: list[str] | None) -> list[str]:
    """A model's class names, each that the data does not name taken as the data's name of the folder
    it ``trained`` on: a run named by a mapping file (torchvision's names of synset folders) scored on
    those folders without the file, where the data names them by their WNIDs. Only folders the data
    names by themselves: a classes.tsv's other name of one may be another class."""
    if not trained or not folders or len(trained) != len(ours) or len(folders) != len(data_classes):
        return ours
    named = set(data_classes)
    of_folder = {class_name(f): c for f, c in zip(folders, data_classes) if c == class_name(f)}
    return [of_folder.get(f, c) if c not in named else c for f, c in zip(trained, ours)]


def printable(name: str) -> str:
    """A file or folder name as text that any file, terminal or figure takes: bytes that are not
    UTF-8 (an old archive's Latin-1 names, which Python keeps as lone surrogates) become \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def class_name(name: str) -> str:
    """A class's name as every command compares it: printable, in one Unicode spelling (NFC). macOS
    writes a folder "Café" with a combining accent (NFD) where Linux and Windows write one character,
    and a checkpoint trained on one must know its classes on the other."""
    return unicodedata.normalize("NFC", printable(name))


# Files an operating system writes into a folder of photos by itself: Windows Explorer's thumbnail
# caches and folder settings (macOS's .DS_Store is hidden); a Synology NAS's @eaDir in every folder,
# holding JPEG thumbnails of each photo (@eaDir/IMG_1.jpg/SYNOPHOTO_THUMB_M.jpg).
_OS_FILES = frozenset({"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini", "@eadir"})


def skipped(name: str) -> bool:
    """A folder entry that is never data: hidden (".name"), ``__MACOSX``, the folder of "._" metadata
    files that a zip made on macOS unpacks beside the photos (at the top and in train/ and val/), a
    file Windows writes beside them (``Thumbs.db``, ``desktop.ini``), or a Synology NAS's ``@eaDir``."""
    return name.startswith(".") or name == "__MACOSX" or name.lower() in _OS_FILES


def find_classes(root: str | os.PathLike, broken_links: bool = False, names: bool = True) -> tuple[list[str], list[str]]:
    """Class folder names (sorted: the index order) and human-readable names (see read_class_names;
    the folder names without ``names``). A link to a missing folder is refused, unless
    ``broken_links`` (a search for an image's class among folders that are not a data set, where it
    is no class: ``predict``)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    entries = [d for d in os.scandir(root) if not skipped(d.name)]
    # A link to a folder that is gone (an unmounted drive, a moved subset) is no directory to is_dir():
    # left out without a word, the run would train one class fewer, as an empty class folder is refused.
    broken = [d for d in entries if d.is_symlink() and not os.path.exists(d.path)
              and not d.name.lower().endswith(IMAGE_EXTENSIONS)]  # a loose photo's link is no class folder
    if broken and not broken_links:
        raise DataError(f"{printable(broken[0].path)}: a link to {printable(os.readlink(broken[0].path))}, which does not "
                        f"exist: a class folder with no images (remove the link, or make its target reachable)")
    folders = sorted(d.name for d in entries if d.is_dir())
    if not folders:
        raise DataError(f"{root}: no class sub-folders (expected ROOT/CLASS/IMAGE files)")
    return folders, read_class_names(root, folders) if names else list(folders)


def _image_files(folder: Path, others: list[str] | None = None) -> list[str]:
    """Image files under ``folder``, sorted; hidden files and folders (".name") and ``__MACOSX``
    are not listed: macOS leaves a "._photo.jpg" of metadata beside every photo copied to a FAT or network drive. The
    other regular files go to ``others`` (an iPhone's .HEIC photos, notes), for a message to name.

    Linked folders are entered as torchvision's ImageFolder enters them (a class folder linked in
    from elsewhere is the usual way to make a subset), each real folder once. A link to a folder
    that holds this one is not followed, with a warning: it would loop, or file every other class's
    images under this one. Only regular files (or links to them) count: a FIFO named x.jpg
    would block its reader, and a link to /dev/zero would be read forever.
    """
    files, pending, seen = [], [str(folder)], set()
    above = _ancestors(folder)
    while pending:
        path = pending.pop()
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in seen:
                continue
            if (st.st_dev, st.st_ino) in above:
                warnings.warn(f"{printable(path)}: a link to {printable(os.path.realpath(path))}, which holds the folder "
                              f"{printable(str(folder))}; not followed", stacklevel=2)
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(path))
        except OSError:  # unreadable folder or broken link: skipped, as os.walk does
            continue
        for entry in entries:
            if skipped(entry.name):
                continue
            if entry.is_dir():  # follows links
                pending.append(entry.path)
            elif _image_file(entry):
                files.append(entry.path)
            elif others is not None and entry.is_file():
                others.append(entry.path)
    return sorted(files)


def has_images(folder: Path) -> bool:
    """Whether :func:`list_images` finds an image in ``folder``: true at its first image file directly
    in it, without listing the rest; else (images only in sub-folders, or none) as :func:`_image_files` says."""
    try:
        with os.scandir(folder) as entries:
            if any(_image_file(e) for e in entries):
                return True
    except OSError:  # unreadable: _image_files skips it, finding nothing
        pass
    return bool(_image_files(folder))


def _ancestors(folder: Path) -> set[tuple[int, int]]:
    """(device, inode) of every folder above ``folder``, as named and as its real path (a class folder
    linked in from elsewhere)."""
    found = set()
    for parent in {*Path(os.path.abspath(folder)).parents, *Path(os.path.realpath(folder)).parents}:
        try:
            st = os.stat(parent)
        except OSError:
            continue
        found.add((st.st_dev, st.st_ino))
    return found


def _image_file(entry: os.DirEntry) -> bool:
    """A listed image: an image extension, not hidden, a regular file, a link to one, or a link to
    nothing (a photo linked in from a drive since unmounted or moved): read, that one is reported
    unreadable and listed in bad_files.txt, where it was left out without a word."""
    if not entry.name.lower().endswith(IMAGE_EXTENSIONS) or entry.name.startswith("."):
        return False
    return entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path))


def top_level_images(folder: str | os.PathLike) -> list[str]:
    """Image files directly in ``folder`` (not in its sub-folders), sorted; regular files only, not hidden."""
    return sorted(e.path for e in os.scandir(folder) if _image_file(e))


def list_images(
    root: str | os.PathLike, folders: list[str], others: list[str] | None = None, empty_ok: bool = False
) -> list[tuple[str, int]]:
    """(path, class index) of every image file, in a fixed order; the class folders' other files
    go to ``others``. A folder without images is a DataError unless ``empty_ok`` (an index of a
    photo collection, where it is a class with nothing to find)."""
    root = Path(root)
    samples, others = [], others if others is not None else []
    for label, folder in enumerate(folders):
        skipped = len(others)
        files = _image_files(root / folder, others)
        if not files and not empty_ok:
            why = f" it reads ({not_images(others[skipped:])})" if len(others) > skipped else ""
            raise DataError(f"{root / folder}: class folder has no images{why}")
        samples.extend((f, label) for f in files)
    return samples


class ImageList(Sequence):
    """(path, class index) of each image, as a list of tuples reads, kept in three numpy arrays.

    A data-loading worker forked from the training process shares its memory until it writes a page,
    and reading a Python object writes its reference count: as a list, each worker copied every
    (path, label) tuple and path string it read (and Subset's index ints), about 190 bytes per image
    by the end of the first epoch, beside the 200 the main process held: 240 MB a worker for
    ImageNet's 1.28 M photos (per-image figures of benchmarks/memory_growth.py). Bytes in an array are read
    without a write, and take about 70 bytes an image.
    """

    def __init__(self, pairs: Iterable[tuple[str, int]]) -> None:
        if isinstance(pairs, ImageList):  # another split's or data set's listing: shared, not copied
            self._bytes, self._ends, self._labels = pairs._bytes, pairs._ends, pairs._labels
            return
        paths, labels = [], []
        for path, label in pairs:
            paths.append(os.fsencode(path))  # a name that is not UTF-8 comes back as os.listdir gave it
            labels.append(label)
        self._bytes = np.frombuffer(b"".join(paths), dtype=np.uint8)
        self._ends = np.cumsum([len(p) for p in paths], dtype=np.int64)
        self._labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, i: int | slice) -> tuple[str, int] | list[tuple[str, int]]:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        k = operator.index(i)  # a numpy index too (a Subset of an array of indices)
        k += len(self) if k < 0 else 0
        if not 0 <= k < len(self):
            raise IndexError(f"image {i} of {len(self)}")
        start = int(self._ends[k - 1]) if k else 0
        return os.fsdecode(self._bytes[start : self._ends[k]].tobytes()), int(self._labels[k])

    def __iter__(self) -> Iterator[tuple[str, int]]:
        """Every pair in order, from one copy of the bytes (a listing's digest reads them all)."""
        return zip(self.paths(), self._labels.tolist())

    @property
    def labels(self) -> np.ndarray:
        """Every image's class index, in order: one read-only array, no Python object per image."""
        labels = self._labels.view()
        labels.flags.writeable = False
        return labels

    def paths(self, indices: Sequence[int] | np.ndarray | None = None) -> list[str]:
        """The paths of the images at ``indices`` (default: all), in that order, cut from one copy of the
        bytes: one ``self[i][0]`` at a time (numpy scalars and a slice each) is ~1 us an image, seconds of
        each start on ImageNet's 1.28 M, where the statistics key lists them all. For many indices."""
        data, ends = self._bytes.tobytes(), self._ends.tolist()
        starts = [0, *ends[:-1]]
        if indices is None:
            return [os.fsdecode(data[a:b]) for a, b in zip(starts, ends)]
        return [os.fsdecode(data[starts[k]:ends[k]]) for k in np.asarray(indices, dtype=np.int64).tolist()]


def not_images(others: list[str]) -> str:
    """Files left out as not images, for a message: how many of each kind, and the kinds that are
    read (a folder of .HEIC photos is not empty to its owner)."""
    kinds = collections.Counter(os.path.splitext(f)[1].lower() or "no extension" for f in others)
    listed = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common(4)) + (", ..." if len(kinds) > 4 else "")
    return f"{counted(len(others), 'file')} of other kinds: {listed}; it reads {' '.join(IMAGE_EXTENSIONS)}"


def _log_fd(path: Path, flags: int) -> int:
    """A descriptor of the list of unreadable images that never follows a symbolic link (OSError
    ELOOP there): a link planted in a run folder, or copied with one, had lines appended to its
    target (``bad_files.txt -> ~/.bashrc``)."""
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o666)


class BadFiles:
    """Where unreadable images go: skipped with one warning line each, counted, and listed in
    ``log_path`` (one ``PATH<TAB>REASON`` line each); or, when ``strict``, a DataError at the first.

    The list file doubles as the memory shared by DataLoader worker processes, so a file that is
    met again in a later epoch or by another worker is not reported twice.
    """

    def __init__(self, strict: bool = False, log_path: str | os.PathLike | None = None) -> None:
        self.strict = strict
        self.log_path = Path(log_path) if log_path is not None else None
        self.seen: dict[str, str] = {}
        self._read, self._entries = 0, {}  # the list file's bytes read so far, and their entries

    def _logged(self) -> dict[str, str]:
        """The list file's entries, reading only what was appended since the last call: read whole at
        each report, B unreadable files cost B**2 / 2 lines (6,000: a minute; ImageNet-sized sets with
        tens of thousands of bad files, hours)."""
        if self.log_path is None:
            return {}
        try:
            with open(_log_fd(self.log_path, os.O_RDONLY), "rb") as f:
                if os.fstat(f.fileno()).st_size < self._read:  # another list since: read it whole
                    self._read, self._entries = 0, {}
                f.seek(self._read)
                new = f.read()
        except OSError:  # not written yet (or gone: a new list)
            self._read, self._entries = 0, {}
            return self._entries
        whole = new[: new.rfind(b"\n") + 1]  # a line another process is still appending waits for the next call
        self._read += len(whole)
        # surrogateescape: a file name that is not UTF-8 (an old archive's Latin-1) is written and read
        # back as its bytes; split at newlines only, since splitlines() also splits at U+2028 and \x85
        for line in whole.decode("utf-8", errors="surrogateescape").split("\n"):
            if line:
                path, _, reason = line.partition("\t")
                self._entries[path] = reason
        return self._entries

    def report(self, path: str, error: BaseException | str) -> None:
        """Record ``path`` as unreadable for ``error`` (an exception or a reason): DataError when
        ``strict``; else, the first time it is met (by this process, or any that shares the list file),
        a warning line and a line in the list file (DataError if that file is a symbolic link)."""
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        reason = " ".join(str(reason).split())  # one line, whatever the decoder said
        if self.strict:
            raise DataError(f"unreadable image {path}: {reason} (without --strict it would be skipped)")
        if path in self.seen or path in self._logged():
            self.seen.setdefault(path, reason)
            return
        self.seen[path] = reason
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = _log_fd(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            except OSError as e:
                if e.errno != errno.ELOOP:
                    raise
                raise DataError(f"{self.log_path}: a symbolic link, not a list of unreadable images: not followed "
                                "(remove it)") from None
            with open(fd, "a", encoding="utf-8", errors="surrogateescape") as f:  # one short append: atomic enough
                f.write(f"{path}\t{reason}\n")
        say(f"warning: skipping unreadable image {path}: {reason}")  # above an evaluate bar, not on its line

    def reasons(self) -> dict[str, str]:
        """Every file reported so far (by this process, or by any that shares the list file): why."""
        return {**self._logged(), **self.seen}

    def paths(self) -> list[str]:
        """Every file reported so far (:meth:`reasons`), sorted."""
        return sorted(self.reasons())

    @property
    def count(self) -> int:
        """How many files were reported so far (:meth:`paths`)."""
        return len(self.paths())


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16/32-bit integer greyscale scaled from 0-65535 (from 0-255 where no
    value is above 255; a 32-bit value above 65535 is clipped) to 0-255, float
    greyscale of 0-1 (a 32-bit float TIFF's convention) scaled from 0-1, alpha and palette transparency
    dropped, CMYK / greyscale / palette / YCbCr converted."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.nan_to_num(np.asarray(img).astype(np.float64))  # a float image's NaN: black, not a cast warning
        top = 65535.0 if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255) else 255.0
        if img.mode == "F" and arr.max(initial=0) <= 1.0:
            top = 1.0  # read as 0-255 it was black: every pixel rounded to 0 or 1
        arr = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode in ("P", "PA", "LA", "RGBA", "La", "RGBa") or "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def _resize_crop(x: torch.Tensor, resize: int, crop: int | None) -> torch.Tensor:
    """(3, H, W) uint8: shorter side -> ``resize`` (antialiased bilinear, as PIL), central ``crop``."""
    h, w = x.shape[-2:]
    scale = resize / min(w, h)
    nh, nw = max(resize, round(h * scale)), max(resize, round(w * scale))
    top, left = ((nh - crop) // 2, (nw - crop) // 2) if crop is not None else (0, 0)
    if crop is not None and max(nh, nw) > STRIP * resize:
        x, (nh, top), (nw, left) = _middle(x, (nh, top), (nw, left), crop)
    if (nh, nw) != tuple(x.shape[-2:]):
        x = _resize_uint8(x, nh, nw)
    if crop is not None:
        x = x[:, top : top + crop, left : left + crop]
    return x.contiguous()


# An image whose resize is more than this many times as long as wide is a strip (a web page's 1x20000
# divider): only its middle is resized. All of it took 28 s and 8.7 GB; photos, panoramas included,
# are resized whole, exactly as before.
STRIP = 16


def _middle(
    x: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int], crop: int
) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """The part of ``x`` that its ``crop`` at (resized length, offset) ``rows`` and ``cols`` is
    resized from, with a margin for the antialiasing filter; its resized lengths and the crop's
    offsets in it. Within a pixel of cropping the whole resize: the part's scale is rounded."""
    out = []
    for axis, (n, start) in enumerate((rows, cols)):
        size = x.shape[-2 + axis]
        r = size / n  # source pixels per resized pixel
        margin = math.ceil(r) + 2
        a, b = max(0, math.floor(start * r) - margin), min(size, math.ceil((start + crop) * r) + margin)
        length = max(crop, round((b - a) / r))
        out.append((a, b, length, min(max(0, round(start - a / r)), length - crop)))
    (a0, b0, nh, top), (a1, b1, nw, left) = out
    return x[..., a0:b0, a1:b1], (nh, top), (nw, left)


def _resize_uint8(x: torch.Tensor, h: int, w: int, exact: bool | None = None) -> torch.Tensor:
    """Antialiased bilinear resize of a (3, H, W) uint8 image. The CPU has an exact uint8 kernel
    (PIL's arithmetic, ``exact``); elsewhere (CUDA has none for uint8) it runs in float32, rounded back."""
    if exact if exact is not None else x.device.type == "cpu":
        return torch.nn.functional.interpolate(x[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
    y = torch.nn.functional.interpolate(x[None].float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
    return y.round_().clamp_(0, 255).to(torch.uint8)


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of an image file: a regular file of 1 to MAX_IMAGE_BYTES bytes, else ValueError.

    Opened non-blocking and checked with fstat, so a FIFO or device (however it got here) is refused
    at once instead of blocking or being read forever.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file (a FIFO, device or socket)")
        data = f.read(MAX_IMAGE_BYTES + 1)
    if not data:
        raise ValueError("empty file (0 bytes)")
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"larger than {MAX_IMAGE_BYTES >> 20} MiB, the limit for one image")
    return data


def open_header(data: bytes, resize: int | None = None) -> Image.Image:
    """PIL's view of an encoded image, reading its header only: format, size, mode, and the
    decompression-bomb check (raised as an error, not a warning).

    With ``resize`` (the shorter side it will be resized to), the check counts the pixels that will
    be decoded: a JPEG over PIL's limit (a 108-megapixel phone photo, a stitched panorama) is then
    returned set to decode at libjpeg's reduced size (PIL ``draft``, 1/2 to 1/8), which is what
    :func:`decode_bytes` decodes it at anyway, and is refused only if that is still over the limit.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise UnidentifiedImageError(f"not an image format PIL can read ({len(data)} bytes)") from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            # a warning is no error to callers that catch errors; over twice the limit PIL raises
            img = _reduced_jpeg(data, resize)
            if img is None:
                raise Image.DecompressionBombError(str(e)) from None
            return img


def _reduced_jpeg(data: bytes, resize: int | None) -> Image.Image | None:
    """A JPEG set to decode at the smallest of libjpeg's scales that keeps its shorter side at least
    ``resize``, if that many pixels are within PIL's limit; else None."""
    if resize is None or not data.startswith(b"\xff\xd8"):
        return None
    from PIL import JpegImagePlugin  # the plugin class itself: Image.open would run the check again

    try:
        img = JpegImagePlugin.JpegImageFile(io.BytesIO(data))
    except (OSError, SyntaxError):
        return None
    img.draft("RGB", (resize, resize))  # sets img.size to the reduced size
    if Image.MAX_IMAGE_PIXELS is not None and img.size[0] * img.size[1] > Image.MAX_IMAGE_PIXELS:
        img.close()
        return None
    return img


def _reduced(img: Image.Image) -> bool:
    """Whether ``img`` is a JPEG already set to decode at a reduced size (see :func:`open_header`)."""
    return bool(getattr(img, "decoderconfig", None))


def decode_image(path: str, resize: int, crop: int | None) -> torch.Tensor:
    """Decode to RGB, upright, resize the shorter side to ``resize``, cut the central ``crop`` square.

    Returns a (3, crop, crop) uint8 tensor. Raises on an unreadable file, including one whose
    header claims more than ``Image.MAX_IMAGE_PIXELS`` pixels to decode (a decompression bomb; a
    large JPEG counts at the reduced size it decodes at: :func:`open_header`).
    """
    return decode_bytes(read_image_bytes(path), resize, crop)


def decode_bytes(data: bytes, resize: int, crop: int | None) -> torch.Tensor:
    """:func:`decode_image` of an encoded image already read.

    JPEGs go through torchvision's libjpeg-turbo decoder and torch's antialiased resize (about twice
    PIL's speed for ImageNet-sized images) unless they are large enough for libjpeg's reduced-size
    decoding (PIL ``draft``); anything else, or a JPEG torchvision refuses, goes through PIL.

    Every image is first turned upright as its EXIF orientation tag says (PIL's ``exif_transpose``,
    what photo viewers show): a phone stores a portrait photo sideways with such a tag. This one
    rule holds for every command (train, evaluate, the statistics, prepare's pack, predict, features),
    so that none sees a photo otherwise than another; torchvision's ImageFolder (PIL's ``Image.open``)
    ignores the tag. An image without one (or with 1) pays only the header's read.
    """
    img = open_header(data, resize)
    decode = jpeg_decoder()
    with img:
        if decode is not None and img.format in JPEG_FORMATS and min(img.size) < 2 * resize and not _reduced(img):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    x = decode(torch.frombuffer(bytearray(data), dtype=torch.uint8))
                return _resize_crop(_turned(x, _orientation(img)), resize, crop)
            except RuntimeError:
                pass  # e.g. truncated: PIL below says why
        if img.format in JPEG_FORMATS:
            img.draft("RGB", (resize, resize))  # let libjpeg decode at 1/2, 1/4, 1/8 size when it can
        img.load()  # before its orientation is read: a PNG's eXIf chunk may follow its pixels
        return pil_image(img, resize, crop)


def pil_image(img: Image.Image, resize: int, crop: int | None) -> torch.Tensor:
    """A decoded PIL image as :func:`decode_bytes` gives a file's: made RGB, turned upright as its EXIF
    orientation tag says, its shorter side resized to ``resize``, the central ``crop`` square cut."""
    x = torch.from_numpy(np.asarray(_to_rgb(img), dtype=np.uint8).copy()).permute(2, 0, 1)
    return _resize_crop(_turned(x, _orientation(img)), resize, crop)


# PIL's exif_transpose of each EXIF orientation on a (C, H, W) tensor: transposed (5-8), then flipped.
_FLIPS = {2: (-1,), 3: (-2, -1), 4: (-2,), 6: (-1,), 7: (-2, -1), 8: (-2,)}


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8) PIL's ``exif_transpose`` reads from ``img``'s header (XMP's
    tiff:Orientation where the EXIF has none); 1, as stored, where there is none, it is no valid
    one, or the block is broken (the pixels are still readable). About 5 us; a decode takes ms."""
    try:
        orientation = img.getexif().get(0x0112)
        return int(orientation) if orientation in range(2, 9) else 1
    except Exception:  # noqa: BLE001 - a broken block: the pixels are still readable, as stored
        return 1


def _turned(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """``x`` (C, H, W) turned as PIL's ``exif_transpose`` turns an image of EXIF ``orientation``;
    ``x`` itself for 1. torchvision's own ``apply_exif_orientation`` reads less than PIL (not a
    big-endian tag stored as LONG, not XMP's) and nvJPEG's ignores it. A turned image is contiguous:
    the resize of a transposed view took 2.4 ms for a 500x375 photo, against 2.0 ms with this copy.
    An untagged one is not copied: PIL's pixels come as an (H, W, C) array seen as (C, H, W), which
    the resize reads as it is (a copy cost 0.4-0.5 ms of a 5-10 ms decode)."""
    if orientation == 1:
        return x
    if orientation in (5, 6, 7, 8):
        x = x.transpose(-1, -2)
    flips = _FLIPS.get(orientation)
    return (x.flip(flips) if flips else x).contiguous()


def to_luma(images: torch.Tensor) -> torch.Tensor:
    """RGB uint8 (..., 3, H, W) -> (..., 1, H, W): the ITU-R 601 luma, for one-channel models
    (Fashion-MNIST) shown photos. PIL's "L" conversion computes it in fixed point: 1 grey level
    apart on 9,443 of the 16.7 million colours (0.06 %), equal on the others."""
    r, g, b = images.double().unbind(-3)
    return (r * 0.299 + g * 0.587 + b * 0.114).round().clamp(0, 255).to(torch.uint8).unsqueeze(-3)


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images of an ImageFolder tree as uint8 (3, size, size) tensors: shorter side -> ``resize``,
    central ``size`` square (the paper's 256x256). Items are (image, label, index).

    ``samples`` may be given (e.g. the ILSVRC flat val/ folder); unreadable files go to ``bad``
    (default: skipped, one warning each): the item comes back as ``None``, dropped by :func:`collate`.
    ``channels=1`` gives (1, size, size) luma images, for a one-channel model's checkpoint.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        resize: int = 256,
        size: int | None = 256,
        bad: BadFiles | None = None,
        samples: Iterable[tuple[str, int]] | None = None,
        classes: tuple[list[str], list[str]] | None = None,
        channels: int = 3,
    ) -> None:
        self.root = Path(root)
        self.channels = channels
        if classes is None:
            self.folders = find_classes(self.root, names=False)[0]
            self.classes, self.names_from = class_names_from(self.root, self.folders)
        else:
            (self.folders, self.classes), self.names_from = classes, None  # another split's
        self.others: list[str] = []  # files of the class folders that are not images it reads
        self.samples = ImageList(samples if samples is not None else list_images(self.root, self.folders, self.others))
        if not self.samples:
            raise DataError(f"{self.root}: no images")
        self.resize, self.size = resize, size
        self.bad = bad if bad is not None else BadFiles()
        # raw: a baseline-JPEG item is its file's bytes (1-D uint8), decoded later on the training
        # device (alexnet.data.device_decode); other files are still decoded here.
        self.raw = False
        jpeg_decoder()  # imported here, not in each of the loader's forked workers

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int] | None:
        """(uint8 image, label, ``index``): the image decoded, or with ``raw`` a JPEG's bytes (1-D) left
        for the device to decode; None for an unreadable file, reported to ``bad`` (DataError if strict)."""
        path, label = self.samples[index]
        if faults.ACTIVE:  # tests only: ALEXNET_FAULT=kill:load=N
            faults.reached("load")
        try:
            image = self._read_raw(path) if self.raw else None
            if image is None:
                image = decode_image(path, self.resize, self.size)
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file, never a lost run
            short = decoding_failure(e, path) or folder_gone(e, path)
            if short is not None:  # no fault of the file's: skipped, a good image would be listed bad (and cached so)
                raise short from None
            self.bad.report(path, e)
            return None
        return (self.finish(image) if image.dim() == 3 else image), label, index

    def finish(self, image: torch.Tensor) -> torch.Tensor:
        """A decoded RGB image in this data set's channels (luma for one)."""
        return to_luma(image) if self.channels == 1 else image

    def _read_raw(self, path: str) -> torch.Tensor:
        """The file's bytes if :func:`decode_bytes` would decode it with ``decode_jpeg`` (a JPEG under
        twice the resize) in a mode nvJPEG takes (RGB or greyscale), else its decoded image. A JPEG
        without its end-of-image marker is decoded here: the CPU decoders refuse a truncated file,
        which nvJPEG may instead return as a part-grey image. So is one with an EXIF orientation
        tag, turned upright (nvJPEG ignores the tag); a phone's full-size photo, more than twice the
        resize, is decoded here in any case."""
        data = read_image_bytes(path)
        with open_header(data, self.resize) as img:
            jpeg = img.format == "JPEG" and img.mode in ("RGB", "L") and min(img.size) < 2 * self.resize and not _reduced(img)
            jpeg = jpeg and _orientation(img) == 1
        jpeg = jpeg and data.rstrip(b"\0").endswith(b"\xff\xd9")  # zero padding after the marker is common
        if jpeg:
            return torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return decode_bytes(data, self.resize, self.size)


def folder_gone(error: BaseException, path: str) -> DataGone | None:
    """``error``, raised reading the image ``path``, as DataGone naming the folder that went where the file's
    own folder is no more (the data moved or unmounted mid-run); None for any other error. Each image
    of a moved folder was otherwise a warning, and listed unreadable in bad_files.txt, until an epoch
    had none left: 88 lines for 88 images, then 'validation: no image to score'."""
    if not isinstance(error, FileNotFoundError) or os.path.isdir(os.path.dirname(path)):
        return None
    gone = os.path.dirname(path)
    while (parent := os.path.dirname(gone)) and parent != gone and not os.path.isdir(parent):
        gone = parent
    return DataGone(f"{gone} is gone: moved, deleted or unmounted while alexnet read its images ({path} among them)")


def collate(items: Sequence[tuple[torch.Tensor, int, int] | None]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Stack (image, label, index) items into uint8 images, int64 labels, int64 indices; None items
    (unreadable files) are dropped, and None is returned if every item was."""
    items = [it for it in items if it is not None]
    if not items:
        return None
    images = torch.stack([it[0] for it in items])
    labels = torch.tensor([it[1] for it in items], dtype=torch.int64)
    index = torch.tensor([it[2] for it in items], dtype=torch.int64)
    return images, labels, index
