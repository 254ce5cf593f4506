"""--plot: a PNG bar chart of fastattn's speed ratios (matplotlib, an optional extra)."""
from __future__ import annotations

from typing import Sequence

from .measure import Result


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("--plot needs matplotlib, an optional extra: "
                         "pip install 'fastattn[bench]' (or pip install matplotlib)")


def plot(path: str, results: Sequence[Result]) -> bool:
    """Horizontal bars of fastattn's speed ratio against each peer, per case (log scale,
    1 = parity). Returns False when there is nothing to plot."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.ratio is not None]
    if not rows:
        return False
    labels = [f"{r.suite} {r.shape} {r.dtype} vs {r.impl}" for r in rows]
    ratios = [r.ratio for r in rows]
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(rows) + 1.5))
    colors = ["tab:green" if x >= 1 else "tab:red" for x in ratios]
    ax.barh(range(len(rows)), ratios, color=colors)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("fastattn speed / peer speed (> 1: fastattn faster)")
    ax.set_title("fastattn vs peers")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True
