"""scripts/finetune_table.py, behind README's fine-tuning table, runs what its rows say and reports
what those runs scored.

Its main() runs here on a small image folder and a source checkpoint trained here, each `alexnet`
command it runs a process of its own (forked, as run_cli's are); the bad-input test runs the script as
a user does. Each run's resolved configuration (config.json) is checked against its row; the frozen row's convolutions
against the source's (they must not move) and the scratch row's against them (they must differ);
the table's figures against evaluate.json, which `alexnet evaluate --out` wrote beside each run
(the script reads the printed `--json`), with the mean and standard error computed here.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import statistics
import subprocess
import sys
import types
from pathlib import Path

import torch
from conftest import ROOT, cli_env, make_image_folder, run_cli

SCRIPT = ROOT / "scripts" / "finetune_table.py"
# a rate at which fc8 x 10 does not diverge in 3 steps an epoch on coloured noise
TRAIN = ("--threads", "1", "--amp", "none", "--progress", "off", "--batch-size", "8", "--lr", "0.001")
# a narrow network: the 17 runs' time is then their start-up, not writing 140 MB checkpoints of fc6-fc8
TINY = ("--model-option", "input_size=64", "--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32")
ROWS = {"scratch": {}, "init": {}, "init-fc8x10": {"lr_mult": {"fc8": 10.0}}, "frozen": {"freeze": ["features"]}}


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=cli_env(), timeout=900)


def _script_here(*args: str) -> subprocess.CompletedProcess:
    """The script's main() in this process, its `alexnet` commands run by run_cli (each a process of its
    own, forked: 3-4 s less each of the table's 27): what it printed, and its exit status."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        script = importlib.import_module(SCRIPT.stem)
    finally:
        sys.path.pop(0)

    def run(command: list[str], stdout=None, text: bool = True) -> subprocess.CompletedProcess:
        assert command[:3] == [sys.executable, "-m", "alexnet"] and text
        done = run_cli(*command[3:])
        sys.stderr.write(done.stderr)
        if stdout is None:  # shown, as the script's own output
            sys.stdout.write(done.stdout)
        return subprocess.CompletedProcess(command, done.returncode, done.stdout if stdout else None)

    script.subprocess = types.SimpleNamespace(run=run, PIPE=subprocess.PIPE)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = script.main(list(args))
        except SystemExit as e:
            code = e.code
        finally:
            script.subprocess = subprocess
    return subprocess.CompletedProcess(["finetune_table.py", *args], code, out.getvalue(), err.getvalue())


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _table(root: Path) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """A source trained for one epoch on a 3-class folder at 64 px (a narrow network), then the table from it
    (2 seeds, 2 epochs)."""
    make_image_folder(root / "photos" / "train", per_class=8)
    make_image_folder(root / "photos" / "val", per_class=3)
    source = root / "source"
    done = run_cli("train", "--data", str(root / "photos"), *TINY, "--epochs", "1",
                   "--seed", "5", "--out", str(source), "--threads", "1", "--amp", "none", "--progress", "off")
    assert done.returncode == 0, done.stderr
    out = root / "table"
    done = _again(source, out)
    assert done.returncode == 0, done.stdout + done.stderr
    return source, out, done


def _again(source: Path, out: Path, *seeds: str) -> subprocess.CompletedProcess:
    """The script on ``source``'s folder at ``seeds`` (default 0 and 1), 2 epochs, into ``out``."""
    return _script_here("--init-from", str(source / "last.pt"), "--data", str(source.parent / "photos"), "--out", str(out),
                        "--seeds", *(seeds or ("0", "1")), "--epochs", "2", "--", *TRAIN, *TINY)


def test_the_table_runs_its_rows_and_reports_what_they_scored(tmp_path: Path) -> None:
    """One test (the runs take a minute and a half; two tests could be given two workers that each ran them)."""
    table = _table(tmp_path)
    _check_each_run_is_its_rows_command(table)
    _check_the_rows_start_from_the_source_and_the_frozen_one_keeps_its_features(table)
    _check_the_table_reports_what_evaluate_wrote(table)
    _check_a_second_call_reads_the_runs_back_and_a_changed_source_runs_them_again(table)


def _check_each_run_is_its_rows_command(table) -> None:
    source, out, _ = table
    for key, options in ROWS.items():
        for seed in (0, 1):
            config = json.loads((out / f"{key}-s{seed}" / "config.json").read_text())["train"]
            assert config["seed"] == seed and config["epochs"] == 2 and config["amp"] == "none"
            assert config["init_from"] == (None if key == "scratch" else str((source / "last.pt").resolve()))
            assert config["freeze"] == options.get("freeze", [])
            assert config["lr_mult"] == options.get("lr_mult", {})
    commands = (out / "commands.txt").read_text().splitlines()
    assert len(commands) == 16 and sum(" train " in c for c in commands) == 8
    assert all("--amp none" in c and "--threads 1" in c for c in commands)  # evaluate computes as training did


