"""Data readers and batched augmentation."""


import collections
import os

import numpy as np
import pytest
import torch
from conftest import make_image_folder, write_idx

from alexnet.data import augment
from alexnet.data.fashion_mnist import DEBIAN_ROOT, load_fashion_mnist, read_idx
from alexnet.data.loaders import EpochBatchSampler, load_data, load_eval_data
from alexnet.errors import DataError


def test_idx_round_trip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.idx", "b.idx.gz"):
        write_idx(tmp_path / name, arr)
        np.testing.assert_array_equal(read_idx(tmp_path / name), arr)
    (tmp_path / "bad.idx").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "bad.idx")
    (tmp_path / "text.idx").write_text("hello")
    with pytest.raises(DataError, match="not an IDX"):
        read_idx(tmp_path / "text.idx")


def test_idx_headers_that_lie_about_their_size(tmp_path):
    """A header whose dimensions multiply past 2**64 wrapped numpy's product to 0 (an internal
    ValueError); a 3 MB .gz whose stream ran on for 3 GB beyond its 47 MB header was read whole
    (7 GB resident) before being refused. Now: one DataError each, reading no more than declared."""
    import gzip
    import resource
    import struct

    (tmp_path / "wrap.idx").write_bytes(bytes([0, 0, 8, 4]) + struct.pack(">IIII", *[2**31] * 4))
    with pytest.raises(DataError, match=r"wrap.idx: truncated IDX file \(0 of 2126764793255865396646091296448551321\d bytes"):
        read_idx(tmp_path / "wrap.idx")
    with gzip.open(tmp_path / "bomb.idx.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">III", 1000, 28, 28))
        for _ in range(32):  # 512 MB of zeros, 0.5 MB compressed
            f.write(bytes(1 << 24))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match=r"bomb.idx.gz: more data than its IDX header declares \(784000 bytes"):
        read_idx(tmp_path / "bomb.idx.gz")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KB: the stream was not read on
    (tmp_path / "long.idx").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 2) + b"abc")
    with pytest.raises(DataError, match="long.idx: more data than its IDX header declares"):
        read_idx(tmp_path / "long.idx")


@pytest.mark.skipif(not DEBIAN_ROOT.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist():
    x, y = load_fashion_mnist(DEBIAN_ROOT, "test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [1000] * 10


def test_crop_flip_gather_against_slicing():
    torch.manual_seed(0)
    x = torch.randint(0, 255, (5, 3, 12, 10), dtype=torch.uint8)
    top = torch.tensor([0, 1, 4, 2, 3])
    left = torch.tensor([0, 2, 2, 1, 2])
    flip = torch.tensor([False, True, False, True, True])
    out = augment.crop_flip_gather(x, 8, top, left, flip)
    for i in range(5):
        ref = x[i, :, top[i] : top[i] + 8, left[i] : left[i] + 8]
        if flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)


def test_random_crops_are_per_sample_and_reproducible():
    idx = torch.arange(64)
    a = augment.random_crop_params(16, 16, 12, idx, seed=1, epoch=0)
    b = augment.random_crop_params(16, 16, 12, idx, seed=1, epoch=0)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    # Sample 10's crop does not depend on what else is in the batch.
    c = augment.random_crop_params(16, 16, 12, idx[10:11], seed=1, epoch=0)
    assert all(torch.equal(u[10:11], v) for u, v in zip(a, c))
    d = augment.random_crop_params(16, 16, 12, idx, seed=1, epoch=1)
    assert not all(torch.equal(u, v) for u, v in zip(a, d))
    top, left, _ = a
    assert 0 <= int(top.min()) and int(top.max()) <= 4 and len(set(left.tolist())) == 5  # every offset 0..4 drawn


def test_uniform_and_normal_statistics():
    idx = torch.arange(200_000)
    u = augment.sample_uniform(0, 0, idx, stream=7).squeeze(1)
    assert abs(u.mean().item() - 0.5) < 0.005 and u.min() >= 0 and u.max() < 1
    assert abs((u < 0.5).double().mean().item() - 0.5) < 0.005
    z = augment.sample_normal(0, 0, idx, stream=8).squeeze(1)
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01


def test_sampler_shards_cover_the_global_batch():
    full = list(EpochBatchSampler(20, 8, True, seed=4))
    ranks = [list(EpochBatchSampler(20, 8, True, seed=4, rank=r, world=2)) for r in range(2)]
    for b, batch in enumerate(full):
        assert sorted(ranks[0][b] + ranks[1][b]) == sorted(batch)


def test_in_memory_batches_are_pinned_for_a_gpu(tiny_fmnist, monkeypatch):
    """Fashion-MNIST and CIFAR batches for a GPU lie in page-locked memory, as the DataLoader's
    pin_memory leaves image-folder batches: the copy to the GPU is then asynchronous. CPU runs pin
    nothing. (Pinning needs a GPU; here a stand-in records it. test_cuda.py checks the real one.)"""
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t, *a: (pinned.append(tuple(t.shape)), t)[1])
    for pin in (False, True):
        data = load_data(tiny_fmnist, batch_size=8, input_size=28, pin_memory=pin)
        images, labels, index = next(iter(data.train))
        assert torch.equal(images, data.train.images[index]) and torch.equal(labels, data.train.labels[index])
        next(iter(data.val))
        loader, *_ = load_eval_data(tiny_fmnist, data.preprocess, 8, pin_memory=pin)  # `alexnet evaluate`
        next(iter(loader))
        assert pinned == ([] if not pin else [(8, 1, 28, 28), (8,), (8,)] * 3)


