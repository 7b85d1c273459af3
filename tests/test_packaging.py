"""What a user gets from the built distributions: the wheel holds the package and nothing else, and
the sdist holds the whole source release (its tests runnable: conftest.py and what they read).

Built with setuptools' own backend in a copy of the sources (a few seconds), so the checkout gets no
build/ or egg-info; the expected file lists are walked from the checkout here, not taken from setuptools.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What a source release is made of (README, pyproject and the folders the tests and README use).
SOURCE_DIRS = ("src", "tests", "benchmarks", "scripts", "docs")
SOURCE_FILES = ("pyproject.toml", "README.md", "LICENSE", "hubconf.py", "MANIFEST.in")
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache")


def _walk(root: Path, folder: str) -> set[str]:
    """Every file under ``root/folder``, relative to root, without the caches SKIP leaves out of the copy
    (a tests/.pytest_cache, of pytest run from inside tests/, was counted as missing from the sdist)."""
    return {p.relative_to(root).as_posix() for p in (root / folder).rglob("*")
            if p.is_file() and not {"__pycache__", ".pytest_cache"} & set(p.parts) and ".egg-info" not in str(p)
            and p.suffix != ".pyc"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    setuptools = pytest.importorskip("setuptools", reason="building the distributions needs setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:  # pyproject's build requirement
        pytest.skip(f"pyproject.toml needs setuptools>=77 to build; this one has {setuptools.__version__}")
    copy = tmp_path_factory.mktemp("pkg") / "src-copy"
    copy.mkdir()
    for name in SOURCE_DIRS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, copy / name, ignore=SKIP)
    for name in SOURCE_FILES:
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, copy / name)
    code = ("from setuptools import build_meta as b; "
            "s = b.build_sdist('dist'); w = b.build_wheel('dist'); print('BUILT', s, w)")
    done = subprocess.run([sys.executable, "-c", code], cwd=copy, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # setuptools logs to stdout too: the names are on the last line
    _, sdist_name, wheel_name = done.stdout.strip().splitlines()[-1].split()
    return copy / "dist" / sdist_name, copy / "dist" / wheel_name, done.stderr


def test_wheel_holds_the_package_and_nothing_else(built):
    _, wheel, _ = built
    names = set(zipfile.ZipFile(wheel).namelist())
    package = {n for n in names if ".dist-info/" not in n}
    expected = {n.removeprefix("src/") for n in _walk(ROOT, "src/alexnet")}
    assert package == expected
    assert {"alexnet/py.typed", "alexnet/_kernels/lrn.c", "alexnet/_kernels/augment.c"} <= package
    # MIT asks for its notice to travel with every copy: the wheel's metadata carries the file
    licenses = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert len(licenses) == 1 and zipfile.ZipFile(wheel).read(licenses[0]) == (ROOT / "LICENSE").read_bytes()


def test_sdist_holds_a_runnable_source_release(built):
    sdist, _, _ = built
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {n.removeprefix(top + "/") for n in tar.getnames()}
    expected = set().union(*(_walk(ROOT, d) for d in SOURCE_DIRS if (ROOT / d).is_dir()))
    expected |= {f for f in SOURCE_FILES if (ROOT / f).is_file()}
    missing = sorted(expected - names)
    assert not missing, f"missing from the sdist: {missing[:10]}"
    assert "tests/conftest.py" in names  # without it no test module that imports it can be collected


def test_build_uses_no_deprecated_metadata(built):
    """setuptools' deprecations carry a date after which builds stop (a license TOML table: 2027-02-18),
    and pyproject's build requirement takes the newest setuptools: none may be left."""
    *_, log = built
    assert "SetuptoolsDeprecationWarning" not in log, log[-1500:]
