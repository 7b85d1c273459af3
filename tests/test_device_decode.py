"""JPEGs decoded on the training device (``--decode device``; nvJPEG on a GPU, issue 12).

On the CPU the device path must give bitwise the batches of the worker path (same decoder, same
resize), meet the same bad files once each, and give the same evaluation; the float resize used off
the CPU must stay within one grey level of the exact uint8 kernel. The CUDA side is in test_cuda.py.
"""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from conftest import IMAGEWOOF, make_image_folder
from PIL import Image
from test_data_pipeline import _bad_folder

from alexnet.cli import main
from alexnet.data.device_decode import decode_device
from alexnet.data.folder import _resize_uint8
from alexnet.data.loaders import load_data
from alexnet.errors import ConfigError


def _all(loader) -> list:
    return [b for b in loader if b is not None]


def _assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b) and a
    for x, y in zip(a, b):
        for s, t in zip(x, y):
            assert torch.equal(s, t)


@pytest.mark.parametrize("workers", [0, 2])
def test_device_path_is_bitwise_the_worker_path_on_real_photos(workers):
    if not IMAGEWOOF.is_dir():
        pytest.skip(f"needs the real photos in {IMAGEWOOF} (../shared)")
    common = dict(batch_size=16, input_size=224, workers=workers, preset="paper", show_progress=False)
    cpu = load_data(IMAGEWOOF, **common)
    dev = load_data(IMAGEWOOF, decode_device="cpu", **common)
    try:
        assert dev.train.decode is not None and cpu.train.decode is None
        # The raw batches really carry encoded files (and the odd greyscale photo among them).
        raw = next(iter(dev.train.loader))[0]
        assert all(t.dim() == 1 for t in raw) and sum(t.numel() for t in raw) < 16 * 3 * 256 * 256 / 4
        for loader in ("train", "val"):
            first = [b for _, b in zip(range(3), getattr(cpu, loader))]
            second = [b for _, b in zip(range(3), getattr(dev, loader))]
            _assert_same_batches(first, second)
            assert first[0][0].shape == (16, 3, 256, 256) and first[0][0].dtype == torch.uint8
    finally:
        cpu.close()
        dev.close()


def test_bad_and_odd_files_on_the_device_path(tmp_path, capsys):
    root, bad, _ = _bad_folder(tmp_path / "imgs")
    common = dict(batch_size=4, input_size=24, val_fraction=0.5, preset="torchvision", show_progress=False)
    cpu = load_data(root, out_dir=tmp_path / "a", **common)
    expected = _all(cpu.train) + _all(cpu.val)
    met = cpu.bad_files.paths()  # what one epoch meets (the train split drops its last partial batch)
    assert len(met) >= 2 and set(met) <= set(bad)
    capsys.readouterr()
    dev = load_data(root, out_dir=tmp_path / "b", decode_device="cpu", **common)
    got = _all(dev.train) + _all(dev.val)
    _assert_same_batches(expected, got)  # CMYK, greyscale, palette, 16-bit: decoded as before
    assert dev.bad_files.paths() == met
    err = capsys.readouterr().err
    for path in met:
        assert err.count(f"warning: skipping unreadable image {path}:") == 1, path


def test_jpegs_cut_short_never_reach_the_device_decoder(tmp_path):
    """nvJPEG may return a JPEG cut short in its scan data as a part-grey image without an error,
    where the CPU decoders refuse it: a JPEG without its end-of-image marker is decoded (and refused)
    in the workers, so it is the same bad file on every device. Zero padding after the marker is no cut."""
    from alexnet.data.folder import ImageFolderDataset, open_header

    root = make_image_folder(tmp_path / "imgs", classes=2, per_class=1, size=(120, 90))
    whole = (root / "class0" / "img0.jpg").read_bytes()
    cut = root / "class0" / "cut.jpg"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    with open_header(cut.read_bytes()) as img:
        assert img.format == "JPEG" and img.size == (120, 90)  # its header is whole: only the scan is cut
    (root / "class1" / "padded.jpg").write_bytes(whole + bytes(16))
    ds = ImageFolderDataset(root, resize=96, size=96)
    ds.raw = True
    items = {p.rsplit("/", 1)[-1]: ds[i] for i, (p, _) in enumerate(ds.samples)}
    assert items["cut.jpg"] is None and ds.bad.paths() == [str(cut)]
    assert items["img0.jpg"][0].dim() == 1 and items["padded.jpg"][0].dim() == 1  # the device decodes these


