"""airspeed velocity (asv) benchmarks of fastgd; configuration in ``asv.conf.json``.

Modules:

* ``bench_optimizers``: fastgd's optimizer classes, time per step (``time_step``) and
  effective bandwidth (``track_bandwidth``, GB/s) for every algorithm of
  ``fastgd.bench.CASES`` x size (1_000, 100_000, 2**24) x dtype (float32, float64), and the
  same for one Adam step over a many-tensor model (161 float32 arrays, ~17M elements).
* ``bench_baselines``: the memory roofline (``fastgd.bench.roofline_step``), plain NumPy
  (``fastgd.bench._numpy_step``) and torch.optim (``fastgd.bench._torch_stepper``; skipped
  without torch) on the same cases.
* ``bench_startup``: ``import fastgd`` and the first Adam step in a fresh process, with a
  warm and with a cold on-disk kernel cache.
* ``common``: the grid and helpers shared by the above.

Run from the repository root, in an environment where ``fastgd`` is importable (``pip install
-e .``; or, without installing, set ``ASV_PYTHONPATH`` to the repository root -- asv drops
``PYTHONPATH``)::

    asv machine --yes
    asv run --python=same --quick --show-stderr                      # smoke test, one sample
    asv run --python=same --set-commit-hash $(git rev-parse HEAD)    # full run, saved
    asv publish && asv preview                                       # HTML report (.asv/html)

``--bench REGEX`` selects benchmarks; for parameterized ones the regex is matched against
``name(param, ...)``, e.g. ``--bench "OptimizerStep.*'adam', 16777216"``.
"""
