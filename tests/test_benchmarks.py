"""Each benchmark runs in its tiny --quick setting and ends with parseable RESULT lines.

No timing is asserted: the figures of a quick run on a shared machine mean nothing.
"""

import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_env, make_image_folder, requires_cuda, run_cli

ROOT = Path(__file__).resolve().parents[1]
RESULT = re.compile(r"^RESULT (\w+) ours=(\S+) (peer|ref)=(\S+) ratio=(\S+) unit=(\S+)$")
# The lines whose second figure is a reference (tolerance, roofline, trivial predictor, the pure step), not a peer's.
REFERENCES = {"lrn_max_rel_error", "lrn_groups2_relu_max_rel_error", "lrn_first_call_seconds", "train_gflops_vs_roofline",
              "inference_top1_agreement", "ten_crop_cost", "inference_checkpoint_top1", "inference_checkpoint_agreement",
              "inference_checkpoint_agreement_torchvision",
              "end_to_end_jpeg", "end_to_end_packed", "end_to_end_jpeg_cpu", "end_to_end_jpeg_overlap"}
# end_to_end.py's GPU utilisation per run: CUDA only, and only where NVML or nvidia-smi answers and sampled the epoch.
UTILISATION = {f"end_to_end_{run}_gpu_utilisation" for run in ("jpeg", "packed", "jpeg_cpu", "jpeg_overlap")}
REFERENCES |= UTILISATION
EXPECTED = {
    # + the bf16 lines where torch's LRN runs bf16 (CUDA; not torch's CPU kernel on several releases), and on CUDA
    # the fp16 lines and the first call's seconds
    "lrn": {"lrn_fwd_bwd_speedup", "lrn_fwd_bwd_channels_last_speedup", "lrn_max_rel_error",
            "lrn_groups2_relu_max_rel_error"},
    "train_step": {"train_images_per_s", "train_macs_normalised", "train_gflops_vs_roofline"},
    # + inference_top1_agreement with trained weights
    "inference": {"inference_images_per_s", "inference_paper_images_per_s", "inference_paper_macs_normalised", "ten_crop_cost"},
    "end_to_end": {"end_to_end_jpeg", "end_to_end_packed"},  # + end_to_end_jpeg_cpu and _jpeg_overlap on CUDA
}

SETTINGS_LINE = {"train_step", "inference", "end_to_end"}  # lrn.py prints its settings in its own words


def bench_module(name: str):
    """A module of benchmarks/ (``_common``, ``train_step``), imported as the scripts import each other."""
    import importlib

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def parse_results(stdout: str) -> dict[str, tuple[float, float, float, str]]:
    out = {}
    for line in stdout.splitlines():
        if line.startswith("RESULT"):
            m = RESULT.match(line)
            assert m, f"malformed RESULT line: {line!r}"
            ours, peer, ratio = (float(v) for v in m.group(2, 4, 5))
            assert math.isfinite(ours) and math.isfinite(peer) and peer != 0
            assert ratio == pytest.approx(ours / peer, rel=1e-3)
            assert (m.group(3) == "ref") == (m.group(1) in REFERENCES), line
            out[m.group(1)] = (ours, peer, ratio, m.group(6))
    return out


def run_quick(name: str, device: str, tmp_path: Path) -> subprocess.CompletedProcess:
    args = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick", "--device", device]
    if name == "inference":
        args += ["--data", str(make_val_folder(tmp_path))]
    if name == "end_to_end":
        args += ["--data", str(make_image_folder(tmp_path / "photos", classes=2, per_class=4)), "--workers", "1"]
    if name == "train_step":  # the variants and the profiler tables run too
        args += ["--ablate", "--profile"]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=cli_env(device == "cuda"))


