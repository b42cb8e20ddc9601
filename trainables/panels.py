"""Labelled validation sample grids: LR | bicubic over SR | HR, each panel captioned.

A plain four-panel strip (``evaluate.sample_grid``) leaves the reader guessing which panel
is which; a caption row above each panel names it. Panels narrower than ``MIN_PANEL`` (the
tiny CPU runs validate on 32-96 px crops) are enlarged by an integer nearest-neighbour
factor first: every source pixel stays a sharp block a person can judge, nothing is
interpolated. Pure numpy + OpenCV's text renderer.
"""

from __future__ import annotations

import numpy as np

LABELS = ("LR", "bicubic", "SR", "HR")
N_SAMPLES = 3  # fixed validation images shown per validation (the first ones, in file order)
HEADER = 16  # caption strip height in pixels (at panels under 128 px; scaled with them)
MIN_PANEL = 256  # px: narrower panels are enlarged (nearest) to at least this width


def enlarge(grid: np.ndarray, panels: int = len(LABELS), min_panel: int = MIN_PANEL) -> np.ndarray:
    """Repeat every pixel k x k (the smallest integer k giving panels >= ``min_panel`` px)."""
    k = -(-min_panel // max(1, grid.shape[1] // panels))
    return grid if k <= 1 else grid.repeat(k, axis=0).repeat(k, axis=1)


def label_panels(
    grid: np.ndarray, labels=LABELS, header: int = HEADER, min_panel: int = MIN_PANEL, per_row: int = 2
) -> np.ndarray:
    """uint8 HxWx3 grid of ``len(labels)`` equal panels side by side -> the panels enlarged
    to at least ``min_panel`` px (``enlarge``; 0: as is), each under a caption naming it,
    ``per_row`` a row: 2 gives LR | bicubic over SR | HR, which fits a page at 256+ px a
    panel where a strip of four would not."""
    h, w, c = grid.shape
    n = len(labels)
    if w % n:
        raise ValueError(f"grid width {w} is not {n} equal panels")
    grid = enlarge(grid, n, min_panel) if min_panel else grid
    pw = grid.shape[1] // n
    big = pw >= 128
    header = 2 * header if big else header
    panels = [
        np.concatenate([_caption(text, pw, header, c, big), grid[:, i * pw : (i + 1) * pw]], axis=0)
        for i, text in enumerate(labels)
    ]
    rows = [np.concatenate(panels[i : i + per_row], axis=1) for i in range(0, n, per_row)]
    return np.concatenate(rows, axis=0)


def _caption(text: str, width: int, header: int, channels: int, big: bool) -> np.ndarray:
    """White text centred on a black strip."""
    import cv2

    strip = np.zeros((header, width, channels), dtype=np.uint8)
    scale = 0.8 if big else 0.35 if width < 80 else 0.45
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    org = (max(0, (width - tw) // 2), (header + th) // 2)
    thickness = 2 if big else 1
    cv2.putText(strip, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return strip


def image_key(index: int, name: str) -> str:
    """MLflow image key of a sample: ``val_sample_0_img_002`` (letters, digits, ``_-.``)."""
    safe = "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in str(name))
    return f"val_sample_{index}_{safe}" if safe else f"val_sample_{index}"


def sample_name(key: str) -> str:
    """Readable artifact name of a sample image key: ``val_sample_0_chelsea`` -> ``chelsea``."""
    parts = key.split("_", 3)
    return parts[3] if len(parts) == 4 and parts[:2] == ["val", "sample"] and parts[3] else key
