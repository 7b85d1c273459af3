"""Named preprocessing recipes: how images are normalised and augmented.

Each preset says where the subtracted mean and the divisor come from (``"image"``: the training
set's mean image; ``"pixels"``: the training set's per-channel mean / std; a list: fixed values on
the 0-255 scale), whether the paper's PCA colour noise is added (``pca_alpha_std`` > 0), the zero
padding before random crops, and mirroring. The resolved recipe is a :class:`Preprocess`: what
:func:`alexnet.data.loaders.load_data` returns, models carry and checkpoints store.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from ..checks import is_finite, is_whole
from ..errors import ConfigError, DataError

if TYPE_CHECKING:
    from ..predict import ImageTransform

# torchvision's per-channel statistics of ImageNet (0.485, 0.456, 0.406; 0.229, 0.224, 0.225), on the
# 0-255 scale: written out, as 0.224 * 255 in floats is 57.120000000000005 in config.json and checkpoints.
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]

PRESETS: dict[str, dict[str, Any]] = {
    # SPEC section 3: mean image subtracted, random 224 crops of 256x256 and mirrors, fancy PCA with
    # alpha ~ N(0, 0.1). Raw centred pixels (0-255 scale, no division), as the paper feeds them: its
    # N(0, 0.01^2) weights and LRN constants (k=2, alpha=1e-4) are set for inputs of that size; with
    # pixels divided by their std (~70) the image's signal fades layer by layer and a run sits at
    # chance (docs/training.md).
    "paper": {"mean": "image", "std": [1.0, 1.0, 1.0], "pca_alpha_std": 0.1, "padding": 0, "flip": True},
    # The default for photos (training preset "photos"): the paper's recipe, but pixels divided by
    # their per-channel std (inputs of order 1, as He init expects) and each training crop covering
    # a random 35-100 % of the stored image's area at a random aspect (3/4 to 4/3), resized to 224:
    # 9,469 Imagenette photos are few for 57 M parameters; scale augmentation is what later nets used.
    "photos": {"mean": "image", "std": "pixels", "pca_alpha_std": 0.1, "padding": 0, "flip": True, "scale": [0.35, 1.0]},
    # torchvision's references/classification: its ImageNet normalisation (the alexnet_owt weights
    # were trained with it) and its RandomResizedCrop(224) (8-100 % of the area, aspect 3/4 to 4/3)
    # with mirrors; here the crop is drawn from the stored central 256 square, not the whole photo.
    "torchvision": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "pca_alpha_std": 0.0, "padding": 0, "flip": True,
                    "scale": [0.08, 1.0]},
    # Small images: per-channel standardisation and mirrors. No random crops of a padded image: in
    # the 5-epoch default run they cost accuracy (0.814 vs 0.848 test accuracy after 300 steps).
    "fashion_mnist": {"mean": "pixels", "std": "pixels", "pca_alpha_std": 0.0, "padding": 0, "flip": True},
    "cifar": {"mean": "pixels", "std": "pixels", "pca_alpha_std": 0.0, "padding": 4, "flip": True},
}


def get_preset(name: str) -> dict[str, Any]:
    """The recipe called ``name``; a ConfigError lists the choices."""
    if name not in PRESETS:
        raise ConfigError(f"data preset: unknown preset {name!r}; choose from: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def needs_stats(name: str) -> bool:
    """Whether the preset needs a pass over the training set (mean image, pixel statistics or PCA)."""
    p = get_preset(name)
    return p["mean"] in ("image", "pixels") or p["std"] == "pixels" or p["pca_alpha_std"] > 0


def resolve(name: str, stats: dict[str, Any] | None, base: dict[str, Any], channels: int = 3) -> Preprocess:
    """The recipe: ``base`` (sizes, data set) plus the preset's normalisation and noise filled in
    from ``stats`` (see :mod:`alexnet.data.stats`; its mean image a tensor or a .npy path) for
    images of ``channels`` channels."""
    p = get_preset(name)
    if needs_stats(name) and stats is None:
        raise ConfigError(f"data preset {name!r} needs training-set statistics")
    out = dict(base, preset=name, padding=p["padding"], flip=p["flip"])
    if p.get("scale"):
        out["scale"] = list(p["scale"])
    out["mean"] = list(stats["pixel_mean"]) if p["mean"] in ("image", "pixels") else _fixed(p["mean"], channels)
    out["std"] = list(stats["pixel_std"]) if p["std"] == "pixels" else _fixed(p["std"], channels)
    out["std"] = [s if s > 1e-6 else 1.0 for s in out["std"]]
    if p["mean"] == "image":
        out["mean_image"] = stats["mean_image"]
    if p["pca_alpha_std"] > 0 and stats.get("eigvals") is not None:
        out["pca"] = {
            "eigvals": list(stats["eigvals"]),
            "eigvecs": [list(r) for r in stats["eigvecs"]],
            "alpha_std": p["pca_alpha_std"],
        }
    return Preprocess.from_dict(out, source=f"data preset {name!r}")


def _fixed(rgb: list[float], channels: int) -> list[float]:
    """A preset's fixed per-channel values for images of ``channels`` channels: for one (grey images,
    Fashion-MNIST) the ITU-R 601 luma of the three, as the grey images are of RGB ones."""
    if channels == 1 and len(rgb) == 3:  # equal values stay exact (the paper's std 1: raw pixels)
        return [rgb[0]] if len(set(rgb)) == 1 else [math.fsum(w * v for w, v in zip((0.299, 0.587, 0.114), rgb))]
    return list(rgb)


# -- the recipe, typed -------------------------------------------------------------------------------
# The mean image (3 x 256 x 256 floats) is a tensor, not JSON: checkpoints hold it as a tensor,
# safetensors files (exports, feature indexes) under this key beside the weights or features, and
# their JSON metadata (and config.json) hold a summary in its place.
MEAN_IMAGE_KEY = "preprocess.mean_image"


_RETIRED = {"test_views"}  # entries of older checkpoints that nothing reads


@dataclass(frozen=True)
class PCANoise:
    """The paper's colour augmentation: eigen-statistics of RGB pixels scaled to [0, 1]; each image
    gets ``eigvecs @ (alpha * eigvals)``, alpha ~ N(0, alpha_std^2), x255 on the uint8 scale."""

    eigvals: tuple[float, ...]
    eigvecs: tuple[tuple[float, ...], ...]
    alpha_std: float


class RecipeTensors(NamedTuple):
    """:class:`Preprocess`'s numbers as tensors on one device (:meth:`Preprocess.tensors_on`)."""

    mean: torch.Tensor  # the mean image (C, H, W), else the per-channel mean (C, 1, 1); float32
    inv_std: torch.Tensor  # 1 / std, (C, 1, 1) float32
    pca: tuple[torch.Tensor, torch.Tensor] | None  # eigenvalues and eigenvectors, float64