def check_quick(name: str, proc: subprocess.CompletedProcess, device: str) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = parse_results(proc.stdout)
    optional = {"end_to_end": {"end_to_end_jpeg_cpu", "end_to_end_jpeg_overlap"},
                "lrn": {"lrn_fwd_bwd_bf16_speedup", "lrn_fwd_bwd_bf16_channels_last_speedup", "lrn_fwd_bwd_fp16_speedup",
                        "lrn_fwd_bwd_fp16_channels_last_speedup", "lrn_first_call_seconds"},
                "inference": {"inference_top1_agreement", "inference_top1_accuracy"}}  # with torchvision's weights cached
    extra = set(results) - EXPECTED[name]
    assert EXPECTED[name] <= set(results) and extra <= optional.get(name, set()) | (UTILISATION if device == "cuda" else set())
    if device == "cuda" and name != "inference":
        assert extra - UTILISATION == optional.get(name, set())  # CUDA runs them all
    assert proc.stdout.rstrip().splitlines()[-1].startswith("RESULT")  # RESULT lines end the output
    if name in SETTINGS_LINE:  # both sides' settings, said once
        settings = [line for line in proc.stdout.splitlines() if line.startswith("settings (ours and peer alike): ")]
        assert len(settings) == 1 and f"device={device}" in settings[0]
    return results


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_benchmark_quick(name, tmp_path):
    proc = run_quick(name, "cpu", tmp_path)
    check_quick(name, proc, "cpu")
    if name == "inference" and "weights random" in proc.stdout:  # random weights' agreement is said, not reported
        assert "meaningless" in proc.stdout and "no RESULT" in proc.stdout
    if name == "train_step":  # per-MAC ratios count the training step: forward and both gradients
        assert "training step (forward + both gradients): ours 2067.8 M, peer 2072.3 M" in proc.stdout
        # --ablate: a row per variant with its own training MACs (one tower: dense conv2/4/5).
        rows = {line[:30].strip(): line for line in proc.stdout.splitlines() if line.startswith("ours") and "M)" in line}
        assert set(rows) == {"ours (alexnet_paper)", "ours, no LRN", "ours, one tower", "ours, towers as dense convs",
                             "ours, no dropout", "ours, paper SGD"}
        assert rows["ours, one tower"].endswith("(3300.4 M)") and rows["ours, no LRN"].endswith("(2067.8 M)")
        assert "--- profile: ours (alexnet_paper), by input shape ---" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("model", ["alexnet_paper", "alexnet_owt"])
def test_inference_checkpoint_reports_trained_agreement(tmp_path, model):
    """--checkpoint (a model of ours, trained): the fp32 path's top-1 is what `alexnet evaluate`
    (another code path) measures, the fast path's agrees with it far beyond a constant prediction's
    agreement; of torchvision's architecture, torchvision's alexnet given the same weights is scored
    beside it (both models' top-1); data of other classes is refused in one line."""
    data = make_image_folder(tmp_path / "photos", classes=2, per_class=6)
    lr = {"alexnet_paper": "0.002", "alexnet_owt": "0.0001"}[model]  # owt, without LRN, diverges at 0.002 and 0.0005
    r = run_cli("train", "--data", str(data), "--model", model, "--epochs", "8", "--batch-size", "4", "--lr", lr,
                *(["--model-option", "input_size=112"] if model == "alexnet_paper" else []),  # torchvision's: 224
                "--out", str(tmp_path / "run"), "--seed", "1")
    assert r.returncode == 0, r.stderr
    ckpt = str(tmp_path / "run" / "last.pt")
    ev = run_cli("evaluate", "--checkpoint", ckpt, "--data", str(data))
    top1 = float(re.search(r"top-1 (?:accuracy )?([0-9.]+)", ev.stdout).group(1))
    script = [sys.executable, str(ROOT / "benchmarks" / "inference.py"), "--quick", "--data", str(data), "--checkpoint", ckpt]
    proc = subprocess.run(script, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = parse_results(proc.stdout)
    assert results["inference_checkpoint_top1"][1] == pytest.approx(top1, abs=1e-4)
    agreement, constant = results["inference_checkpoint_agreement"][:2]
    assert agreement >= 11 / 12 and constant <= 10 / 12  # trained: not one class for every image
    if model == "alexnet_owt":
        ours, peer = results["inference_checkpoint_top1_vs_torchvision"][:2]
        assert ours == results["inference_checkpoint_top1"][0] and abs(ours - peer) <= 1 / 12
        assert results["inference_checkpoint_agreement_torchvision"][0] >= 11 / 12
    else:
        assert "inference_checkpoint_top1_vs_torchvision" not in results
    other = make_image_folder(tmp_path / "other", classes=3, per_class=1)
    bad = subprocess.run(script[:-4] + ["--data", str(other), "--checkpoint", ckpt], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path, env=cli_env())
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith(f"inference.py: error: --data {other}: its classes")


def test_inference_images_limit_spans_the_classes(tmp_path):
    """--images N takes N images spread over the class-sorted folder, not its first N (all of class0:
    the agreement, its constant baseline and both models' top-1 were of one class)."""
    load_images = bench_module("inference").load_images
    data = make_image_folder(tmp_path / "val", classes=3, per_class=4)
    images, labels, folders = load_images(data, 6)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2] and folders == ["class0", "class1", "class2"]
    assert images.shape == (6, 3, 256, 256)
    assert load_images(data, 0)[1].tolist() == [0] * 4 + [1] * 4 + [2] * 4  # 0: every image, in order


