"""The workflow module's bytecode is cached even where PYTHONDONTWRITEBYTECODE is set."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

import workflows
from dealflow.bytecode import cache_bytecode, cache_imported_bytecode


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # as under PYTHONDONTWRITEBYTECODE=1
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write
    return module


def test_a_package_gets_bytecode_once_and_again_when_its_source_changes(tmp_path: Path) -> None:
    pkg = tmp_path / "wfpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "flow.py").write_text("X = 1\n")
    module = _load(pkg / "__init__.py", "wfpkg")
    cached = [
        Path(importlib.util.cache_from_source(str(pkg / n))) for n in ("__init__.py", "flow.py")
    ]
    assert not any(c.exists() for c in cached), "the loader wrote bytecode itself"

    assert cache_bytecode(module) == 2
    assert all(c.exists() for c in cached)
    assert cache_bytecode(module) == 0, "fresh bytecode is not written again"

    later = cached[1].stat().st_mtime + 10
    os.utime(pkg / "flow.py", (later, later))
    assert cache_bytecode(module) == 1


def test_an_unwritable_cache_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "ro_flow.py").write_text("X = 1\n")
    module = _load(tmp_path / "ro_flow.py", "ro_flow")
    # A file where the cache directory should be: no write can succeed, even as root.
    (tmp_path / "__pycache__").write_text("")
    assert cache_bytecode(module) == 0
    assert "no cached bytecode" in caplog.text


def test_the_deal_workflow_module_has_current_bytecode() -> None:
    # conftest caches it as worker.py does; the sandbox then never compiles it.
    src = Path(workflows.__file__).parent / "deal.py"
    cached = Path(importlib.util.cache_from_source(str(src)))
    assert cached.exists() and cached.stat().st_mtime >= src.stat().st_mtime


def test_the_imported_modules_of_a_package_get_bytecode(tmp_path: Path) -> None:
    pkg = tmp_path / "bcpkg"
    (pkg / "sub").mkdir(parents=True)
    for rel in ("__init__.py", "sub/__init__.py", "sub/used.py", "unused.py"):
        (pkg / rel).write_text("X = 1\n")
    sys.path.insert(0, str(tmp_path))
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # as under PYTHONDONTWRITEBYTECODE=1
    try:
        importlib.import_module("bcpkg.sub.used")
    finally:
        sys.dont_write_bytecode = dont_write
        sys.path.remove(str(tmp_path))

    def cached(rel: str) -> bool:
        return Path(importlib.util.cache_from_source(str(pkg / rel))).exists()

    assert not cached("sub/used.py"), "the loader wrote bytecode itself"
    try:
        assert cache_imported_bytecode("bcpkg") == 3
        assert all(cached(r) for r in ("__init__.py", "sub/__init__.py", "sub/used.py"))
        assert not cached("unused.py"), "a module never imported is left alone"
        assert cache_imported_bytecode("bcpkg") == 0, "fresh bytecode is not written again"
    finally:
        for name in [m for m in sys.modules if m.partition(".")[0] == "bcpkg"]:
            del sys.modules[name]
