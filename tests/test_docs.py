"""The documentation still matches the program (helper 88's audit).

README's Python block called ``PIL.Image.open`` without importing PIL, and options were renamed over
time (--top/--top-k/--k, a positional CHECKPOINT, ``visualize filters FILE``) with nothing to notice
a documented command that no longer parses. Here, without running any command:

- every ``alexnet ...`` command line of README.md, docs/*.md and benchmarks/README.md (code blocks,
  and code spans in the prose) parses with today's parser and names only whole options of its own
  sub-command (argparse also takes a prefix, ``--ten`` for ``--ten-crop``, which a doc should not
  lean on);
- every option that the program's own messages name exists (a resumed run's message named
  ``--plateau-max-reductions``, which train refuses), and one named after ``alexnet CMD`` is CMD's;
- README's ```python blocks run, statement by statement, against a tiny checkpoint and data made in
  tmp_path (the block's own relative paths, created there: no text of the block is replaced).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import hashlib
import io
import itertools
import json
import re
import shlex
import shutil
import tokenize
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import ROOT, make_image_folder, make_tiny_fmnist

from alexnet.cli.options import build_parser

DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
COMMAND = re.compile(r"(?:^|[\s(/])(?:-m\s+)?alexnet\s+(?=[a-z])")
# Placeholders that argparse would refuse as they are written: counts.
NUMBERS = {"N": "2", "M": "2"}
# Options the program names that are torchrun's, not alexnet's (distributed.py starts torchrun).
TORCHRUN = {"--standalone", "--nproc-per-node", "--nnodes", "--log-dir"}
# Other programs' options that messages name: docker run's, for a container's shared memory (errors.worker_lost).
OTHER_TOOLS = {"--shm-size"}


@dataclasses.dataclass
class DocCommand:
    """One command line of a document: where it is, its text, and whether it is whole (a code block's
    line) or may be a fragment (a code span in the prose, such as `alexnet download imagenette`)."""

    where: str
    text: str
    whole: bool


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def doc_commands(path: Path) -> list[DocCommand]:
    """The ``alexnet`` command lines of a Markdown file: each line of a code block (backslash
    continuations joined, ``# comments`` dropped, ``&&``, ``;`` and `` | `` split) and each code span."""
    text = path.read_text(encoding="utf-8")
    name, found = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name, []
    for block in FENCE.finditer(text):
        for line in re.finditer(r"(?:\\\n|[^\n])+", block.group(2)):
            where = f"{name}:{_line_of(text, block.start(2) + line.start())}"
            words = re.sub(r"(^|\s)#.*", "", line.group(0).replace("\\\n", " "))
            found += [DocCommand(where, part, True) for part in re.split(r"&&| \| |;", words)]
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # line numbers kept
    for span in SPAN.finditer(prose):
        words = re.sub(r"\|\s*\n\s*", "|", span.group(1)).replace("\n", " ")  # a span wrapped after 'a|'
        found.append(DocCommand(f"{name}:{_line_of(prose, span.start())}", words, False))
    return [DocCommand(c.where, c.text[m.end():].strip(), c.whole) for c in found if (m := COMMAND.search(c.text))]


def argvs(command: str) -> list[list[str]]:
    """The argument lists a documented command stands for: ``[optional]`` parts kept, ``...`` dropped,
    ``<a description>`` a placeholder, each of ``A|B|C``'s alternatives, N and M a number."""
    words = shlex.split(re.sub(r"<[^>]*>", "PLACEHOLDER", command))
    choices = [[NUMBERS.get(a, a) for a in w.strip("[]").split("|") if a] for w in words if w.strip("[]") not in ("", "...")]
    return [list(argv) for argv in itertools.product(*choices)]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))._name_parser_map