def test_split_towers_is_the_grouped_convolution():
    """The --ablate variant "towers as dense convs" computes what the grouped convolutions do
    (float64: outputs and every gradient), so its timing measures an implementation, not a model."""
    split_towers = bench_module("train_step").split_towers
    import torch

    from alexnet.model import create_model

    torch.manual_seed(0)
    grouped = create_model("alexnet_paper", num_classes=10, dropout=0.0, init="kaiming").double()
    split = create_model("alexnet_paper", num_classes=10, dropout=0.0).double()
    split.load_state_dict(grouped.state_dict())
    split = split_towers(split)
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    outputs = []
    for model in (grouped, split):
        y = model(x)
        y.square().sum().backward()
        outputs.append((y, {n: p.grad for n, p in model.named_parameters()}))
    (y1, g1), (y2, g2) = outputs
    torch.testing.assert_close(y2, y1, rtol=1e-10, atol=1e-12)
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-9, atol=1e-12, msg=name)


@requires_cuda
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_benchmark_quick_on_cuda(name, tmp_path):
    check_quick(name, run_quick(name, "cuda", tmp_path), "cuda")


@pytest.mark.parametrize("script, args, said", [
    ("train_step.py", ["--device", "cuda"], "--device cuda: no CUDA device is available on this machine"),
    ("lrn.py", ["--device", "cuda"], "--device cuda: no CUDA device is available on this machine"),
    ("inference.py", ["--checkpoint", "nope.pt"], "checkpoint not found: nope.pt"),  # it was a traceback (helper 30)
    # Helper 35: exit 1 without the script's name, or torch's and statistics' tracebacks, or (lrn.py
    # --batch-size 0) a run at another size.
    ("inference.py", ["--peer-weights", "nope.pth"], "--peer-weights nope.pth: file not found"),
    ("data_pipeline.py", ["--data", "empty"], "--data: no JPEG files in empty (the torch-native peer decodes JPEGs)"),
    ("end_to_end.py", ["--data", "empty"], "--data empty: no class folders of images (the layout of `alexnet train --data`)"),
    ("lrn.py", ["--threads", "-1"], "argument --threads: expected a whole number >= 0, got '-1'"),
    ("train_step.py", ["--repeats", "0"], "argument --repeats: expected a whole number >= 1, got '0'"),
    ("lrn.py", ["--batch-size", "0"], "argument --batch-size: expected a whole number >= 1, got '0'"),
    ("end_to_end.py", ["--workers", "-1"], "argument --workers: expected a whole number >= 0, got '-1'"),
    ("allreduce.py", ["--iters", "0"], "argument --iters: expected a whole number >= 1, got '0'"),  # was a traceback per rank
])
def test_benchmark_bad_input_is_one_line(tmp_path, script, args, said):
    """One error line (after argparse's usage line for a malformed option) and exit 2."""
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", *args],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=cli_env(cuda=False))
    lines = proc.stderr.strip().splitlines()
    if said.startswith("argument "):
        assert lines[0].startswith("usage: ") and lines[-1] == f"{script}: error: {said}", proc.stderr
        assert "Traceback" not in proc.stderr
    else:
        assert lines == [f"{script}: error: {said}"], proc.stderr
    assert proc.returncode == 2, proc.stderr


