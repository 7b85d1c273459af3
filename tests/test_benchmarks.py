"""Each benchmark runs in its tiny --quick setting and ends with parseable RESULT lines.

No timing is asserted: the figures of a quick run on a shared machine mean nothing.
"""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_image_folder, run_cli

ROOT = Path(__file__).resolve().parents[1]
RESULT = re.compile(r"^RESULT (\w+) ours=(\S+) peer=(\S+) ratio=(\S+) unit=(\S+)$")
EXPECTED = {
    "lrn": {"lrn_fwd_bwd_speedup", "lrn_fwd_bwd_channels_last_speedup", "lrn_fwd_bwd_bf16_speedup", "lrn_max_rel_error"},
    "train_step": {"train_images_per_s", "train_macs_normalised", "train_gflops_vs_matmul"},
    "inference": {"inference_images_per_s", "inference_top1_agreement", "ten_crop_cost"},
}


def parse_results(stdout: str) -> dict[str, tuple[float, float, float, str]]:
    out = {}
    for line in stdout.splitlines():
        if line.startswith("RESULT"):
            m = RESULT.match(line)
            assert m, f"malformed RESULT line: {line!r}"
            ours, peer, ratio = (float(v) for v in m.group(2, 3, 4))
            assert math.isfinite(ours) and math.isfinite(peer) and peer != 0
            assert ratio == pytest.approx(ours / peer, rel=1e-3)
            out[m.group(1)] = (ours, peer, ratio, m.group(5))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_benchmark_quick(name, tmp_path):
    args = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick", "--device", "cpu"]
    if name == "inference":
        args += ["--data", str(make_val_folder(tmp_path))]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = parse_results(proc.stdout)
    assert set(results) == EXPECTED[name]
    assert proc.stdout.rstrip().splitlines()[-1].startswith("RESULT")  # RESULT lines end the output
    if name == "inference":  # identical weights: the paths must agree on real (here: tiny) images
        assert 0.0 <= results["inference_top1_agreement"][0] <= 1.0


def make_val_folder(root: Path) -> Path:
    return make_image_folder(root / "val", classes=2, per_class=2)


def test_cli_benchmark_rejects_unknown_name():
    r = run_cli("benchmark", "--only", "nonsense")
    assert r.returncode == 2 and "nonsense" in r.stderr and "Traceback" not in r.stderr


def test_result_line_format():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from _common import result
    finally:
        sys.path.pop(0)
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result("x", 3.0, 2.0, "images/s")
    assert parse_results(buf.getvalue()) == {"x": (3.0, 2.0, 1.5, "images/s")}
