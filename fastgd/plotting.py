"""Charts of benchmark results (needs matplotlib: ``pip install fastgd[plot]``)."""

from __future__ import annotations

from typing import Any


def plot_bench(results: list[Any], path: str) -> None:
    """Bar charts of % of the memory roofline and of the speed-ups, saved as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'fastgd[plot]'") from None
    labels = [f"{r.algorithm}\n{r.dtype}\n{r.size:.0e}" for r in results]
    x = range(len(results))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.9 * len(results)), 7),
                                      sharex=True)
    top.bar(x, [r.pct_roofline for r in results], color="tab:blue")
    top.axhline(100, color="black", linewidth=0.8, linestyle="--", label="roofline (copy)")
    top.set_ylabel("% of memory roofline")
    top.set_title("fastgd: one optimizer step")
    top.legend(loc="lower right")
    width = 0.4
    for offset, key, name in ((-width / 2, "numpy_speedup", "vs NumPy"),
                              (width / 2, "torch_speedup", "vs torch.optim")):
        values = [getattr(r, key) or 0.0 for r in results]
        bottom.bar([i + offset for i in x], values, width=width, label=name)
    bottom.axhline(1, color="black", linewidth=0.8, linestyle="--")
    bottom.set_yscale("log")
    bottom.set_ylabel("speed-up (x, log scale)")
    bottom.set_xticks(list(x), labels, fontsize=8)
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