def test_memory_growth_per_image_measures_two_folders_and_refuses_runs_without_data(tmp_path):
    """memory_growth.py --per-image: two synthetic folders opened and read as training does, a line
    each and the bytes per image of their difference; without --data (and no --per-image) one line."""
    script = [sys.executable, str(ROOT / "benchmarks" / "memory_growth.py"), "--work", str(tmp_path / "w")]
    proc = subprocess.run([*script, "--per-image", "40,120", "--workers", "1", "--input-size", "32", "--threads", "1"],
                          capture_output=True, text=True, timeout=600, env=cli_env(cuda=False))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^ +40 images: opened.*\n +120 images: opened", proc.stdout, re.M), proc.stdout
    per_image = r"^per image: main traced -?\d+ B, main RSS -?\d+ B \(-?\d+ B at the epoch's end\), each worker -?\d+ B"
    assert re.search(per_image, proc.stdout, re.M), proc.stdout
    assert len(list((tmp_path / "w" / "listing-120" / "train").rglob("*.JPEG"))) == 120
    proc = subprocess.run(script, capture_output=True, text=True, timeout=300, env=cli_env(cuda=False))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "memory_growth.py: error: --data: an image folder with train/ and val/ class folders is needed for the runs (or give --per-image)"]


def test_training_macs_count_forward_and_both_gradients():
    training_macs = bench_module("_common").training_macs
    from alexnet.model import create_model
    from alexnet.summary import layer_table

    rows = layer_table(create_model("alexnet_paper"), 224)
    forward = sum(r.macs for r in rows)
    conv1 = next(r.macs for r in rows if r.name == "conv1")
    assert training_macs(rows) == 3 * forward - conv1  # the image needs no gradient


def make_val_folder(root: Path) -> Path:
    return make_image_folder(root / "val", classes=2, per_class=2)


def test_cli_benchmark_rejects_unknown_name():
    r = run_cli("benchmark", "--only", "nonsense")
    assert r.returncode == 2 and "nonsense" in r.stderr and "Traceback" not in r.stderr


