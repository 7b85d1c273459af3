"""Measure fine-tuning: README's fine-tuning table, every figure with the command that gave it.

    python scripts/finetune_table.py --init-from runs/photos-s0/last.pt --out runs/finetune
    python scripts/finetune_table.py --init-from A.pt --data DIR --seeds 0 1 2 --epochs 10 -- --threads 2

Each row is ``alexnet train --data DATA --epochs E --seed N --out OUT/ROW-sN --force`` for every
seed N, with the row's flags (none: from scratch; ``--init-from``; ``--init-from`` with
``--lr-mult fc8=10``; ``--init-from`` with ``--freeze features``) and anything after ``--``; its final
weights are then scored by ``alexnet evaluate --checkpoint OUT/ROW-sN/last.pt --out
OUT/ROW-sN/evaluate --json`` (the final weights, not ``best.pt``, which was chosen on the same
validation photos). Both are run as a user runs them, by this Python's ``alexnet``.

Written to OUT: ``commands.txt`` (every command, as run), ``results.json`` (each run's top-1 and
top-5, and its best epoch's val top-1 from ``metrics.jsonl``) and ``table.md`` (each row's per-seed
top-1, mean and standard error over the seeds, and the difference of means to scratch). A run whose
``evaluate/evaluate.json`` exists and whose ``command.txt`` is this run's command (and, fine-tuned,
the sha256 of the same source file) is read back, not run again, so a table cut off part way goes
on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from alexnet.export import Source

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagewoof-mini"


@dataclass(frozen=True)
class Row:
    """One way to start: a short name for its run folders, the label in the table, its train flags."""

    key: str
    label: str
    flags: tuple[str, ...]


@dataclass(frozen=True)
class Result:
    """One run's figures: its final weights' val top-1 and top-5, and its best epoch by val top-1."""

    row: str
    seed: int
    top1: float
    top5: float
    best_top1: float
    best_epoch: int


def rows_for(source: str) -> list[Row]:
    """The table's rows, fine-tuning from ``source``."""
    init = ("--init-from", source)
    return [
        Row("scratch", "from scratch", ()),
        Row("init", "`--init-from SOURCE`", init),
        Row("init-fc8x10", "`--init-from SOURCE --lr-mult fc8=10`", (*init, "--lr-mult", "fc8=10")),
        Row("frozen", "`--init-from SOURCE --freeze features` (fc6-fc8 learn)", (*init, "--freeze", "features")),
    ]


def alexnet(*args: str) -> list[str]:
    """The command line of ``alexnet ARGS`` with this Python's package, as it is printed and run."""
    return [sys.executable, "-m", "alexnet", *args]


def run(command: list[str], log: list[str], capture: bool = False) -> str:
    """Run ``command`` (its output shown, or returned with ``capture``), logged in ``log``; if it
    fails, one line naming it (the command said why above) and SystemExit with its exit status."""
    log.append(shlex.join(command))
    print(f"+ {shlex.join(command)}", flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE if capture else None, text=True)
    if done.returncode != 0:
        print(f"finetune_table: error: exit status {done.returncode} of: {shlex.join(command)}", file=sys.stderr)
        raise SystemExit(done.returncode)
    return done.stdout or ""


def best_epoch(run_dir: Path) -> tuple[float, int]:
    """The highest val top-1 of ``run_dir``'s metrics.jsonl and its epoch (the first such)."""
    best = (-1.0, 0)
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "val_top1" in record and record["val_top1"] > best[0]:
            best = (record["val_top1"], record["epoch"])
    return best


