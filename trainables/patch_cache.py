"""Training patches cached in an Arrow IPC file (uint8 bytes + shapes), memory-mapped by
each DataLoader worker: a fixed patch set read without decoding or resizing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from trainables.data import DataError


def cache_patches_arrow(dataset: Dataset, path: str | os.PathLike, n: int, chunk: int = 256) -> Path:
    """Write items 0..n-1 of a patch dataset to an Arrow IPC file (uint8 bytes + shapes)."""
    import pyarrow as pa

    if getattr(dataset, "edge", None) is not None:  # the file holds lr/hr only
        raise ValueError(
            "cache_patches_arrow: Canny edge maps are not cached; build the dataset without edge="
        )

    path = Path(path)
    schema = pa.schema(
        [
            ("lr", pa.binary()),
            ("hr", pa.binary()),
            ("lr_shape", pa.list_(pa.int32())),
            ("hr_shape", pa.list_(pa.int32())),
        ]
    )

    def as_bytes(t: torch.Tensor) -> bytes:
        return t.mul(255).round().clamp(0, 255).to(torch.uint8).numpy().tobytes()

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for start in range(0, n, chunk):
            rows = [dataset[k] for k in range(start, min(n, start + chunk))]
            writer.write_batch(
                pa.record_batch(
                    [
                        [as_bytes(r["lr"]) for r in rows],
                        [as_bytes(r["hr"]) for r in rows],
                        [list(r["lr"].shape) for r in rows],
                        [list(r["hr"].shape) for r in rows],
                    ],
                    schema=schema,
                )
            )
    return path


class ArrowPatches(Dataset):
    """Patches written by :func:`cache_patches_arrow`, memory-mapped (opened per process)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._table = None
        self._len = self._open().num_rows

    def _open(self):
        if self._table is None:
            import pyarrow as pa

            try:
                self._table = pa.ipc.open_file(pa.memory_map(str(self.path), "r")).read_all()
            except (OSError, pa.ArrowInvalid) as exc:
                raise DataError(
                    f"{self.path}: cannot read Arrow patch cache ({type(exc).__name__})"
                ) from None
        return self._table

    def __getstate__(self) -> dict:
        # A memory map does not pickle; each DataLoader worker maps the file itself.
        return {**self.__dict__, "_table": None}

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, k: int) -> dict:
        t = self._open()
        out = {}
        for key in ("lr", "hr"):
            buf = t.column(key)[k].as_buffer()
            shape = t.column(f"{key}_shape")[k].as_py()
            arr = np.frombuffer(buf, dtype=np.uint8).reshape(shape)
            out[key] = torch.from_numpy(arr.copy()).float().div_(255)
        return out