def test_cli_benchmark_finds_the_checkout_benchmarks_by_default():
    """Without --dir, the benchmarks/ beside src/ run (after cli.py became the cli/ package it looked
    in src/benchmarks: 'alexnet: error: --dir: no benchmarks in .../src/benchmarks', exit 2)."""
    r = run_cli("benchmark", "--quick", "--only", "lrn", "--device", "cpu", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "lrn_max_rel_error" in r.stdout.split("== results ==")[-1]


def test_cli_benchmark_passes_its_settings_to_each_script(tmp_path):
    """--threads, --repeats and --quick reach every script (whose _common.base_parser takes them);
    a stand-in lrn.py echoes the arguments it was given."""
    (tmp_path / "_common.py").write_text("")
    (tmp_path / "lrn.py").write_text("import sys\nprint('RESULT args', ' '.join(sys.argv[1:]))\n")
    r = run_cli("benchmark", "--quick", "--only", "lrn", "--device", "cpu", "--threads", "1", "--repeats", "3", "--dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "RESULT args --quick --device cpu --repeats 3 --threads 1"
    real = bench_module("_common").base_parser("every script's options").parse_args(r.stdout.split()[-7:])
    assert (real.quick, real.device, real.repeats, real.threads) == (True, "cpu", 3, 1)


@pytest.mark.slow
def test_cli_benchmark_runs_in_a_checkout_without_photos(tmp_path):
    """A user's checkout has no ../shared beside it: inference times synthetic images and reports no
    agreement (it failed: 'inference.py: error: --data: folder not found: .../shared/...', and
    'benchmark(s) failed: inference'); --data gives photos, a missing one is one line."""
    bench = tmp_path / "checkout" / "benchmarks"
    bench.mkdir(parents=True)
    for name in ("_common.py", "inference.py"):
        shutil.copy(ROOT / "benchmarks" / name, bench / name)
    r = run_cli("benchmark", "--quick", "--only", "inference", "--device", "cpu", "--dir", str(bench))
    assert r.returncode == 0, r.stderr
    note = f"NOTE: no photos ({tmp_path / 'shared' / 'data' / 'imagewoof-mini' / 'val'} is absent; --data DIR gives some)"
    assert note in r.stdout, r.stdout
    names = {line.split()[1] for line in r.stdout.splitlines() if line.startswith("RESULT ")}
    assert names == {"inference_images_per_s", "inference_paper_images_per_s", "inference_paper_macs_normalised", "ten_crop_cost"}, names
    r = run_cli("benchmark", "--quick", "--only", "inference", "--device", "cpu", "--dir", str(bench), "--data", str(tmp_path / "none"))
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert r.stderr.strip().splitlines() == [f"alexnet: error: --data: folder not found: {tmp_path / 'none'}"]


def test_cli_benchmark_refuses_cuda_without_a_gpu_before_running_any():
    """One line, exit 2, before any benchmark starts (each one failed on its own, then 'benchmark(s) failed', exit 1)."""
    r = run_cli("benchmark", "--quick", "--only", "lrn", "--device", "cuda")
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert r.stderr.strip().splitlines() == ["alexnet: error: --device cuda: no CUDA device is available on this machine"]


def test_allreduce_result_ratio_is_ours_over_peer():
    """allreduce.py's RESULT lines pass parse_results' check (ratio = ours/peer of the printed figures
    within 1e-3): they printed ratio=0.012 for 1/81.3 (3 decimals), 2.5 % off."""
    import contextlib
    import io

    report = bench_module("allreduce").report
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        report(1.0, 0.0123, 1.0)  # seconds per step of ours and the peer, 1 GB on the bus
    results = parse_results(buf.getvalue())
    assert results["allreduce_busbw"][:2] == pytest.approx((1.0, 1 / 0.0123), rel=1e-5)
    assert results["grad_sync_ms"][:2] == pytest.approx((1000.0, 12.3), rel=1e-5)


def test_result_line_format():
    result = bench_module("_common").result
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result("x", 3.0, 2.0, "images/s")
    assert parse_results(buf.getvalue()) == {"x": (3.0, 2.0, 1.5, "images/s")}


def test_gpu_utilisation_sampler_picks_a_working_reader(monkeypatch):
    """end_to_end.py's GPU utilisation: NVML through torch (which maps CUDA's index to NVML's),
    else nvidia-smi on the CUDA_VISIBLE_DEVICES entry, else "not measured"; a failing read never
    stops the sampling. Faked CUDA and nvidia-smi: this checks the choices, not the GPU."""
    import torch

    end_to_end = bench_module("end_to_end")
    cuda1 = torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "utilization", lambda index: {1: 37}[index])
    util = end_to_end.Utilisation(cuda1)
    assert util.source == "NVML" and util.read() == 37.0

    def no_nvml(index):
        raise ModuleNotFoundError("pynvml does not seem to be installed")

    asked = []

    def smi(cmd, **kw):
        asked.append(cmd[1])
        return subprocess.CompletedProcess(cmd, 0, stdout="52\n")

    monkeypatch.setattr(torch.cuda, "utilization", no_nvml)
    monkeypatch.setattr(end_to_end.subprocess, "run", smi)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-5e1f")
    util = end_to_end.Utilisation(cuda1)
    assert util.source == "nvidia-smi" and util.read() == 52.0 and asked[-1] == "--id=GPU-5e1f"

    monkeypatch.setattr(end_to_end.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, stdout=""))
    assert end_to_end.Utilisation(cuda1).source is None  # nothing works: not measured, no thread
    assert end_to_end.Utilisation(torch.device("cpu")).source is None

    reads = iter([RuntimeError("NVML: GPU is lost"), 40.0, 60.0])

    def flaky():
        value = next(reads, 50.0)
        if isinstance(value, Exception):
            raise value
        return value

    monkeypatch.setattr(torch.cuda, "utilization", lambda index: 10)
    util = end_to_end.Utilisation(cuda1)
    util.read = flaky
    with util:
        deadline = time.monotonic() + 5
        while len(util.samples) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert [u for _, u in util.samples[:2]] == [40.0, 60.0]  # the failed read was skipped, sampling went on


