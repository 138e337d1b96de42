"""What ships: the wheel and the production image hold DealFlow's code only, never
the lender simulator (`sim`), the benchmarks (`bench`) or the tests.

The wheel is really built, offline (`pip wheel --no-build-isolation`, with the
setuptools of the venv), from a copy of the tree that still has `sim/`, `bench/`
and `tests/` in it, so leaving them out is proved rather than assumed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOT_SHIPPED = ("sim", "bench", "tests")
SHIPPED_PACKAGES = ("dealflow", "workflows", "activities")
SHIPPED_SCRIPTS = ("worker.py", "starter.py")
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".data",
    "build",
    "dist",
    "__pycache__",
    "*.pyc",
    "*.egg-info",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
)


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The file names inside a wheel built from a copy of the source tree."""
    work = tmp_path_factory.mktemp("packaging")
    tree = work / "tree"
    shutil.copytree(ROOT, tree, ignore=COPY_IGNORE, symlinks=True)
    for name in NOT_SHIPPED:
        assert (tree / name / "__init__.py").exists(), f"the copy must still hold {name}/"
    dist = work / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(tree)]
        + ["--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = dist.glob("dealflow-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_wheel_holds_no_simulator_bench_or_tests(wheel_names: list[str]) -> None:
    top_level = {name.split("/", 1)[0] for name in wheel_names}
    assert not top_level & set(NOT_SHIPPED), sorted(top_level)
    assert not [name for name in wheel_names if "lender_sim" in name or "/sim/" in name]


def test_wheel_holds_the_shipped_code(wheel_names: list[str]) -> None:
    names = set(wheel_names)
    for package in SHIPPED_PACKAGES:
        assert f"{package}/__init__.py" in names
    for script in SHIPPED_SCRIPTS:
        assert script in names
    assert "dealflow/devstack/cli.py" in names
    # Package data rides along: the migration scripts and the typing marker.
    assert "dealflow/py.typed" in names
    assert any(
        re.fullmatch(r"dealflow/storage/migrations/versions/\w+\.py", name) for name in names
    )


def _copied_sources(dockerfile: Path) -> list[str]:
    """Every source path a Dockerfile's COPY lines take from the build context."""
    sources: list[str] = []
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if not words or words[0].upper() != "COPY":
            continue
        if any(word.startswith("--from=") for word in words):
            continue  # from an earlier stage, not from the tree
        args = [word for word in words[1:] if not word.startswith("--")]
        sources += args[:-1]  # the last one is the destination
    return sources


def test_production_image_copies_no_simulator_bench_or_tests() -> None:
    sources = _copied_sources(ROOT / "docker" / "Dockerfile")
    assert "dealflow" in sources  # the parser did read the COPY lines
    for source in sources:
        top = Path(source).parts[0]
        assert top not in NOT_SHIPPED, f"docker/Dockerfile copies {source}"
        assert top not in (".", "*"), f"docker/Dockerfile copies the whole tree ({source})"
    text = (ROOT / "docker" / "Dockerfile").read_text(encoding="utf-8")
    assert not re.search(r"\bsim\.lender\b|lender_sim", text)


def test_simulator_has_its_own_development_image() -> None:
    dockerfile = ROOT / "docker" / "lender-sim.Dockerfile"
    assert "sim" in _copied_sources(dockerfile)
    compose = (ROOT / "docker" / "compose.yaml").read_text(encoding="utf-8")
    assert "dockerfile: docker/lender-sim.Dockerfile" in compose