def _check_the_rows_start_from_the_source_and_the_frozen_one_keeps_its_features(table) -> None:
    source, out, _ = table
    start = _weights(source / "last.pt")
    for seed in (0, 1):
        frozen = _weights(out / f"frozen-s{seed}" / "last.pt")
        scratch = _weights(out / f"scratch-s{seed}" / "last.pt")
        assert torch.equal(frozen["conv1.weight"], start["conv1.weight"])
        assert torch.equal(frozen["conv5.weight"], start["conv5.weight"])
        assert not torch.equal(frozen["fc6.weight"], start["fc6.weight"])
        assert not torch.equal(scratch["conv1.weight"], start["conv1.weight"])
        # the unfrozen fine-tuned row moved from the source, by far less than a fresh start lies from it
        init = _weights(out / f"init-s{seed}" / "last.pt")
        moved, fresh = ((w["conv1.weight"] - start["conv1.weight"]).norm() for w in (init, scratch))
        assert 0 < moved < 0.1 * fresh


def _check_the_table_reports_what_evaluate_wrote(table) -> None:
    _, out, done = table
    lines = {line.split(" | ")[0].strip("| "): line for line in (out / "table.md").read_text().splitlines()[2:]}
    assert done.stdout.endswith((out / "table.md").read_text())
    means = {}
    for key, label in zip(ROWS, lines):
        top1 = [json.loads((out / f"{key}-s{s}" / "evaluate" / "evaluate.json").read_text())["top1"] for s in (0, 1)]
        means[key] = statistics.fmean(top1)
        error = statistics.stdev(top1) / 2 ** 0.5
        cells = [c.strip() for c in lines[label].strip("|").split("|")]
        assert cells[1] == f"{top1[0]:.3f} / {top1[1]:.3f}"
        assert cells[2] == f"{means[key]:.3f} ± {error:.3f}"
        assert cells[3] == ("" if key == "scratch" else f"{means[key] - means['scratch']:+.3f}")
    runs = json.loads((out / "results.json").read_text())["runs"]
    metrics = [json.loads(x) for x in (out / "frozen-s1" / "metrics.jsonl").read_text().splitlines()]
    best = max(m["val_top1"] for m in metrics if "val_top1" in m)
    assert [r["best_top1"] for r in runs if r["row"] == "frozen" and r["seed"] == 1] == [best]


def _check_a_second_call_reads_the_runs_back_and_a_changed_source_runs_them_again(table) -> None:
    source, out, _ = table
    before = {p: p.stat().st_mtime_ns for p in out.glob("*-s*/last.pt")}
    done = _again(source, out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("read back") == 8 and " train " not in done.stdout
    assert before == {p: p.stat().st_mtime_ns for p in out.glob("*-s*/last.pt")}
    assert done.stdout.endswith((out / "table.md").read_text())
    commands = (out / "commands.txt").read_text().splitlines()  # still every command behind the figures
    assert len(commands) == 16 and sum(" evaluate " in c for c in commands) == 8
    # other weights under the same name (a source retrained): the fine-tuned rows run again, scratch is kept
    ckpt = torch.load(source / "last.pt", map_location="cpu", weights_only=False)
    ckpt["model"]["fc8.bias"] += 1e-6  # other bytes, the same training
    torch.save(ckpt, source / "last.pt")
    done = _again(source, out, "0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("read back") == 1 and done.stdout.count("-m alexnet train ") == 3
    assert before[out / "scratch-s0" / "last.pt"] == (out / "scratch-s0" / "last.pt").stat().st_mtime_ns
    assert before[out / "init-s0" / "last.pt"] != (out / "init-s0" / "last.pt").stat().st_mtime_ns


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    done = _script("--init-from", str(tmp_path / "nothere.pt"), "--out", str(tmp_path / "t"))
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].endswith(f"--init-from: not found: {tmp_path / 'nothere.pt'}")
    make_image_folder(tmp_path / "photos")
    (tmp_path / "source.pt").write_bytes(b"not a checkpoint")
    done = _script("--init-from", str(tmp_path / "source.pt"), "--data", str(tmp_path / "photos"),
                   "--out", str(tmp_path / "t"), "--seeds", "0", "--", "--lr", "-1", "--progress", "off")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("finetune_table: error: exit status 2 of: ")
    assert "Traceback" not in done.stderr
