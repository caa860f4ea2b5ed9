"""Write kernels generated from the rules to a real module file and import it.

Numba's on-disk cache (``cache=True``) works only for functions defined in a source file, and
it does not notice when an inlined function in *another* file changes. So the generated
module is written to a file whose name carries a hash of its own text, of the fastgd modules
it imports (and so compiles in: ``rules.py``, ``halfprec.py``, ... -- read off its own
``from fastgd...`` lines, so that CPU kernels do not depend on CUDA-only modules) and of the
Numba version: any change gives a new file, hence a fresh cache, and an unchanged one is
reused by every later process (no recompilation).

The file lives in ``$FASTGD_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastgd`` (``~/.cache/fastgd``),
else the system temporary directory; Numba keeps its compiled kernels beside it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType

import numba


def cache_dir() -> Path:
    """Directory for generated kernel modules (created if needed, must be writable)."""
    explicit = os.environ.get("FASTGD_CACHE_DIR")
    candidates = [Path(explicit)] if explicit else []
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidates += [Path(xdg) / "fastgd", Path(tempfile.gettempdir()) / "fastgd"]
    for path in candidates:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return path
    raise OSError(f"no writable cache directory among {[str(p) for p in candidates]}")


_LOCK = threading.RLock()  # (a generated module may generate another as it loads)
_IMPORT = re.compile(r"^from fastgd(?:\.(\w+))? import ([\w, ]+)$", re.M)


def compiled_in(source: str) -> list[Path]:
    """The fastgd modules that generated ``source`` imports (``from fastgd import rules``,
    ``from fastgd.chunks import locate``): a change to one of them must recompile it."""
    names = set()
    for module, imported in _IMPORT.findall(source):
        names.update([module] if module else (n.strip() for n in imported.split(",")))
    return [Path(__file__).with_name(f"{name}.py") for name in sorted(names)]


def load_generated(prefix: str, source: str) -> ModuleType:
    """Import ``source`` as a module from a content-addressed file under :func:`cache_dir`.

    Thread-safe: concurrent first calls import the module once."""
    with _LOCK:
        return _load_generated(prefix, source)


def _load_generated(prefix: str, source: str) -> ModuleType:
    digest = hashlib.sha256()
    for part in (source, *(path.read_text() for path in compiled_in(source)),
                 numba.__version__):
        digest.update(part.encode())
    path = cache_dir() / f"{prefix}_{digest.hexdigest()[:16]}.py"
    if not path.exists():
        # Write then rename, so another process never imports a half-written file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write(source)
        os.replace(tmp, path)
    # Numba's cache finds the module again by name when it loads a kernel: register it.
    name = f"_fastgd_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
