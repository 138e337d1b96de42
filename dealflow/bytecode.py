"""Bytecode for the modules the workflow sandbox re-imports on every run.

The SDK sandbox imports the workflow module afresh for each workflow run it
builds: every deal a new worker rebuilds after a crash or restart, every deal
evicted from the cache, every history an auditor replays. Without a `.pyc`
that means compiling `workflows/deal.py` from source each time, most of the
CPU of a rebuild (cProfile on the committed histories; README, Performance).
Where PYTHONDONTWRITEBYTECODE is set (containers, CI, this project's own
machines) Python never writes one, but it still reads one: so the processes
that run the sandbox write it once at start.
"""

from __future__ import annotations

import importlib.util
import logging
import py_compile
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
        for src in sources:
            cached = Path(importlib.util.cache_from_source(str(src)))
            try:
                if cached.exists() and cached.stat().st_mtime >= src.stat().st_mtime:
                    continue
                py_compile.compile(str(src), cfile=str(cached), doraise=True)
                written += 1
            except (OSError, py_compile.PyCompileError) as e:
                log.warning("no cached bytecode for %s (%s): sandboxed runs compile it", src, e)
    return written
