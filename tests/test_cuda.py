"""The GPU path (issue 12): skipped with a reason where no CUDA device is visible.

scripts/gpu-check.sh runs them on a GPU machine. What they hold: the paper's net computes on cuda
what it computes on the CPU (fp32 within TF32 rounding, bf16 autocast within bf16 rounding), it
learns on cuda, and a run trained on cuda evaluates to the same figures on the CPU as on the GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder, requires_cuda, run_cli

import alexnet
from alexnet.runtime import autocast

pytestmark = requires_cuda

CUDA = torch.device("cuda")


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the reference's largest magnitude."""
    return ((a.float().cpu() - b.float().cpu()).abs().max() / b.float().abs().max()).item()


@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_on_cuda_matches_the_cpu(channels_last: bool):
    torch.manual_seed(0)
    model = alexnet.create_model("alexnet_paper", num_classes=100, init="kaiming").eval()
    x = torch.randn(8, 3, 224, 224)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.no_grad():
        ref = model.double()(x.double()).float()  # float64 on the CPU: the reference
        model.float()
        cpu = model(x.contiguous(memory_format=fmt))
        gpu_model = model.to(CUDA).to(memory_format=fmt)
        gpu = gpu_model(x.to(CUDA).contiguous(memory_format=fmt))
        with autocast(CUDA, torch.bfloat16):
            gpu_bf16 = gpu_model(x.to(CUDA).contiguous(memory_format=fmt)).float()
    assert _rel_err(cpu, ref) < 1e-4
    assert _rel_err(gpu, ref) < 1e-2  # cuDNN may run fp32 convolutions in TF32 (10-bit mantissa)
    assert _rel_err(gpu_bf16, ref) < 6e-2  # bf16: 8 significant bits through eight layers
    assert (gpu.cpu().argmax(1) == ref.argmax(1)).float().mean() >= 0.75


def test_backward_on_cuda_matches_the_cpu():
    torch.manual_seed(0)
    model = alexnet.create_model("alexnet_paper", num_classes=10, init="kaiming", dropout=0.0)
    x, y = torch.randn(4, 3, 224, 224), torch.randint(0, 10, (4,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    cpu_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.to(CUDA)
    torch.nn.functional.cross_entropy(model(x.to(CUDA)), y.to(CUDA)).backward()
    for k, p in model.named_parameters():
        assert _rel_err(p.grad, cpu_grads[k]) < 2e-2, k


def test_paper_net_learns_on_cuda():
    """A fixed batch is memorised: the loss falls on the GPU in bf16 autocast, channels_last."""
    torch.manual_seed(0)
    model = alexnet.create_model("alexnet_paper", num_classes=10, init="kaiming", dropout=0.0).to(CUDA)
    model = model.to(memory_format=torch.channels_last).train()
    x = torch.randn(16, 3, 224, 224, device=CUDA).contiguous(memory_format=torch.channels_last)
    y = torch.arange(16, device=CUDA) % 10
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(60):
        with autocast(CUDA, torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses


def test_train_on_cuda_then_evaluate_on_cpu_and_cuda(tmp_path: Path):
    """The CLI trains on cuda; its checkpoint loads anywhere and scores alike on both devices."""
    data = make_image_folder(tmp_path / "images", classes=3, per_class=8)
    out = tmp_path / "run"
    r = run_cli("train", "--data", str(data), "--model", "alexnet_paper", "--epochs", "2", "--batch-size", "8",
                "--workers", "0", "--device", "cuda", "--out", str(out), cuda=True, timeout=900)
    assert r.returncode == 0, r.stderr
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["train_loss"])) for h in history)
    ckpt = alexnet.checkpoint.load_checkpoint(out / "last.pt")  # map_location="cpu": no GPU needed to read it
    assert all(t.device.type == "cpu" for t in ckpt["model"].values())
    stats = {}
    for device in ("cpu", "cuda"):
        r = run_cli("evaluate", "--checkpoint", str(out / "last.pt"), "--data", str(data), "--device", device,
                    "--amp", "none", "--json", cuda=True, timeout=600)
        assert r.returncode == 0, r.stderr
        stats[device] = json.loads(r.stdout)
    assert stats["cpu"]["images"] == stats["cuda"]["images"] > 0
    assert stats["cuda"]["loss"] == pytest.approx(stats["cpu"]["loss"], rel=2e-2, abs=1e-3)
    assert abs(stats["cuda"]["top1"] - stats["cpu"]["top1"]) <= 1 / stats["cpu"]["images"] + 1e-9


def test_cuda_checkpoint_resumes_on_cpu(tmp_path: Path):
    """A run started on the GPU continues on a CPU (--device cpu on resume)."""
    data = make_image_folder(tmp_path / "images", classes=2, per_class=4)
    out = tmp_path / "run"
    tiny = ["--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32", "--model", "alexnet_paper"]
    r = run_cli("train", "--data", str(data), "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cuda",
                "--out", str(out), *tiny, cuda=True, timeout=600)
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "--resume", str(out), "--epochs", "2", "--device", "cpu", timeout=600)
    assert r.returncode == 0, r.stderr
    assert alexnet.checkpoint.load_checkpoint(out / "last.pt")["position"]["epoch"] == 2


