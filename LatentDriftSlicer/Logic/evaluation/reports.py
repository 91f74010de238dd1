"""PNG previews of results: a few slices per row, one panel per output, drawn with matplotlib (Agg).

A preview is a grid: rows are slices (spread over the edited or segmented range), columns are panels
(the input, a label overlay, a map). Pixels keep their physical aspect ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

PanelKind = Literal["grey", "labels", "map", "signed"]


@dataclass(frozen=True)
class Panel:
    """One column of a preview.

    ``slices``: ``[n, rows, cols]``; ``kind``: ``grey`` (an image), ``labels`` (integer labels drawn
    over ``background`` with ``colors``), ``map`` (values in ``value_range`` with a sequential colour
    map), ``signed`` (a diverging colour map symmetric around 0).
    """

    title: str
    slices: np.ndarray
    kind: PanelKind = "grey"
    background: np.ndarray | None = None
    colors: Sequence[tuple[float, float, float]] = ()
    value_range: tuple[float, float] | None = None
    outline: np.ndarray | None = None


def pick_preview_slices(count: int, wanted: int = 3, outline: np.ndarray | None = None) -> list[int]:
    """Up to ``wanted`` slice positions spread over the middle 60 % of a stack of ``count``.

    With an ``outline`` (bool ``[count, rows, cols]``, e.g. the brain mask) the middle 60 % of the slices
    it touches, so a head's preview shows its brain rather than its neck.
    """
    if count <= wanted:
        return list(range(count))
    first, last = 0, count - 1
    if outline is not None and outline.any():
        touched = np.flatnonzero(outline.reshape(count, -1).any(axis=1))
        first, last = int(touched[0]), int(touched[-1])
    span = last - first
    return sorted({first + round(float(p)) for p in np.linspace(0.2 * span, 0.8 * span, wanted)})


def save_preview(
    path: Path,
    panels: Sequence[Panel],
    slice_positions: Sequence[int],
    pixel_spacing: tuple[float, float],
    title: str,
) -> Path:
    """Draw ``panels`` at ``slice_positions`` into a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    rows, cols = len(slice_positions), len(panels)
    figure, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows + 0.4), squeeze=False)
    aspect = pixel_spacing[0] / pixel_spacing[1]
    for row, position in enumerate(slice_positions):
        for col, panel in enumerate(panels):
            axis = axes[row][col]
            axis.set_axis_off()
            if row == 0:
                axis.set_title(panel.title, fontsize=10)
            _draw(axis, panel, position, aspect, ListedColormap)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def _draw(axis: Any, panel: Panel, position: int, aspect: float, colormap_class: Any) -> None:
    data = panel.slices[position]
    if panel.kind == "labels":
        if panel.background is not None:
            axis.imshow(panel.background[position], cmap="gray", aspect=aspect)
        colors = [(0.0, 0.0, 0.0, 0.0)] + [(*c, 0.55) for c in panel.colors]
        axis.imshow(
            data,
            cmap=colormap_class(colors),
            vmin=0,
            vmax=len(colors) - 1,
            aspect=aspect,
            interpolation="nearest",
        )
    elif panel.kind == "signed":
        limit = float(np.max(np.abs(data))) or 1.0
        image = axis.imshow(data, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect=aspect)
        axis.figure.colorbar(image, ax=axis, fraction=0.046)
    elif panel.kind == "map":
        low, high = panel.value_range or (float(data.min()), float(data.max()))
        image = axis.imshow(data, cmap="inferno", vmin=low, vmax=high, aspect=aspect)
        axis.figure.colorbar(image, ax=axis, fraction=0.046)
    else:
        axis.imshow(data, cmap="gray", aspect=aspect)
    if panel.outline is not None and panel.outline[position].any():
        axis.contour(panel.outline[position].astype(np.float32), levels=[0.5], colors="lime", linewidths=0.8)
