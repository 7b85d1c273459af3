"""The public API documents itself: every public function, method and class in src/alexnet has a
docstring (what ``help()`` and ``python -m pydoc`` show) and type hints on its parameters and return.

Read with ``ast`` from the source files: nothing is imported (no torch, no Triton), so the check
takes a fraction of a second and covers modules this machine could not import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "alexnet"
Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _public(tree: ast.Module) -> Iterator[tuple[str, Definition]]:
    """(qualified name, node) of each module-level function and class not named with a leading
    underscore, and of each method of such a class, whatever its name (:func:`_each` picks).
    Nested functions and the methods of private classes are private to their parent."""
    for node in tree.body:
        if not isinstance(node, Definition) or node.name.startswith("_"):
            continue
        yield node.name, node
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield f"{node.name}.{item.name}", item


def _each(dunders: bool) -> Iterator[tuple[str, Definition]]:
    """``file:line name`` and node of every public definition in the package's source files; with
    ``dunders``, special methods such as ``__init__`` and ``__getitem__`` too."""
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, node in _public(tree):
            last = name.rsplit(".", 1)[-1]
            if last.startswith("_") and not (dunders and last.startswith("__") and last.endswith("__")):
                continue
            yield f"{path.relative_to(SRC.parent)}:{node.lineno} {name}", node


def test_every_public_function_method_and_class_has_a_docstring() -> None:
    missing = [where for where, node in _each(dunders=False) if not ast.get_docstring(node)]
    assert not missing, f"{len(missing)} public definitions without a docstring:\n" + "\n".join(missing)


def _unannotated(node: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> list[str]:
    """The parameters of ``node`` without a type hint (a method's first, self or cls, needs none;
    a staticmethod's first is a parameter like any other), and "return" if its return has none."""
    args = node.args
    params = [*args.posonlyargs, *args.args, *args.kwonlyargs, *filter(None, (args.vararg, args.kwarg))]
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list)
    if method and not static and params:
        params = params[1:]
    return [p.arg for p in params if p.annotation is None] + ["return"] * (node.returns is None)


def test_every_public_function_and_method_has_type_hints() -> None:
    missing = []
    for where, node in _each(dunders=True):
        if isinstance(node, ast.ClassDef):
            continue
        bare = _unannotated(node, method="." in where.split(" ", 1)[1])
        if bare:
            missing.append(f"{where}: {', '.join(bare)}")
    assert not missing, f"{len(missing)} public functions without full type hints:\n" + "\n".join(missing)


def test_the_check_sees_the_package() -> None:
    """A moved source tree would make the checks above pass on nothing."""
    names = {where.split(" ", 1)[1] for where, _ in _each(dunders=True)}
    assert {"create_model", "AlexNet", "AlexNet.forward", "AlexNet.__init__", "load", "cmd_train"} <= names
