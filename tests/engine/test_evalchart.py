"""The evaluation's chart: a picture of the rows, drawn without pyplot's global state."""

import sys

from PIL import Image

from mifo_engine.evalchart import metrics_chart
from mifo_engine.metrics import MetricRow, Spread


def _row(token: str, cs: float | None) -> MetricRow:
    return MetricRow(
        token, token, 2, Spread(0.6, 0.02, 2), Spread(0.8, 0.05, 2), Spread(0.7, 0.0, 2), cs, 0.01
    )


def test_the_chart_is_an_rgb_image_wider_with_more_rows() -> None:
    one = metrics_chart([_row("mean", 0.14)], title="one")
    four = metrics_chart([_row(f"<asset{k}>", 0.1) for k in range(3)] + [_row("mean", None)])
    assert isinstance(one, Image.Image) and one.mode == "RGB"
    assert four.width > one.width and four.height == one.height
    assert len(set(four.getdata())) > 4  # bars, text and background, not a blank


def test_drawing_leaves_pyplot_alone() -> None:
    metrics_chart([_row("mean", 0.1)])
    assert (
        "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()
    )