@dataclass
class Preprocess:
    """How images become the network's input: one typed recipe, stored with every checkpoint,
    export and feature index (like timm's ``PretrainedCfg``). Pixel values are on the 0-255 scale.

    A stored image of side ``size`` (images are first resized so their shorter side is ``resize``;
    None: already that size) is padded by ``padding``, cropped (``train_crop`` at random with
    mirrors when ``flip``, or at ``scale`` x its area; ``test_crop`` at the centre), has the mean
    (``mean_image`` cropped alike, else the per-channel ``mean``) subtracted, PCA noise added, is
    divided by ``std`` and resized to ``input_size``.
    """

    dataset: str  # fashion_mnist, cifar, image_folder, packed
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int | None
    resize: int | None
    train_crop: int
    test_crop: int
    input_size: int
    preset: str | None = None
    padding: int = 0
    flip: bool = True
    scale: tuple[float, float] | None = None
    mean_image: torch.Tensor | None = field(default=None, repr=False, compare=False)  # (C, H, W) float32
    pca: PCANoise | None = None
    note: str | None = None  # e.g. imported weights' channel order
    _copies: dict[str, RecipeTensors] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def channels(self) -> int:
        """Channels of the images the recipe takes (1: greyscale, 3: RGB), as many as ``mean`` has."""
        return len(self.mean)

    def stored_sizes(self) -> tuple[int, int]:
        """(resize, size) that decode an image file as this recipe's data was stored: shorter side
        to ``resize``, central ``size`` square (a Fashion-MNIST recipe: any photo to 28x28)."""
        size = self.size or self.test_crop
        return self.resize or size, size

    def fits(self, channels: int, side: int) -> bool:
        """Whether stored images of ``channels`` x ``side`` x ``side`` can go through this recipe
        (its channel count; its stored size where it has one, which its mean image is cut to; else
        a side its test crop fits in once padded: a smaller one has no centre crop or ten crops)."""
        if self.size is None:
            return channels == self.channels and side + 2 * self.padding >= self.test_crop
        return channels == self.channels and side == self.size

    def tensors_on(self, device: torch.device) -> RecipeTensors:
        """The recipe's tensors on ``device``, made and copied there once: a copy from host memory
        makes the host wait for everything queued on the GPU, which is the training step."""
        key = str(device)
        if key not in self._copies:
            mean = self.mean_image if self.mean_image is not None else torch.tensor(self.mean, dtype=torch.float32).reshape(-1, 1, 1)
            inv_std = 1.0 / torch.tensor(self.std, dtype=torch.float32).reshape(-1, 1, 1)
            eig = (torch.tensor(self.pca.eigvals), torch.tensor(self.pca.eigvecs)) if self.pca else None
            self._copies[key] = RecipeTensors(
                mean.to(device), inv_std.to(device), tuple(t.to(device, torch.float64) for t in eig) if eig else None
            )
        return self._copies[key]

    def transforms(self) -> ImageTransform:
        """What ``predict`` does to an image, as a transform for your own Dataset or loop (torchvision's
        ``weights.transforms()``, timm's ``create_transform``): :class:`alexnet.predict.ImageTransform`."""
        from ..predict import ImageTransform

        return ImageTransform(self)

    def state(self) -> dict[str, Any]:
        """The checkpoint form: plain values, the mean image as a tensor."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        out["mean"], out["std"] = list(self.mean), list(self.std)
        out["scale"] = list(self.scale) if self.scale else None
        out["pca"] = dataclasses.asdict(self.pca) if self.pca else None
        return out

    def to_json(self) -> dict[str, Any]:
        """JSON-safe: the mean image replaced by a summary (shape, per-channel mean, where it is)."""
        out = self.state()
        if self.mean_image is not None:
            m = self.mean_image
            out["mean_image"] = {"shape": list(m.shape), "channel_mean": m.double().mean((1, 2)).tolist(), "stored_as": MEAN_IMAGE_KEY}
        return out

    @classmethod
    def from_dict(cls, d: Any, mean_image: torch.Tensor | None = None, source: str = "the preprocessing recipe") -> Preprocess:
        """A recipe from its stored form (:meth:`state`, :meth:`to_json` plus the ``mean_image``
        tensor stored beside it, or the free-form dicts of older files), checked: a malformed one
        is a one-line DataError naming ``source``."""
        if isinstance(d, Preprocess):
            return d
        if not isinstance(d, dict):
            raise DataError(f"{source}: the preprocessing recipe is {d!r:.40}, not a table")
        d = {k: v for k, v in d.items() if k not in _RETIRED}
        note = d.pop("source_channel_order", None)  # older Caffe imports
        d.setdefault("note", note)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls) if f.init}
        if unknown:
            raise DataError(f"{source}: the preprocessing recipe has unknown entries: {', '.join(sorted(unknown))}")
        d["mean_image"] = _read_mean_image(d.get("mean_image"), mean_image, source)
        pca = d.get("pca")
        if isinstance(pca, dict):
            d["pca"] = _pca(pca, source)
        try:
            recipe = cls(**d)
        except TypeError as e:  # a required entry missing
            raise DataError(f"{source}: the preprocessing recipe is incomplete ({e})") from None
        recipe._check(source)
        return recipe

    def _check(self, source: str) -> None:
        def bad(name: str, wanted: str) -> DataError:
            return DataError(f"{source}: preprocess {name} must be {wanted}, got {getattr(self, name)!r}")

        for name in ("mean", "std"):
            v = getattr(self, name)
            if not (isinstance(v, (list, tuple)) and len(v) in (1, 3) and all(is_finite(x) for x in v)):
                raise bad(name, "1 or 3 finite numbers")
            object.__setattr__(self, name, tuple(float(x) for x in v))
        if len(self.std) != len(self.mean) or min(self.std) < 1e-6:  # 1/std must stay finite in float32
            raise bad("std", f"{len(self.mean)} numbers >= 1e-6")
        for name in ("train_crop", "test_crop", "input_size"):
            if not is_whole(getattr(self, name), 1) or getattr(self, name) > 4096:
                raise bad(name, "a whole number from 1 to 4096")
        for name in ("size", "resize"):
            if getattr(self, name) is not None and not (is_whole(getattr(self, name), 1) and getattr(self, name) <= 8192):
                raise bad(name, "None or a whole number from 1 to 8192")
        if not (is_whole(self.padding, 0) and self.padding <= 1024):
            raise bad("padding", "a whole number from 0 to 1024")
        if not isinstance(self.flip, bool):
            raise bad("flip", "true or false")
        if not all(isinstance(getattr(self, n), (str, type(None))) for n in ("preset", "note")) or not isinstance(self.dataset, str):
            raise DataError(f"{source}: preprocess dataset, preset and note must be strings")
        if self.scale is not None:
            lo_hi = tuple(self.scale) if isinstance(self.scale, (list, tuple)) else ()
            if not (len(lo_hi) == 2 and all(is_finite(x) for x in lo_hi) and 0 < lo_hi[0] <= lo_hi[1] <= 1):
                raise bad("scale", "two numbers 0 < low <= high <= 1")
            self.scale = (float(lo_hi[0]), float(lo_hi[1]))
        if self.pca is not None and not isinstance(self.pca, PCANoise):
            raise bad("pca", "null or a table of eigvals, eigvecs and alpha_std")
        if self.size is not None:  # crops are cut from the stored image (training crops from it padded)
            if self.test_crop > self.size:
                raise bad("test_crop", f"at most the stored size ({self.size})")
            if self.train_crop > self.size + 2 * self.padding:
                raise bad("train_crop", f"at most the stored size ({self.size}) plus twice the padding")
        elif self.mean_image is not None:
            raise DataError(f"{source}: preprocess subtracts a mean image but gives no stored image size (size)")
        if self.mean_image is not None:
            shape, side = tuple(self.mean_image.shape), self.size
            if len(shape) != 3 or shape[0] != self.channels or (side is not None and shape[1:] != (side, side)):
                wanted = f"{self.channels} x {side} x {side}" if side is not None else f"{self.channels} x H x W"
                raise DataError(f"{source}: preprocess mean_image must be {wanted} (its channels, the stored image size), "
                                f"got shape {shape}")


def _read_mean_image(m: Any, stored: torch.Tensor | None, source: str) -> torch.Tensor | None:
    """The mean image as float32 (C, H, W) from any of its stored forms: a tensor, a nested list,
    a .npy path (older packed folders), or the JSON summary with the tensor ``stored`` beside it."""
    if m is None:
        return None
    if isinstance(m, dict):  # the summary written by to_json
        if stored is None:
            raise DataError(f"{source}: the preprocessing recipe subtracts a mean image, but the file holds no {MEAN_IMAGE_KEY!r}")
        if list(stored.shape) != m.get("shape"):
            raise DataError(f"{source}: its mean image is {list(stored.shape)}, its metadata says {m.get('shape')}")
        m = stored
    if isinstance(m, (str, Path)):
        try:
            m = np.load(m, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{source}: mean image {m} cannot be read: {e}") from None
    kind = str(getattr(m, "dtype", ""))  # whole numbers are pixel values; flags and complex numbers are not
    if "bool" in kind or "complex" in kind:
        raise DataError(f"{source}: the preprocessing recipe's mean image holds {kind.removeprefix('torch.')} values, not pixel values")
    try:
        t = m.detach() if isinstance(m, torch.Tensor) else torch.as_tensor(np.asarray(m, dtype=np.float32))
    except (TypeError, ValueError):
        raise DataError(f"{source}: the preprocessing recipe's mean image is not an array of numbers") from None
    if t.dim() != 3 or t.shape[0] not in (1, 3) or not bool(torch.isfinite(t).all()):
        raise DataError(f"{source}: the mean image must be a finite (channels, height, width) array, got shape {tuple(t.shape)}")
    # its own copy: a checkpoint's is a view of the file alexnet.load maps, which cp over it would change or cut short
    return t.to(torch.float32, memory_format=torch.contiguous_format, copy=True)


def _pca(d: dict[str, Any], source: str) -> PCANoise:
    try:
        vals = tuple(float(v) for v in d["eigvals"])
        vecs = tuple(tuple(float(v) for v in row) for row in d["eigvecs"])
        alpha = float(d["alpha_std"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{source}: preprocess pca is malformed ({type(e).__name__}: {e})") from None
    if len(vals) != 3 or len(vecs) != 3 or any(len(r) != 3 for r in vecs) or not all(map(math.isfinite, (*vals, alpha))) or alpha < 0:
        raise DataError(f"{source}: preprocess pca must hold 3 eigenvalues, a 3x3 eigenvector matrix and alpha_std >= 0")
    return PCANoise(vals, vecs, alpha)