def test_float_resize_within_one_grey_level_of_the_exact_kernel():
    photo = sorted(IMAGEWOOF.rglob("*.JPEG"))[0] if IMAGEWOOF.is_dir() else None
    if photo is not None:
        x = torch.from_numpy(np.asarray(Image.open(photo).convert("RGB")).copy()).permute(2, 0, 1)
    else:
        x = torch.randint(0, 256, (3, 333, 500), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for h, w in ((256, 341), (77, 91), (400, 600)):
        exact = _resize_uint8(x, h, w, exact=True).int()
        approx = _resize_uint8(x, h, w, exact=False).int()
        f64 = torch.nn.functional.interpolate(x[None].double(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        reference = f64[0].round().clamp(0, 255).int()
        assert approx.shape == exact.shape == (3, h, w)
        assert (approx - exact).abs().max() <= 1  # PIL's fixed-point weights round differently: 1 level
        assert (approx - reference).abs().max() <= 1 and (approx != reference).float().mean() < 0.01


def test_encoded_files_are_not_pinned(tmp_path):
    """Pinned memory speeds up host-to-GPU copies of decoded images; the encoded bytes that go to
    nvJPEG are plain CPU tensors, and pinning them would copy every file once more for nothing."""
    root = make_image_folder(tmp_path / "imgs")
    common = dict(batch_size=4, input_size=32, workers=0, show_progress=False, pin_memory=True)
    dev, cpu = load_data(root, decode_device="cpu", **common), load_data(root, **common)
    try:
        assert not dev.train.loader.pin_memory and not dev.val.loader.pin_memory
        assert cpu.train.loader.pin_memory  # decoded in the workers: pinned as asked
    finally:
        dev.close()
        cpu.close()


def test_gpu_decode_waits_for_queued_work(tmp_path, monkeypatch):
    """nvJPEG may be handed memory that kernels queued on the caller's stream still read
    (pytorch/vision#9606): the decoder lets that stream finish first. Faked CUDA: this checks the
    order of the calls, not nvJPEG."""
    from alexnet.data import device_decode
    from alexnet.data.folder import ImageFolderDataset

    calls = []

    class Stream:
        def synchronize(self):
            calls.append("synchronize")

    def fake_decode(data, device):
        calls.append(f"decode on {device}")
        return [torch.zeros(3, 40, 40, dtype=torch.uint8) for _ in data]

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(device_decode, "decode_jpeg", fake_decode)
    ds = ImageFolderDataset(make_image_folder(tmp_path / "imgs"), resize=32, size=32)
    decoder = device_decode.DeviceDecoder(ds, "cuda")
    monkeypatch.setattr(decoder, "_resize", lambda x: x)
    decoder._decode([torch.zeros(10, dtype=torch.uint8)] * 2, [0, 1])
    assert calls == ["synchronize", "decode on cuda"]


def test_overlap_decodes_on_its_own_stream(tmp_path, monkeypatch):
    """ALEXNET_DECODE_OVERLAP=1: the batch is made on the decoder's stream (whose memory pool the
    training stream's freed blocks never join), the training stream waits for it, and each tensor
    handed over is recorded on the training stream (not reused before its kernels ran). Faked CUDA:
    this checks the protocol; tests/test_cuda.py checks the memory on a GPU."""
    from alexnet.data import device_decode
    from alexnet.data.folder import ImageFolderDataset

    calls, current = [], []

    class Stream:
        def __init__(self, name="decode"):
            self.name = name

        def wait_stream(self, other):
            calls.append(f"{self.name} waits for {other.name}")

    main = Stream("training")
    current.append(main)

    @contextlib.contextmanager
    def stream(s):
        current.append(s)
        yield
        current.pop()

    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[-1])
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, s: calls.append(f"{tuple(t.shape)} on {s.name}"), raising=False)
    ds = ImageFolderDataset(make_image_folder(tmp_path / "imgs"), resize=32, size=32)
    monkeypatch.setenv("ALEXNET_DECODE_OVERLAP", "1")
    decoder = device_decode.DeviceDecoder(ds, "cuda")
    images, labels = torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1])

    def assemble(items, lab, index):
        calls.append(f"made on {current[-1].name}")
        return images, labels, index

    monkeypatch.setattr(decoder, "_assemble", assemble)
    out = decoder(([torch.zeros(9, dtype=torch.uint8)] * 2, labels, torch.tensor([3, 4])))
    assert out[0] is images and current == [main]
    assert calls == ["made on decode", "training waits for decode", "(2, 3, 32, 32) on training", "(2,) on training", "(2,) on training"]
    monkeypatch.delenv("ALEXNET_DECODE_OVERLAP")
    assert not device_decode.DeviceDecoder(ds, "cuda").overlap  # off by default until measured on a GPU


def test_decode_choice():
    assert decode_device("auto", torch.device("cpu")) is None
    assert decode_device("cpu", torch.device("cuda")) is None
    assert decode_device("auto", torch.device("cuda")) == torch.device("cuda")
    assert decode_device("device", torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError, match="--decode device"):
        decode_device("device", torch.device("mps"))


def test_train_and_evaluate_with_decode_device(tmp_path, capsys):
    root = make_image_folder(tmp_path / "imgs", classes=2, per_class=6, size=(72, 64))
    for d in ("a", "b"):
        args = ["train", "--data", str(root), "--epochs", "1", "--batch-size", "4", "--workers", "0", "--model-option",
                "input_size=64", "--out", str(tmp_path / d), "--seed", "3"]
        assert main(args + (["--decode", "device"] if d == "b" else [])) == 0
    a, b = (torch.load(tmp_path / d / "last.pt", weights_only=False)["model"] for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same images, so the same training
    assert json.loads((tmp_path / "b" / "config.json").read_text())["train"]["decode"] == "device"
    capsys.readouterr()
    results = []
    for extra in ([], ["--decode", "device"]):
        assert main(["evaluate", "--checkpoint", str(tmp_path / "a" / "last.pt"), "--data", str(root), "--json", *extra]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0] == results[1] and results[0]["images"] > 0


def test_decode_flag_rejects_unknown_values(capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--checkpoint", "x.pt", "--decode", "gpu"])
    assert e.value.code == 2 and "--decode" in capsys.readouterr().err