def command_problem(command: DocCommand) -> str | None:
    """What is wrong with a documented command, or None: an unknown sub-command, an option it does not
    have (whole names only), or argparse's refusal. A fragment may leave out required arguments."""
    commands = _subcommands()
    for argv in argvs(command.text):
        if argv[0] not in commands:
            return f"{argv[0]!r} is not a sub-command ({', '.join(commands)})"
        known = {o for a in commands[argv[0]]._actions for o in a.option_strings}
        unknown = [w.split("=")[0] for w in argv if w.startswith("--") and w.split("=")[0] not in known]
        if unknown:
            return f"alexnet {argv[0]} has no {', '.join(unknown)}"
        said = io.StringIO()
        try:
            with contextlib.redirect_stderr(said):
                build_parser().parse_args(argv)
        except SystemExit:
            if command.whole or "the following arguments are required" not in said.getvalue():
                return f"{argv}: {said.getvalue().strip()}"
    return None


def all_doc_commands() -> list[DocCommand]:
    return [c for path in DOCS for c in doc_commands(path)]


def test_the_extraction_finds_the_documented_commands():
    """A guard against the next test passing on nothing: known lines of each kind are found."""
    found = {(c.text, c.whole) for c in all_doc_commands()}
    assert len(found) > 60, len(found)
    for text, whole in [("evaluate runs/X/best.pt [--data PATH] [--json]", True),  # a code block's line
                        ("train --nproc 4 --data /data/imagenet --batch-size 256", True),  # after torchrun -m
                        ("train --data DIR --preset owt --init-from owt.pt", True),  # after &&
                        ("train --resume runs/x --nproc 2", True),  # inside a printed error line
                        ("train --data /shared/imagenet --out /shared/runs/alexnet --batch-size 1024 --workers 8", True),
                        ("download imagenette|imagenette-320|imagenette-160|imagewoof --out DIR", False),  # wrapped span
                        ("train --config RUN/config.json --out NEW", False)]:
        assert (text, whole) in found, text


@pytest.mark.parametrize("command", all_doc_commands(), ids=lambda c: f"{c.where} {c.text[:40]}")
def test_every_documented_command_parses(command):
    problem = command_problem(command)
    assert problem is None, f"{command.where}: alexnet {command.text}: {problem}"


@pytest.mark.parametrize("line, said", [
    ("alexnet evaluate --checkpoint A.pt --tencrop", "alexnet evaluate has no --tencrop"),
    ("alexnet evaluate --checkpoint A.pt --ten", "alexnet evaluate has no --ten"),  # argparse alone takes the prefix
    ("alexnet predict cat.jpg --checkpoint A.pt --index i.safetensors", "alexnet predict has no --index"),  # retrieve's
    ("alexnet visualise filters A.pt", "'visualise' is not a sub-command"),
    ("alexnet export --out m.onnx", "required: CHECKPOINT or --checkpoint"),  # whole, in a code block
    ("alexnet train --epochs N --batch-size many", "--batch-size: expected a whole number"),
    ("alexnet download imagenette|imagenet --out DIR", "invalid choice: 'imagenet'"),
    ("alexnet evaluate A.pt \\\n    --tencrop", "alexnet evaluate has no --tencrop"),  # a continued line
])
def test_a_drifted_command_line_is_caught(tmp_path, line, said):
    """Each of these lines in a code block fails the check, naming what is wrong."""
    doc = tmp_path / "doc.md"
    doc.write_text(f"Some text.\n\n```bash\n{line}   # a comment\n```\n", encoding="utf-8")
    [command] = doc_commands(doc)
    assert command.where == "doc.md:4" and command.whole
    assert said in (command_problem(command) or "")


