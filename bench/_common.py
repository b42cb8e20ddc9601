"""Shared bits of the bench/ scripts: arguments, the machine line, a table, the JSON file.

Every script prints a table and writes ``bench/<name>.json`` (or ``--out``) holding the
command, the machine, the date and the figures, so docs/PERFORMANCE.md can cite them.
Timings are medians of interleaved rounds in one process: this machine is noisy, so
only ratios measured in one run are compared.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/NAME.py` from a checkout
    sys.path.insert(0, str(ROOT))


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="smallest size, fewest rounds (the CI smoke run)")
    p.add_argument("--out", default=None, help="JSON path (default: bench/<name>.json)")
    return p


def machine(device: str) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads (torch {torch.__version__})"
    )


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def interleaved(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    device: str = "cpu",
    warmup: int = 1,
    per_round: dict[str, list[float]] | None = None,
) -> dict[str, float]:
    """Median seconds per call of each fn, timed round by round (a, b, c, a, b, c, ...).
    ``per_round``, if given, receives every round's seconds per fn (for paired ratios)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    if per_round is not None:
        per_round.update(times)
    return {k: statistics.median(v) for k, v in times.items()}


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [
        [f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))) for r in cells
    ]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def write(name: str, args: argparse.Namespace, figures: dict) -> Path:
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / f"{name}.json"
    record = {
        "bench": name,
        "command": " ".join([f"python bench/{name}.py", *sys.argv[1:]]),
        "machine": machine(args.device),
        "date": datetime.date.today().isoformat(),
        **figures,
    }
    out.write_text(json.dumps(record, indent=1, default=float))
    print(f"wrote {out}")
    return out