def test_jpegs_decoded_on_cuda_match_the_cpu_workers(tmp_path: Path):
    """``--decode device`` on cuda (nvJPEG + float resize): the CPU workers' images within one grey
    level, the same bad files met, the same number of images."""
    from test_data_pipeline import _bad_folder

    from alexnet.data.loaders import load_data

    root, _, _ = _bad_folder(tmp_path / "imgs")
    common = dict(batch_size=4, input_size=24, val_fraction=0.5, preset="torchvision", show_progress=False)
    cpu = load_data(root, out_dir=tmp_path / "a", **common)
    gpu = load_data(root, out_dir=tmp_path / "b", decode_device=CUDA, pin_memory=True, **common)
    for a, b in zip([*cpu.train, *cpu.val], [*gpu.train, *gpu.val]):
        assert (a is None) == (b is None)
        if a is not None:
            assert b[0].device.type == "cuda" and torch.equal(a[1], b[1].cpu()) and torch.equal(a[2], b[2].cpu())
            assert (a[0].int() - b[0].cpu().int()).abs().max() <= 1
    assert gpu.bad_files.paths() == cpu.bad_files.paths()


def test_decode_stream_never_hands_out_memory_the_training_stream_reads(tmp_path: Path):
    """``ALEXNET_DECODE_OVERLAP=1`` decodes on a stream of its own so that a batch's decode overlaps
    the step queued before it. Two hazards, each set up as in pytorch/vision#9606 (tensors read by
    kernels queued behind a long one, freed before those kernels run): blocks the training stream
    freed must not reach nvJPEG, and a decoded batch the training stream still reads must not be
    rewritten by the next decode. The sums are exact; the batches equal the training-stream decode."""
    from alexnet.data.device_decode import DeviceDecoder, collate_raw
    from alexnet.data.folder import ImageFolderDataset

    ds = ImageFolderDataset(make_image_folder(tmp_path / "imgs", per_class=6), resize=64, size=64)
    ds.raw = True
    batch = collate_raw([ds[i] for i in range(len(ds))])
    plain = DeviceDecoder(ds, CUDA, overlap=False)(batch)
    want = int(plain[0].sum())
    decoder = DeviceDecoder(ds, CUDA, overlap=True)
    for _ in range(10):
        freed = [torch.full((3, 64, 80), i, dtype=torch.uint8, device=CUDA) for i in range(1, 9)]
        torch.cuda._sleep(20_000_000)  # the training stream busy for a while
        sums = [t.sum() for t in freed]  # queued behind it
        del freed
        out = decoder(batch)
        held = out[0].sum()  # the training stream reads the batch, behind a second wait
        torch.cuda._sleep(20_000_000)
        held_late = out[0].sum()
        del out
        again = decoder(batch)  # the next batch, while the training stream has not read the last
        assert [int(s) for s in sums] == [i * 3 * 64 * 80 for i in range(1, 9)]
        assert int(held) == want and int(held_late) == want
        assert all(torch.equal(a, b) for a, b in zip(again, plain))


def test_in_memory_batches_for_the_gpu_are_pinned(tiny_fmnist: Path):
    """Fashion-MNIST batches of a CUDA run lie in page-locked memory: their copy is asynchronous."""
    from alexnet.data.loaders import load_data

    data = load_data(tiny_fmnist, batch_size=8, input_size=28, pin_memory=True)
    assert all(t.is_pinned() for t in next(iter(data.train))) and all(t.is_pinned() for t in next(iter(data.val)))


def test_paper_sgd_takes_the_fused_pass_on_cuda():
    """PaperSGD on cuda: the probe accepts PyTorch's fused SGD kernel (one pass), and weights and
    velocities follow the paper's rule in float64 across a drop of the rate."""
    from alexnet import optim

    assert optim._fused_matches(CUDA, torch.float32)  # the parameters of every run (bf16 is autocast)
    torch.manual_seed(2)
    w0 = torch.randn(64, 32, device=CUDA)
    grads = [torch.randn_like(w0) for _ in range(3)]
    w, v = w0.double(), torch.zeros_like(w0, dtype=torch.float64)
    p = torch.nn.Parameter(w0.clone())
    opt = optim.PaperSGD([p], lr=0.01, momentum=0.9, weight_decay=5e-4)
    for g, e in zip(grads, [0.01, 0.01, 0.001]):
        v = 0.9 * v - 5e-4 * e * w - e * g.double()
        w = w + v
        opt.param_groups[0]["lr"] = e
        p.grad = g.clone()
        opt.step()
    torch.testing.assert_close(p.detach().double(), w, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(opt.state[p]["velocity"].double(), v, rtol=1e-5, atol=1e-8)