def test_a_fragment_in_the_prose_may_leave_out_required_arguments(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("`alexnet export --out m.pt2` writes plain ops; `alexnet prepare --size 64|big`.\n", encoding="utf-8")
    fragment, bad = doc_commands(doc)
    assert command_problem(fragment) is None
    assert "--size: expected a whole number" in command_problem(bad)


def _program_strings() -> list[tuple[str, str]]:
    """Every string constant of src/alexnet with its file:line; an f-string's values as '{}'."""
    found = []
    for path in sorted((ROOT / "src" / "alexnet").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            else:
                continue
            found.append((f"{path.relative_to(ROOT)}:{node.lineno}", text))
    return found


OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?![\w-])")


def named_option_problems(strings: list[tuple[str, str]]) -> list[str]:
    """The options that ``strings`` (file:line, text) name but no sub-command takes (but the top
    level's --version and torchrun's), and those after `alexnet CMD` that CMD does not take."""
    commands = _subcommands()
    options = {o for p in commands.values() for a in p._actions for o in a.option_strings} | {"--version"} | TORCHRUN | OTHER_TOOLS
    wrong = [f"{where}: {o}" for where, text in strings for o in OPTION.findall(text) if o not in options]
    for where, text in strings:
        for m in re.finditer(rf"alexnet ({'|'.join(commands)})\b([^;,)'`]*)", text):
            own = {o for a in commands[m.group(1)]._actions for o in a.option_strings}
            wrong += [f"{where}: alexnet {m.group(1)} ... {o}" for o in OPTION.findall(m.group(2)) if o not in own]
    return list(dict.fromkeys(wrong))  # an f-string's parts are walked as constants too


def test_every_option_the_program_names_exists():
    """Error messages, notes and help name options and commands to type: each option exists."""
    strings = _program_strings()
    assert any("--resume {}" in text for _, text in strings)  # the walk finds the messages, f-strings too
    wrong = named_option_problems(strings)
    assert not wrong, "options that the program names but does not take:\n" + "\n".join(wrong)


def test_a_message_naming_a_missing_option_is_caught():
    said = named_option_problems([("a.py:1", "reductions of the rate (--plateau-max-reductions)"),
                                  ("a.py:2", "continue with: alexnet evaluate --resume {}; or --no-{}"),
                                  ("a.py:3", "alexnet train --resume {} --nproc {}, then torchrun --nnodes 2")])
    assert said == ["a.py:1: --plateau-max-reductions", "a.py:2: alexnet evaluate ... --resume"]


# Python blocks that cannot run here, each with its reason (by the block's first line). None yet.
NOT_RUN: dict[str, str] = {}


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown file: the line of each one's first line, and its code."""
    text = path.read_text(encoding="utf-8")
    return [(_line_of(text, m.start(2)), m.group(2)) for m in FENCE.finditer(text) if m.group(1) == "python"]


def _comment_literal(code: str, line: int) -> object:
    """The Python literal that a line's trailing comment states (``# ['a', 'b']``), or Ellipsis."""
    comments = [t.string for t in tokenize.generate_tokens(io.StringIO(code).readline)
                if t.type == tokenize.COMMENT and t.start[0] == line]
    try:
        return ast.literal_eval(comments[0].lstrip("#").strip()) if comments else ...
    except (ValueError, TypeError, SyntaxError):
        return ...


@pytest.fixture
def readme_world(tmp_path, monkeypatch) -> Path:
    """The files README's Python block names, made in tmp_path (the current folder): a tiny
    Fashion-MNIST run at runs/fashion-mnist, an image folder DIR with train/ and val/ of classes
    a, b, c (among the five that reset_classifier names before evaluate matches them), cat.jpg and
    query.jpg; and torchvision's alexnet (seeded, not the trained weights: no download) where
    torch.hub caches the published file, its digest the expected one."""
    from alexnet import pretrained
    from alexnet.config import resolve_config
    from alexnet.train import fit

    monkeypatch.chdir(tmp_path)
    fit(resolve_config(None, {"data": str(make_tiny_fmnist(tmp_path / "fmnist")), "out": "runs/fashion-mnist",
                              "epochs": 1, "workers": 0, "amp": "none", "seed": 0,
                              "model_options": {"widths": [8, 16, 16, 16, 16], "fc_width": 32}}), log=lambda s: None)
    for split in ("train", "val"):
        for i, folder in enumerate(sorted(make_image_folder(tmp_path / "DIR" / split).iterdir())):
            folder.rename(folder.parent / "abc"[i])
    shutil.copy(next((tmp_path / "DIR" / "val" / "a").iterdir()), "cat.jpg")
    shutil.copy(next((tmp_path / "DIR" / "val" / "b").iterdir()), "query.jpg")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import torchvision

    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), hub / "alexnet-owt-7be5be79.pth")
    digest = ("sha256", hashlib.sha256((hub / "alexnet-owt-7be5be79.pth").read_bytes()).hexdigest())
    monkeypatch.setitem(pretrained.PRETRAINED, "alexnet_owt", dataclasses.replace(pretrained.PRETRAINED["alexnet_owt"], digest=digest))
    return tmp_path


