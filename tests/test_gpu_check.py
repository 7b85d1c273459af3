"""scripts/gpu-check.sh, the one prepared call a borrowed GPU gets: it refuses in one line where no
GPU is visible, and its steps, logs, budget and summary work (checked as a dry run with DEVICE=cpu)."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"


def gpu_check(tmp_path: Path, *pytest_args: str, **env: str) -> subprocess.CompletedProcess:
    # INSTALL=0: a dry run must not point the test interpreter's editable install at this checkout
    environ = cli_env(cuda=False, **{"OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "INSTALL": "0", **env})
    return subprocess.run(["bash", str(SCRIPT), *pytest_args], capture_output=True, text=True, timeout=900, env=environ)


def test_refuses_without_a_gpu(tmp_path):
    r = gpu_check(tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"gpu-check.sh: error: no CUDA device is visible to {sys.executable} "
        "(torch.cuda.is_available() is False, or torch is missing); run it on a GPU machine"
    ]


@pytest.mark.parametrize("env, message", [
    ({"DEVICE": "tpu"}, "DEVICE must be cuda or cpu, got 'tpu'"),
    ({"DEVICE": "cpu", "BUDGET_S": "10m"}, "BUDGET_S must be a whole number of seconds, got '10m'"),
    ({"DEVICE": "cpu", "PARTS": "bench nonsense"}, "unknown part 'nonsense' in PARTS (bench, tests)"),
    ({"DEVICE": "cpu", "BENCH": "lrn trainstep"}, "unknown benchmark 'trainstep' in BENCH (lrn, train_step, "
     "train_step_compiled, train_step_graphs, inference, data_pipeline, end_to_end, allreduce)"),
])
def test_bad_settings_are_one_line(tmp_path, env, message):
    r = gpu_check(tmp_path, **env)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"gpu-check.sh: error: {message}"]
    assert not (tmp_path / "out").exists()  # refused before anything ran


@pytest.mark.slow
def test_dry_run_on_the_cpu(tmp_path):
    """Benchmarks first, then the cuda-marked tests and the rest; the summary repeats each
    benchmark's RESULT lines and each pytest run's outcome, and the logs stay in $OUT."""
    r = gpu_check(tmp_path, "tests/test_atomic.py", DEVICE="cpu", QUICK="1", BENCH="train_step")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    summary = r.stdout[r.stdout.index("== RESULT lines ==") :].splitlines()
    assert summary[1] == "# train_step"
    assert [line.split()[1] for line in summary[2:5]] == ["train_images_per_s", "train_macs_normalised", "train_gflops_vs_roofline"]
    assert "ours, towers as dense convs" in r.stdout  # the training step ran with its ablations
    assert summary[5].startswith("# pytest-cuda.log: ") and "deselected" in summary[5]
    assert summary[6].startswith("# pytest-rest.log: ") and " passed" in summary[6] and "failed" not in summary[6]
    assert r.stdout.index("== tests marked cuda ==") < r.stdout.index("== the other tests ==")
    assert r.stdout.rstrip().endswith("gpu-check.sh: tests passed; benchmarks ran (logs in " + str(tmp_path / "out") + ")")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bench-train_step.log", "pytest-cuda.log", "pytest-rest.log"]


def test_budget_spent_still_prints_the_summary(tmp_path):
    """With the budget gone, no step starts; the summary says what did not run and the status is 1."""
    r = gpu_check(tmp_path, "tests/test_atomic.py", DEVICE="cpu", QUICK="1", BENCH="lrn", BUDGET_S="1")
    assert r.returncode == 1
    assert "== RESULT lines ==" in r.stdout and "# pytest-rest.log: (no pytest summary: did not finish)" in r.stdout
    assert r.stderr.strip().splitlines()[-1].startswith("gpu-check.sh: error: the budget of 1 s ran out: ")


def test_without_pytest_the_benchmarks_still_run(tmp_path):
    """An offline GPU machine without pytest cannot install it: its minutes still give the figures."""
    python = tmp_path / "python"  # the same interpreter, as where pytest is not installed
    python.write_text(f'#!/bin/bash\nif [ "$1" = -c ] && [[ "$2" == *"import pytest"* ]]; then exit 1; fi\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    r = gpu_check(tmp_path, DEVICE="cpu", QUICK="1", BENCH="lrn", PYTHON=str(python))
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    assert f"gpu-check.sh: note: pytest is not installed for {python}: the benchmarks run, the tests do not" in r.stdout
    summary = r.stdout[r.stdout.index("== RESULT lines ==") :].splitlines()
    assert summary[1] == "# lrn" and summary[2].startswith("RESULT ")
    assert r.stderr.strip().splitlines()[-1] == f"gpu-check.sh: error: the tests did not run: pytest is not installed for {python}"
    r = gpu_check(tmp_path, DEVICE="cpu", PARTS="tests", PYTHON=str(python))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"gpu-check.sh: error: pytest is not installed for {python}, and PARTS has nothing else to run"
    ]