def measure(row: Row, seed: int, args: argparse.Namespace, extra: list[str], log: list[str]) -> Result:
    """Train and score one run of ``row`` at ``seed``, or read back a finished one run by the same command."""
    run_dir = args.out / f"{row.key}-s{seed}"
    train = alexnet("train", "--data", str(args.data), "--epochs", str(args.epochs), "--seed", str(seed),
                    "--out", str(run_dir), "--force", *row.flags, *extra)
    record = run_dir / "evaluate" / "evaluate.json"
    said, command = run_dir / "command.txt", shlex.join(train) + "\n"
    if row.flags:  # the same path may hold other weights since (a source retrained): its bytes decide
        command += f"# {args.init_from}: sha256 {args.source_sha256}\n"
    scored = alexnet("evaluate", "--checkpoint", str(run_dir / "last.pt"), "--out", str(run_dir / "evaluate"),
                     "--json", *shared_options(extra))
    if record.is_file() and said.is_file() and said.read_text() == command:
        print(f"= {run_dir}: read back (its command and evaluate.json are there)", flush=True)
        log += [shlex.join(train), shlex.join(scored)]  # commands.txt names what gave every figure
        stats = json.loads(record.read_text())
    else:
        said.unlink(missing_ok=True)  # a run cut off below is not taken for the one it replaced
        run(train, log)
        said.write_text(command)
        stats = json.loads(run(scored, log, capture=True).strip().splitlines()[-1])
    return Result(row.key, seed, stats["top1"], stats["top5"], *best_epoch(run_dir))


SHARED = ("--threads", "--amp", "--device")  # train options that evaluate takes too: it computes as training did


def shared_options(extra: list[str]) -> list[str]:
    """The options among ``extra`` (``--threads 2`` or ``--threads=2``) that evaluate also takes."""
    out = []
    for i, word in enumerate(extra):
        if word in SHARED and i + 1 < len(extra):
            out += [word, extra[i + 1]]
        elif word.split("=")[0] in SHARED and "=" in word:
            out.append(word)
    return out


def mean_and_error(values: list[float]) -> tuple[float, float]:
    """The mean of ``values`` and its standard error (sample std / sqrt(n); 0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


def table(rows: list[Row], results: list[Result], seeds: list[int]) -> str:
    """The Markdown table: each row's per-seed top-1, their mean ± standard error, the difference to scratch."""
    head = " / ".join(f"seed {s}" for s in seeds)
    lines = [f"| start | val top-1 ({head}) | mean ± s.e. | mean − scratch |", "|---|---|---|---|"]
    means = {}
    for row in rows:
        top1 = [r.top1 for s in seeds for r in results if r.row == row.key and r.seed == s]
        mean, error = mean_and_error(top1)
        means[row.key] = mean
        gain = "" if row.key == "scratch" else f"{mean - means['scratch']:+.3f}"
        lines.append(f"| {row.label} | {' / '.join(f'{t:.3f}' for t in top1)} | {mean:.3f} ± {error:.3f} | {gain} |")
    return "\n".join(lines) + "\n"


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The options, and the train options after ``--``; SystemExit with one line for a missing file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init-from", required=True, help="the checkpoint to fine-tune from")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the photos (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="a folder for the runs and the table")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = parser.parse_args(own)
    for name, path in (("--init-from", Path(args.init_from)), ("--data", args.data)):
        if not path.exists():
            parser.error(f"{name}: not found: {path}")
    args.init_from = str(Path(args.init_from).resolve())  # the runs' config.json name it from anywhere
    args.source_sha256 = Source.of(args.init_from).sha256  # as an export records its checkpoint
    return args, extra


def main(argv: list[str] | None = None) -> int:
    """Run every row at every seed, then write commands.txt, results.json and table.md to --out."""
    args, extra = parse(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, log, results = rows_for(args.init_from), [], []
    for row in rows:
        for seed in args.seeds:
            results.append(measure(row, seed, args, extra, log))
    (args.out / "commands.txt").write_text("\n".join(log) + "\n")
    (args.out / "results.json").write_text(json.dumps(
        {"init_from": args.init_from, "data": str(args.data.resolve()), "epochs": args.epochs, "extra": extra,
         "runs": [asdict(r) for r in results]}, indent=2) + "\n")
    text = table(rows, results, args.seeds)
    (args.out / "table.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
