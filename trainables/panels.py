"""Labelled validation sample grids: LR | bicubic | SR | HR with a caption strip.

A plain four-panel strip (``evaluate.sample_grid``) leaves the reader guessing which panel
is which; a caption row above each panel names it. Pure numpy + OpenCV's text renderer.
"""

from __future__ import annotations

import numpy as np

LABELS = ("LR", "bicubic", "SR", "HR")
N_SAMPLES = 3  # fixed validation images shown per validation (the first ones, in file order)
HEADER = 16  # caption strip height in pixels


def label_panels(grid: np.ndarray, labels=LABELS, header: int = HEADER) -> np.ndarray:
    """uint8 HxWx3 grid of ``len(labels)`` equal panels -> (header + H)xWx3, each panel
    captioned in white on black above it (the panels' pixels are unchanged)."""
    import cv2

    h, w, c = grid.shape
    if w % len(labels):
        raise ValueError(f"grid width {w} is not {len(labels)} equal panels")
    pw = w // len(labels)
    strip = np.zeros((header, w, c), dtype=np.uint8)
    scale = 0.35 if pw < 80 else 0.45
    for i, text in enumerate(labels):
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        x = i * pw + max(0, (pw - tw) // 2)
        cv2.putText(
            strip,
            text,
            (x, (header + th) // 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return np.concatenate([strip, grid], axis=0)


def image_key(index: int, name: str) -> str:
    """MLflow image key of a sample: ``val_sample_0_img_002`` (letters, digits, ``_-.``)."""
    safe = "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in str(name))
    return f"val_sample_{index}_{safe}" if safe else f"val_sample_{index}"
