"""fastgd's optimizer classes: time per step and effective bandwidth.

Effective bandwidth (``track_bandwidth``, GB/s, higher is better; asv itself treats every
increase as a regression, so read its GB/s comparisons the other way round) is
``fastgd.bench.bytes_per_step`` -- param and states read and written once, grad read once --
over the median time of a step, measured inside the benchmark. ``setup`` builds the arrays
and the optimizer and takes one step, so kernel compilation (or loading from the disk cache)
and state allocation stay out of every figure.
"""

from __future__ import annotations

from fastgd import bench

from . import common


class OptimizerStep(common._CaseStep):
    """One ``opt.step(grads)`` of a fastgd optimizer class (``fastgd.bench.CASES``: torch's
    defaults, SGD with momentum 0.9) on one array of ``size`` elements."""

    def setup(self, algorithm: str, size: int, dtype: str) -> None:
        self.step = common.cached(("fastgd", algorithm, size, dtype), lambda: (
            common.fastgd_stepper(algorithm, *common.pair(size, dtype))))

    def track_bandwidth(self, algorithm: str, size: int, dtype: str) -> float:
        return common.gbps(self.step, bench.bytes_per_step(bench.CASES[algorithm], size, dtype))

    track_bandwidth.unit = "GB/s"


class ManyTensorAdam(common._Step):
    """One ``fastgd.Adam.step`` over the many-tensor model: 161 float32 arrays of
    ``fastgd.bench.many_tensor_sizes()`` (log-normal sizes, ~17M elements, the largest 2.4M,
    fixed seed), so per-array overheads count too."""

    def setup(self) -> None:
        self.step = common.cached("fastgd-many", lambda: common.fastgd_stepper(
            "adam", *common.many_tensor_arrays()))

    def track_bandwidth(self) -> float:
        return common.gbps(self.step, common.many_tensor_bytes())

    track_bandwidth.unit = "GB/s"



class LowPrecisionState(common._Step):
    """One ``opt.step(grads)`` with bfloat16 or 8-bit optimizer state
    (``state_precision``), float32 parameters: the algorithms bitsandbytes ships 8-bit."""

    params = [["adamw", "adam", "sgd", "rmsprop", "adagrad"], [100_000, 2**24],
              ["bf16", "8bit"]]
    param_names = ["algorithm", "size", "precision"]

    def setup(self, algorithm: str, size: int, precision: str) -> None:
        self.step = common.cached(("lowbit", algorithm, size, precision), lambda: (
            common.fastgd_stepper(algorithm, *common.pair(size, "float32"), precision)))

    def track_bandwidth(self, algorithm: str, size: int, precision: str) -> float:
        return common.gbps(self.step, bench.bytes_per_step(bench.CASES[algorithm], size,
                                                           "float32", precision))

    track_bandwidth.unit = "GB/s"
