"""The training-curve figure every trainer writes: two panels side by side, saved as a PNG."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def two_panel_png(path: Path, title: str, draw: Callable[[Any, Any], None]) -> Path:
    """Draw with ``draw(left_axes, right_axes)``, add grids, legends and ``title``; save to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    draw(ax1, ax2)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
