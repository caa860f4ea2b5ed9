"""Compiled kernels are cached on disk: a second process loads them instead of compiling.

Two fresh Python processes share an empty ``FASTGD_CACHE_DIR``. Each does one Adam step on
float32 and float64 arrays of 10 elements (serial kernel) and of 100000 elements (parallel
kernel), checks the numbers, and prints Numba's cache statistics of both kernels as JSON. The
first process must have compiled (cache misses); the second must have loaded every kernel it
used from the cache (hits only, no misses).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fastgd

CHILD = r"""
import json
import numpy as np
import fastgd
from fastgd import algorithms, cpu

report = {"threshold": cpu.PARALLEL_THRESHOLD, "steps": []}
for dtype in (np.float32, np.float64):
    for n in (10, 100_000):
        p = np.ones(n, dtype)
        g = np.full(n, 0.5, dtype)
        g[::2] = -2.0
        m, v = np.zeros(n, dtype), np.zeros(n, dtype)
        fastgd.functional.adam(p, g, m, v, step=1, lr=0.1)
        # first Adam step from zero state: p -= lr * g / (|g| + eps') -> 1 -+ 0.1
        expected = np.where(g > 0, 0.9, 1.1)
        report["steps"].append({
            "dtype": np.dtype(dtype).name, "n": n,
            "ok": bool(np.allclose(p, expected, rtol=1e-5, atol=0)),
            "m_ok": bool(np.allclose(m, 0.1 * g, rtol=1e-6)),
        })
kernels = {}
for parallel in (False, True):
    stats = cpu.kernel(algorithms.ADAM.spec, (), parallel).stats
    kernels["parallel" if parallel else "serial"] = {
        "hits": {str(sig): count for sig, count in stats.cache_hits.items()},
        "misses": {str(sig): count for sig, count in stats.cache_misses.items()},
        "cache_path": str(stats.cache_path),
    }
report["kernels"] = kernels
print("REPORT " + json.dumps(report))
"""


def run_child(cache_dir: Path) -> dict:
    env = dict(os.environ)
    root = str(Path(fastgd.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env["FASTGD_CACHE_DIR"] = str(cache_dir)
    for var in ("NUMBA_CACHE_DIR", "NUMBA_DISABLE_JIT", "FASTGD_PARALLEL_THRESHOLD"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert len(lines) == 1, proc.stdout[-2000:]
    return json.loads(lines[0][len("REPORT "):])


def total(counter: dict) -> int:
    return sum(counter.values())


def dtypes_of(counter: dict) -> set[str]:
    return {name for name in ("float32", "float64") if any(name in sig for sig in counter)}


def test_second_process_loads_every_kernel_from_the_cache(tmp_path):
    cache_dir = tmp_path / "fastgd-cache"
    first = run_child(cache_dir)
    assert first["threshold"] <= 100_000, "100000 elements no longer reach the parallel kernel"
    for report in (first,):
        assert all(s["ok"] and s["m_ok"] for s in report["steps"]), report["steps"]
    # the cache was cold: both kernels were compiled, for both dtypes
    for kind in ("serial", "parallel"):
        k = first["kernels"][kind]
        assert total(k["misses"]) >= 2, (kind, k)
        assert dtypes_of(k["misses"]) == {"float32", "float64"}, (kind, k)
        assert Path(k["cache_path"]).resolve().is_relative_to(cache_dir.resolve()), k
    cached = list(cache_dir.rglob("*.nbi"))
    assert cached, f"no Numba index files under {cache_dir}"
    files_after_first = {p: p.stat().st_mtime_ns for p in cache_dir.rglob("*")}

    second = run_child(cache_dir)
    assert all(s["ok"] and s["m_ok"] for s in second["steps"]), second["steps"]
    assert second["steps"] == first["steps"]
    for kind in ("serial", "parallel"):
        k = second["kernels"][kind]
        assert k["misses"] == {}, f"{kind} kernel recompiled in the second process: {k}"
        assert total(k["hits"]) >= 2, (kind, k)
        assert dtypes_of(k["hits"]) == {"float32", "float64"}, (kind, k)
    # nothing was regenerated or rewritten by the second process
    files_after_second = {p: p.stat().st_mtime_ns for p in cache_dir.rglob("*")}
    assert files_after_second == files_after_first


def test_editing_a_compiled_in_module_gives_a_new_kernel_module(tmp_path, monkeypatch):
    from fastgd import codegen

    monkeypatch.setenv("FASTGD_CACHE_DIR", str(tmp_path))
    inlined = tmp_path / "inlined.py"
    monkeypatch.setattr(codegen, "compiled_in", lambda source: [inlined])
    names = []
    for text in ("A = 1\n", "A = 1\n", "A = 2\n"):
        inlined.write_text(text)
        names.append(codegen.load_generated("probe", "X = 3\n").__name__)
    assert names[0] == names[1] != names[2]
    assert {p.name for p in tmp_path.glob("probe_*.py")} == {
        n.removeprefix("_fastgd_") + ".py" for n in names}


def test_kernel_cache_keys_cover_exactly_the_modules_compiled_in():
    """A kernel module's hash covers the fastgd modules its source imports: a CPU kernel
    depends on no CUDA-only module (an edit there does not recompile the CPU kernels)."""
    from fastgd import codegen, cpu
    from fastgd.kernelgen import split_storage

    base = {"rules.py", "halfprec.py", "chunks.py", "pointers.py"}
    # (8-bit kernels also run the full-precision loop of their variant and the codec)
    eight_bit = base | {"algorithms.py", "cpu.py", "quantization.py"}
    for spec, present, storage in cpu.all_variants():
        names = {p.name for p in codegen.compiled_in(cpu.generate_source(spec, present, storage))}
        expected = eight_bit if split_storage(storage)[2] == "8bit" else base
        assert names == expected, (spec.name, storage)
    try:
        from fastgd import cuda
    except ImportError:  # numba-cuda is an optional extra
        return
    names = {p.name for p in codegen.compiled_in(cuda.generate_source())}
    assert names == {"rules.py", "device_pointers.py", "halfprec.py", "quantization.py",
                     "warps.py"}


def test_cuda_modules_import_without_a_cycle():
    """``fastgd.device_pointers`` imports on its own (``fastgd.cuda`` imports it, not the
    other way round)."""
    code = "import fastgd.device_pointers, sys; assert 'fastgd.cuda' not in sys.modules"
    env = dict(os.environ)
    root = str(Path(fastgd.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0 or "numba.cuda" in result.stderr, result.stderr
