"""The evaluation's chart: one group of bars per token (and the mean), one bar per metric.

Drawn on a `matplotlib.figure.Figure` with the Agg canvas, never through pyplot, so that no
global figure state is touched by a library call.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image

from .metrics import MetricRow

# metric -> (label, colour)
_BARS = {
    "sim_c": ("SIM-C", "#4c72b0"),
    "sim_d": ("SIM-D", "#55a868"),
    "nsim_d": ("NSIM-D", "#c44e52"),
    "cs": ("CS", "#8172b2"),
}
_WIDTH = 0.2


def metrics_chart(rows: Sequence[MetricRow], *, title: str = "") -> Image.Image:
    """A PNG-backed RGB image: each row's SIM-C, SIM-D, NSIM-D and CS, with their spread."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(4.5, 1.6 * len(rows) + 1.5), 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    lowest = 0.0
    for k, (metric, (label, colour)) in enumerate(_BARS.items()):
        means, spreads = _values(rows, metric)
        xs = [i + (k - 1.5) * _WIDTH for i in range(len(rows))]
        axes.bar(xs, means, _WIDTH, yerr=spreads, capsize=2, label=label, color=colour)
        lowest = min(lowest, *means) if means else lowest
    axes.set_xticks(range(len(rows)), [r.token for r in rows])
    axes.set_ylim(min(0.0, lowest - 0.05), 1.05)
    axes.axhline(0.0, color="black", linewidth=0.5)
    axes.set_ylabel("score")
    figure.legend(loc="outside lower center", ncols=4, fontsize="small", frameon=False)
    if title:
        axes.set_title(title, fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    with Image.open(buffer) as image:
        return image.convert("RGB")


def _values(rows: Sequence[MetricRow], metric: str) -> tuple[list[float], list[float]]:
    """Each row's mean of `metric` and its spread (0 where missing)."""
    means, spreads = [], []
    for row in rows:
        if metric == "cs":
            mean, std = row.cs, row.cs_std
        else:
            spread = getattr(row, metric)
            mean, std = spread.mean, spread.std
        means.append(0.0 if mean is None else mean)
        spreads.append(0.0 if std is None else std)
    return means, spreads