def _given_x(ns: dict) -> torch.Tensor:
    """README's ``x``, as the text after the block makes it: model_input of uint8 images."""
    from alexnet.data.loaders import model_input

    p = ns["ready"].preprocess
    side = p.size or p.test_crop
    images = torch.randint(0, 256, (2, p.channels, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return model_input(images, torch.arange(2), p, train=False)


# Names a block uses without defining them, where the README's text says what they are.
GIVEN: dict[str, Callable[[dict], object]] = {"x": _given_x}


def run_block(code: str, where: str, first_line: int) -> dict:
    """Run ``code`` statement by statement; a failure names the document's line. An expression whose
    line ends in a comment that is a Python literal must equal it. Returns the namespace."""
    ns: dict = {"__name__": "__readme__"}
    for stmt in ast.parse(code).body:
        used = {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        for name in sorted(used & GIVEN.keys() - ns.keys()):
            ns[name] = GIVEN[name](ns)
        line, text = first_line + stmt.lineno - 1, ast.get_source_segment(code, stmt)
        try:
            if isinstance(stmt, ast.Expr):
                value = eval(compile(ast.Expression(stmt.value), where, "eval"), ns)
            else:
                exec(compile(ast.Module([stmt], []), where, "exec"), ns)
                value = ...
        except Exception as e:
            pytest.fail(f"{where}:{line}: {text}\n  -> {type(e).__name__}: {e}")
        stated = _comment_literal(code, stmt.end_lineno)
        if value is not ... and stated is not ...:
            assert value == stated, f"{where}:{line}: {text} gave {value!r}, the comment says {stated!r}"
    return ns


def test_only_blocks_that_exist_are_listed_as_not_run():
    firsts = {code.splitlines()[0] for path in DOCS for _, code in python_blocks(path)}
    assert not NOT_RUN.keys() - firsts, NOT_RUN.keys() - firsts


def test_the_python_blocks_run_and_do_what_their_comments_say(readme_world):
    """Every ```python block of the docs runs (README's is the one so far). Beyond running, README's
    predict gives the keys its comment lists, and its resumed fit trained 'five more epochs'
    (metrics.jsonl, a line per epoch, holds epochs 1 to 10)."""
    spaces = {}
    for path in DOCS:
        for first_line, code in python_blocks(path):
            if code.splitlines()[0] not in NOT_RUN:
                spaces[path.name, first_line] = run_block(code, str(path.relative_to(ROOT)), first_line)
    [ns] = [ns for (name, _), ns in spaces.items() if name == "README.md"]
    [result] = ns["predict"](ns["ready"], ["cat.jpg"], top=5)
    assert set(result) == {"path", "top", "label"} and len(result["top"]) == 5
    assert set(result["top"][0]) == {"class", "index", "probability"}
    lines = (readme_world / "runs" / "x" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, 11))


def test_a_block_without_its_import_fails_naming_the_line(readme_world):
    """Last session's defect: README's block used PIL.Image without importing it."""
    [(first_line, code)] = python_blocks(ROOT / "README.md")
    broken = code.replace("import PIL.Image\n", "")
    with pytest.raises(pytest.fail.Exception, match=r"(?s)README.md:\d+: logits = .*NameError: name 'PIL' is not defined"):
        run_block(broken, "README.md", first_line)


def _layout_misses(readme: str) -> list[str]:
    """The files of src/alexnet (modules, C kernels) that README's Layout section does not name."""
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([\w.]+)`", section))
    package = ROOT / "src" / "alexnet"
    files = [p for ext in ("*.py", "*.c") for p in package.rglob(ext) if "__pycache__" not in p.parts]
    return sorted(str(p.relative_to(package)) for p in files if p.name not in named)


def test_the_layout_names_every_module():
    """README's Layout left out 28 files of src/alexnet (distributed.py, optim.py, resume.py, infer.py, data/cifar.py, ...)."""
    assert _layout_misses((ROOT / "README.md").read_text(encoding="utf-8")) == []


def test_a_module_left_out_of_the_layout_is_caught():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert _layout_misses(readme.replace("`optim.py`", "optim")) == ["optim.py"]