@pytest.mark.slow
def test_memory_quick_reports_each_command(tmp_path):
    """memory.py --quick on a tiny folder: a line for ours and one for the peer (or why none) per
    command, and RESULT lines in MiB for the commands with a peer."""
    data = make_image_folder(tmp_path / "photos", classes=2, per_class=6)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--quick", "--data", str(data), "--threads", "1",
                           "--only", ",".join(bench_module("memory").COMMANDS)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=cli_env(cuda=False))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    ours = [line.split()[0] for line in lines if " ours: peak PSS " in line]
    assert ours == ["train", "train_system", "prepare", "train_packed", "evaluate", "ten_crop", "predict", "features"]
    peers = [line for line in lines if line.lstrip().startswith("peer: ")]
    assert len(peers) == len(ours) and sum("peer: peak PSS" in line for line in peers) == 4
    results = parse_results(proc.stdout)
    assert set(results) == {f"memory_{c}_{m}" for c in ("train", "train_packed", "evaluate", "ten_crop") for m in ("pss", "main_rss")}
    assert all(unit == "MiB" and ours > 100 and peer > 100 for ours, peer, _, unit in results.values())  # torch alone is more
    assert lines[-1].startswith("RESULT") and sum(line.startswith("settings (ours and peer alike): ") for line in lines) == 1


def test_memory_counts_pages_shared_by_forked_workers_once(tmp_path):
    """The sampler's PSS: a process holding 200 MiB of its own pages and two forked children that
    share them (as DataLoader workers share what the main process held) count about 200 MiB in all,
    where their RSS would count 600; the main process's peak RSS holds the 200 MiB."""
    child = ("import os, time\nb = bytes(range(256)) * (200 * 2**20 // 256)\n"
             "for _ in range(2):\n    if os.fork() == 0:\n        time.sleep(1.5)\n        os._exit(0)\n"
             "time.sleep(1.5)\nos.wait()\nos.wait()\n")
    peak = bench_module("memory").measure("a test", [sys.executable, "-c", child], dict(os.environ), 0.05, 0)
    assert peak.returncode == 0 and peak.processes == 3
    assert 200 <= peak.pss <= 200 + 60  # three interpreters of ~10 MiB each beside the shared 200 MiB
    assert 200 <= peak.rss <= 200 + 40


def test_startup_times_each_command_to_its_first_step_or_batch(tmp_path):
    """startup.py times the parts of a start by replacing the package's functions by name in a child: a name
    renamed or gone would stop it. Its quick run takes every command to its first step or batch."""
    photos = make_image_folder(tmp_path / "photos", classes=2, per_class=3, size=(48, 40))
    script = [sys.executable, str(ROOT / "benchmarks" / "startup.py"), "--quick", "--work", str(tmp_path / "w"), "--photos", str(photos)]
    proc = subprocess.run(script, capture_output=True, text=True, timeout=600, env=cli_env(False))
    assert proc.returncode == 0, proc.stderr[-2000:]
    reached = re.findall(r"^(\w+): alexnet .*\n +[\d.]+ s to the (first step|first batch) ", proc.stdout, re.M)
    assert reached == [("train", "first step"), ("cached", "first step"), ("resume", "first step"), ("evaluate", "first batch"),
                       ("features", "first batch"), ("prepare", "first batch")]
    assert "statistics pass: 16 images in" in proc.stdout and "list every image" in proc.stdout
