"""Bytecode for the modules the workflow sandbox re-imports on every run.

The SDK sandbox imports the workflow module afresh for each workflow run it
builds: every deal a new worker rebuilds after a crash or restart, every deal
evicted from the cache, every history an auditor replays. Without a `.pyc`
that means compiling `workflows/deal.py` from source each time, most of the
CPU of a rebuild (cProfile on the committed histories; README, Performance).
Where PYTHONDONTWRITEBYTECODE is set (containers, CI, this project's own
machines) Python never writes one, but it still reads one: so the processes
that run the sandbox write it once at start.

A worker started again after a crash imports DealFlow's own modules from
source for the same reason (2.2 of its 2.3 s of start-up CPU on this machine
is imports): once polling, the worker writes the bytecode of the modules it
imported, so the next start of the same code only reads it.
"""

from __future__ import annotations

import importlib.util
import logging
import py_compile
import sys
from pathlib import Path
from types import ModuleType

log = logging.getLogger("dealflow.bytecode")


def cache_bytecode(*modules: ModuleType) -> int:
    """Compile each module (a package: each of its .py files) where its cached
    bytecode is missing or older than the source. Returns how many were written.
    A read-only install only costs the speed-up: it is logged, never raised."""
    written = 0
    for module in modules:
        path = Path(module.__file__ or "")
        sources = sorted(path.parent.glob("*.py")) if path.name == "__init__.py" else [path]
        written += sum(_compile(src) for src in sources)
    return written


def cache_imported_bytecode(*packages: str) -> int:
    """Compile, where missing or stale, the source of every module of these
    top-level packages that this process has imported. Returns how many were written."""
    sources = {
        Path(str(m.__file__))
        for name, m in list(sys.modules.items())
        if name.partition(".")[0] in packages
        and getattr(m, "__file__", None)
        and str(m.__file__).endswith(".py")
    }
    return sum(_compile(src) for src in sorted(sources))


def _compile(src: Path) -> bool:
    cached = Path(importlib.util.cache_from_source(str(src)))
    try:
        if cached.exists() and cached.stat().st_mtime >= src.stat().st_mtime:
            return False
        py_compile.compile(str(src), cfile=str(cached), doraise=True)
    except (OSError, py_compile.PyCompileError) as e:
        log.warning("no cached bytecode for %s (%s): it is compiled at every import", src, e)
        return False
    return True
