"""Reference points for ``bench_optimizers``, on the same cases and arrays.

* ``Roofline``: ``fastgd.bench.roofline_step``, a fused copy kernel that reads and writes the
  same arrays as the algorithm's step with trivial arithmetic: the memory-bound floor.
* ``NumpyStep``: ``fastgd.bench.NUMPY_STEPS``, the update as a careful NumPy user writes it
  (in place where NumPy allows, with its temporaries), for the algorithms that have one.
* ``TorchStep``: ``torch.optim`` through ``fastgd.bench._torch_stepper``, fused where torch has
  a fused CPU step (SGD, Adagrad, Adam, AdamW), else foreach; skipped without torch. Only these
  benchmarks import torch (in their ``setup``), so every other figure is taken in a process
  without torch (and its OpenMP runtime) loaded, as a NumPy user runs fastgd.

The baselines' bandwidth is ``bench.bytes_per_step`` over their ``time_step``; only the
roofline measures it (``track_bandwidth``, GB/s), as the reference bandwidth of the machine.
"""

from __future__ import annotations

from fastgd import bench

from . import common


class Roofline(common._CaseStep):
    """The memory roofline of one step of ``algorithm`` on one array."""

    def setup(self, algorithm: str, size: int, dtype: str) -> None:
        self.step = common.cached(("roofline", algorithm, size, dtype), lambda: (
            common.roofline_stepper(algorithm, *common.pair(size, dtype))))

    def track_bandwidth(self, algorithm: str, size: int, dtype: str) -> float:
        return common.gbps(self.step, bench.bytes_per_step(bench.CASES[algorithm], size, dtype))

    track_bandwidth.unit = "GB/s"


class NumpyStep(common._CaseStep):
    """One step of ``algorithm`` in plain NumPy on one array."""

    rounds = 1  # a reference, not a regression target: one round is enough

    def setup(self, algorithm: str, size: int, dtype: str) -> None:
        self.step = common.cached(("numpy", algorithm, size, dtype), lambda: (
            common.numpy_stepper(algorithm, *common.pair(size, dtype))))


class TorchStep(common._CaseStep):
    """One ``torch.optim`` step of ``algorithm`` on one tensor (fused, else foreach).

    The smallest and the largest size only: every one of these processes imports torch and
    takes torch.optim's first step (about 5 s on a 2-core machine), which would otherwise
    dominate the suite's run time.
    """

    params = [common.ALGORITHMS, [common.SIZES[0], common.SIZES[-1]], common.DTYPES]
    rounds = 1  # a reference, not a regression target: one round is enough

    def setup(self, algorithm: str, size: int, dtype: str) -> None:
        common.require_torch()
        self.step = common.cached(("torch", algorithm, size, dtype), lambda: (
            common.torch_stepper(algorithm, *common.pair(size, dtype))))


class ManyTensorRoofline(common._Step):
    """The memory roofline of an Adam step over the many-tensor model: the copy kernel over
    one float32 array of the model's total size (as ``fastgd bench`` does)."""

    def setup(self) -> None:
        self.step = common.cached("roofline-many", lambda: common.roofline_stepper(
            "adam", *common.pair(common.many_tensor_elements(), "float32")))

    def track_bandwidth(self) -> float:
        return common.gbps(self.step, common.many_tensor_bytes())

    track_bandwidth.unit = "GB/s"


class ManyTensorNumpyAdam(common._Step):
    """A plain NumPy Adam step over the many-tensor model, array after array."""

    rounds = 1  # a reference, not a regression target: one round is enough

    def setup(self) -> None:
        self.step = common.cached("numpy-many", lambda: common.numpy_stepper(
            "adam", *common.many_tensor_arrays()))


class ManyTensorTorchAdam(common._Step):
    """One ``torch.optim.Adam`` step (fused) over the many-tensor model's 161 tensors."""

    rounds = 1  # a reference, not a regression target: one round is enough

    def setup(self) -> None:
        common.require_torch()
        self.step = common.cached("torch-many", lambda: common.torch_stepper(
            "adam", *common.many_tensor_arrays()))