def test_the_listing_digest_of_many_files_is_relpaths_without_calling_relpath_per_file(tmp_path, monkeypatch):
    """cache_key (the statistics cache's key, a run's held-out listing, a pack's) called os.path.relpath
    for every file: ~12 us each, 1.2 s per 100,000 images per digest (train takes two: 40 s of each
    start on ImageNet's 1.28 M). Files listed under the folder are now cut from its path;
    the digest is the same bytes as before, relpath's, for the odd spellings too."""
    import hashlib
    import os

    from alexnet.data.stats import cache_key

    def by_relpath(files, root):  # the digest as it was computed, by relpath
        h = hashlib.sha1()
        for f in files:
            h.update((os.path.relpath(f, root) + "").encode("utf-8", "surrogateescape") + b"\n")
        h.update(repr(()).encode())
        return h.hexdigest()[:16]

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d" / "n01").mkdir(parents=True)
    names = [f"n01/img{i}.JPEG" for i in range(50)] + ["n01/caf\udce9.jpg", "n01/.x/../y.jpg", "n01//z.jpg", "n01/./w.jpg"]
    for root in (str(tmp_path / "d"), "d", "./d", "d/", "../" + tmp_path.name + "/d", "/", "."):
        files = [os.path.join(root, n) for n in names] + [str(tmp_path / "elsewhere.jpg"), "other/a.jpg"]
        assert cache_key(files, root, stamps=False) == by_relpath(files, root), root
    calls = []
    real = os.path.relpath
    monkeypatch.setattr(os.path, "relpath", lambda *a: calls.append(a) or real(*a))
    files = [str(tmp_path / "d" / f"n01/img{i}.JPEG") for i in range(1000)]
    assert cache_key(files, tmp_path / "d", stamps=False) == by_relpath(files, tmp_path / "d")
    assert len(calls) == 1000  # the reference's own; none by cache_key


def test_random_crops_draw_every_patch_and_its_mirror():
    """SPEC section 3's variants, counted: a 12 px crop of a 16 px image has 5 offsets on each axis,
    so 5 x 5 x 2 = 50 (patch, mirror) variants (224 of 256: 33 x 33 x 2, which the paper rounds to
    32^2 x 2 = 2048). 4,000 draws give every one, each about as often (80 expected, 4.5 sigma either
    side). A range one short on one axis only (offsets 0..3 of top) was not noticed before."""
    top, left, mirror = augment.random_crop_params(16, 16, 12, torch.arange(4000), seed=3, epoch=0)
    counts = collections.Counter(zip(top.tolist(), left.tolist(), mirror.tolist()))
    assert set(counts) == {(t, c, m) for t in range(5) for c in range(5) for m in (False, True)}
    assert 40 <= min(counts.values()) and max(counts.values()) <= 120


