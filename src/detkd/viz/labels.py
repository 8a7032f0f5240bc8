"""Box labels placed where they cover no other label and stay inside the image (detection plots)."""

from __future__ import annotations

from typing import Any

import numpy as np

LABEL_PAD = 0.5  # a label's background beyond its text, points (matplotlib's text bbox pad)
LABEL_FONT_SIZE = 7


class LabelPlacer:
    """Puts each box's label where it covers no label placed before and stays inside the image.

    A label is tried, in order, above the box's top-left corner, inside it under the top edge, under
    the box, and inside it above the bottom edge; it is shifted left where it would leave the image on
    the right. The first place that overlaps no earlier label wins; if none is free, the first place
    inside the image. Place the labels that matter most first (the highest scores).
    """

    def __init__(self, ax: Any, width: int, height: int) -> None:
        """``ax`` shows an image ``width`` x ``height`` pixels and is already placed in its figure."""
        self.ax, self.width, self.height = ax, width, height
        self.placed: list[tuple[float, float, float, float]] = []  # label rectangles, data coordinates
        axes = ax.get_window_extent()  # display pixels
        self._per_x, self._per_y = width / axes.width, height / axes.height  # image pixels per display pixel
        self._pad = LABEL_PAD * ax.figure.dpi / 72.0  # display pixels

    def _sizes(self, label: Any) -> tuple[float, float, float, float]:
        """The label's width and height with its background, and that background's margin around the text
        (x, y), all in image pixels."""
        extent = label.get_window_extent()  # the text alone (the figure's renderer measures it)
        pad = self._pad
        return ((extent.width + 2 * pad) * self._per_x, (extent.height + 2 * pad) * self._per_y,
                pad * self._per_x, pad * self._per_y)

    def candidates(self, box: np.ndarray, size: tuple[float, float]) -> list[tuple[float, float, float, float]]:
        """Label rectangles ``(x1, y1, x2, y2)`` for ``box``, in order of preference, in the axes' data
        coordinates (image pixels with pixel centres at integers: the image spans ``[-0.5, W - 0.5]``)."""
        w, h = size
        x1, y1, _, y2 = (float(v) - 0.5 for v in box)
        left = min(max(x1, -0.5), self.width - 0.5 - w)  # shifted left to end inside the image
        return [(left, top, left + w, top + h) for top in (y1 - h, y1, y2, y2 - h)]

    def place(self, box: np.ndarray, text: str, colour: str) -> Any:
        """Draw ``text`` on a ``colour`` background by ``box``, ``(x1, y1, x2, y2)`` in the continuous pixel
        frame (the image spans ``[0, W] x [0, H]``, as the boxes of :mod:`detkd.data.detection`); returns the
        matplotlib text."""
        label = self.ax.text(0.0, 0.0, text, fontsize=LABEL_FONT_SIZE, color="black", va="top", ha="left",
                             clip_on=True, bbox={"facecolor": colour, "edgecolor": "none", "pad": LABEL_PAD,
                                                 "alpha": 0.8})
        width, height, pad_x, pad_y = self._sizes(label)
        options = self.candidates(box, (width, height))
        inside = [r for r in options if r[1] >= -0.5 and r[3] <= self.height - 0.5] or options[:1]
        free = [r for r in inside if not any(_overlap(r, other) for other in self.placed)]
        chosen = (free or inside)[0]
        self.placed.append(chosen)
        label.set_position((chosen[0] + pad_x, chosen[1] + pad_y))  # the text's corner, inside its background
        return label


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
