"""JPEG decoding on the training device (nvJPEG on a GPU): the loader's workers only read files.

On a GPU the CPU half of the paper's pipeline, decoding and resizing JPEGs, is what starves the
model: one core decodes about 800 ImageNet-sized photos a second, an H100 trains AlexNet on more
than 15,000. With ``decode="device"`` the workers read each file and check its header; the main
process decodes the whole batch in one ``torchvision.io.decode_jpeg(list, device=...)`` call and
resizes each image where it lies. What the GPU cannot decode (not a JPEG, CMYK, a broken file) is
decoded on the CPU as before, or reported as a bad file; so is a JPEG with an EXIF orientation tag,
turned upright there as every command sees it (nvJPEG ignores the tag: folder.decode_bytes).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch

from ..errors import ConfigError, decoding_failure
from .folder import ImageFolderDataset, _resize_crop, decode_bytes


def decode_jpeg(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """RGB images of the JPEG files' bytes ``data``, decoded on ``device`` (nvJPEG on a GPU)."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as decode  # the batched one: one nvJPEG call on a GPU

    return decode(data, mode=ImageReadMode.RGB, device=device)


def decode_device(choice: str, device: torch.device) -> torch.device | None:
    """Where JPEGs are decoded for ``--decode choice`` on ``device``: None (the loader's workers) or ``device``."""
    if choice == "device" and device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--decode device: JPEGs are decoded on the CPU or a CUDA device, not {device.type}")
    return device if choice == "device" or (choice == "auto" and device.type == "cuda") else None


def collate_raw(
    items: Sequence[tuple[torch.Tensor, int, int] | None],
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor] | None:
    """(encoded or decoded image, label, index) items -> (list of images, labels, indices).

    A 1-D uint8 tensor is a JPEG's bytes still to decode; a (3, S, S) one was decoded by the worker.
    None items (unreadable files) are dropped; None if every item was.
    """
    items = [it for it in items if it is not None]
    if not items:
        return None
    labels = torch.tensor([it[1] for it in items], dtype=torch.int64)
    index = torch.tensor([it[2] for it in items], dtype=torch.int64)
    return [it[0] for it in items], labels, index


class DeviceDecoder:
    """Turns a :func:`collate_raw` batch into the usual (uint8 images, labels, indices) on ``device``.

    The images are those :class:`ImageFolderDataset` would have produced: shorter side ->
    ``dataset.resize``, central ``dataset.size`` square. On the CPU they are bitwise the worker's
    (same decoder, same resize) for JPEGs under twice the resize; elsewhere the resize runs in
    float32 and may differ by one grey level.
    """

    def __init__(self, dataset: ImageFolderDataset, device: torch.device | str, overlap: bool | None = None) -> None:
        try:
            import torchvision.io  # noqa: F401  (imported here, not at the first batch)
        except ImportError as e:  # pragma: no cover
            raise RuntimeError("decoding on the device needs torchvision.io.decode_jpeg") from e
        self.dataset, self.device = dataset, torch.device(device)
        # Decode on a stream of its own, so that a batch's decode overlaps the training step queued
        # before it. Off unless ALEXNET_DECODE_OVERLAP=1 until measured on a GPU (issue 12).
        self.overlap = os.environ.get("ALEXNET_DECODE_OVERLAP", "0") == "1" if overlap is None else overlap
        self._stream: torch.cuda.Stream | None = None

    def __call__(
        self, batch: tuple[list[torch.Tensor], torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The batch on ``self.device``; None for no batch, or one whose images all failed to decode."""
        if batch is None:
            return None
        if not (self.overlap and self.device.type == "cuda"):
            return self._assemble(*batch)
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        # The decode stream's memory pool holds only this class's tensors: nvJPEG, which does not
        # wait for the stream it is called from, cannot be handed a block the training stream still
        # reads. _gpu_decode waits for this stream (the previous batch's resizes), not the training.
        with torch.cuda.stream(self._stream):
            out = self._assemble(*batch)
        if out is not None:
            main = torch.cuda.current_stream(self.device)
            main.wait_stream(self._stream)
            for t in out:  # freed by the training loop: not reused here before its kernels ran
                t.record_stream(main)
        return out

    def _assemble(
        self, items: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The batch on the device (current stream): JPEGs decoded there, the rest copied."""
        encoded = [i for i, t in enumerate(items) if t.dim() == 1]
        decoded = dict(zip(encoded, self._decode([items[i] for i in encoded], index[encoded].tolist())))
        images, keep = [], []
        for i, t in enumerate(items):
            x = decoded[i] if t.dim() == 1 else t.to(self.device, non_blocking=True)
            if x is not None:
                images.append(x)
                keep.append(i)
        if not images:
            return None
        kept = torch.tensor(keep, dtype=torch.int64)
        return torch.stack(images), labels[kept].to(self.device), index[kept].to(self.device)

    def _decode(self, data: list[torch.Tensor], index: list[int]) -> list[torch.Tensor | None]:
        if not data:
            return []
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                raw = self._gpu_decode(data)
        except RuntimeError:  # one bad file fails the whole call: decode them one by one
            return [self._one(d, i) for d, i in zip(data, index)]
        return [self._resize(x) for x in raw]

    def _one(self, data: torch.Tensor, index: int) -> torch.Tensor | None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return self._resize(self._gpu_decode(data))
        except RuntimeError:
            pass
        try:  # the CPU decoders: PIL reads what libjpeg/nvJPEG refuse, or says why it cannot
            return self.dataset.finish(decode_bytes(data.numpy().tobytes(), self.dataset.resize, self.dataset.size)).to(self.device)
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file, never a lost run
            short = decoding_failure(e, self.dataset.samples[index][0])
            if short is not None:  # but for want of memory: no fault of the file's
                raise short from None
            self.dataset.bad.report(self.dataset.samples[index][0], e)
            return None

    def _gpu_decode(self, data):
        # nvJPEG writes its outputs from a private stream that does not wait for the caller's, and
        # the caching allocator may hand it a block that kernels queued on the caller's stream still
        # read (pytorch/vision#9606): let the queued work finish first. On the training stream this
        # waits for the previous step's backward pass (the step itself reads the device once,
        # before it); with ``overlap`` the current stream is the decoder's own, and it does not.
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return decode_jpeg(data, device=self.device)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        return self.dataset.finish(_resize_crop(x, self.dataset.resize, self.dataset.size))