def _pss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="reads /proc/PID/smaps_rollup (Linux)")
def test_validation_workers_keep_no_copy_of_what_training_writes(tmp_path):
    """The validation loader's workers are forked with training's, before the first step: forked at the
    first validation, they shared every page the training process held then, and kept the old copy of
    each one it wrote afterwards (weights, gradients, momentum, freed activations that malloc keeps):
    6.7 GB for `alexnet train` on Imagenette at the defaults where 2.3 GB was the peer's. Here 600 MB
    written by the process between its first training batch and its first validation stand for them."""
    import multiprocessing

    from alexnet.runtime import keep_freed_memory

    root = tmp_path / "photos"
    make_image_folder(root / "train", classes=2, per_class=4)
    make_image_folder(root / "val", classes=2, per_class=2)
    keep_freed_memory()  # as alexnet train runs
    bundle = load_data(root, batch_size=2, input_size=224, workers=1, preset="paper", show_progress=False)
    try:
        next(iter(bundle.train))  # the first step's batch
        grown = torch.ones(600 * 2**20 // 4)  # what training then holds and writes
        assert sum(1 for _ in bundle.val) == 2  # the first validation
        grown.add_(1)  # the next step writes it again
        workers = multiprocessing.active_children()
        assert len(workers) == 2  # training's and validation's, both alive
        pss = [_pss_mib(w.pid) for w in workers]  # each: its share of the pages it shares, and its own
        assert max(pss) < 450, pss  # none holds the 600 MB (a worker forked after it held all of it: 746 MB)
    finally:
        bundle.close()


def test_a_start_reads_its_listing_as_arrays_not_an_image_at_a_time(tmp_path, monkeypatch):
    """A train start took each training image's path and label out of the listing one call at a time
    (ImageList.__getitem__: numpy scalars and a slice each), twice: the statistics key's list of files and
    the check that every class trains. A cached start (a second run, every --resume) decodes nothing,
    so it should call it for no image at all; it called it twice per training image. The listing's arrays
    are read whole now (ImageList.paths, .labels). The classes and sizes are those of the folder, and a
    class whose only image is held out is still refused."""
    from alexnet.data.folder import ImageList

    root = tmp_path / "photos"
    for split in ("train", "val"):
        make_image_folder(root / split, classes=3, per_class=6, size=(32, 24))
    load_data(root, batch_size=4, input_size=24, show_progress=False)  # the statistics pass: cached from here on
    calls = []
    real = ImageList.__getitem__
    monkeypatch.setattr(ImageList, "__getitem__", lambda self, i: calls.append(i) or real(self, i))
    data = load_data(root, batch_size=4, input_size=24, show_progress=False)
    assert calls == []  # 36 (18 training images, twice) before
    assert (data.train_size, data.val_size, data.classes) == (18, 18, ["class0", "class1", "class2"])
    flat = tmp_path / "flat"  # without val/: a class whose only image is held out is still refused
    make_image_folder(flat, classes=3, per_class=6, size=(32, 24))
    (flat / "class3").mkdir()
    next((flat / "class0").iterdir()).rename(flat / "class3" / "only.jpg")
    with pytest.raises(DataError, match="class3: no readable image left to train on once a tenth was held out"):
        load_data(flat, batch_size=4, input_size=24, seed=next(s for s in range(99) if 17 in _held(18, s)), show_progress=False)


def _held(n: int, seed: int) -> list[int]:
    """The indices a folder of ``n`` images holds out with ``seed`` (loaders.held_out's rule, recomputed)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return perm[: max(1, round(n * 0.1))]


@pytest.mark.parametrize("fails", [False, True])
def test_a_loader_left_running_in_a_reference_cycle_does_not_hang_the_exit(tmp_path, fails):
    """A loader's persistent workers ignore SIGTERM (loaders._start_worker). One left running by its
    caller in a reference cycle (a failed loop's traceback; a tqdm 4.60 bar: `alexnet evaluate
    --progress on --workers 1` never exited) lost its stop signal to the collector, and
    multiprocessing's exit hook then waited on the worker forever. The loaders still running are
    stopped at the exit first: the script ends, with its own status."""
    import subprocess
    import sys

    from conftest import cli_env

    script = tmp_path / "cycle.py"
    script.write_text(f"""
import torch
from alexnet.data.loaders import _batches
class Two:
    def __len__(self):
        return 2
    def __getitem__(self, i):
        if {fails} and i == 1:
            raise ValueError("an item that fails")
        return torch.zeros(3, 4, 4, dtype=torch.uint8), 0, i
if __name__ == "__main__":
    b = _batches(Two(), [0, 1], 1, False, False, 0, 0, 1, 1, False)
    b.me = b  # a reference cycle, as a caller's closures or a traceback can hold it
    print(sum(1 for _ in b))
""")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert r.returncode == (1 if fails else 0), r.stderr[-2000:]
    assert fails or r.stdout.strip() == "2"
