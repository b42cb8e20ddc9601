"""Two ``srsweep run`` started at once in one folder, on one new SQLite store: both finish,
in two sweep folders, each with its own parent run and trials (no schema race, no
folder-name collision)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_sweep import _children, start_srsweep, write_sweep

pytestmark = pytest.mark.slow


def test_two_sweeps_started_together_both_finish(tmp_path, tiny_data):
    sweep = write_sweep(tmp_path, tiny_data, num_samples=1, concurrent=1, steps=4)
    procs = [start_srsweep("run", sweep, cwd=tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    dirs = sorted(p for p in (tmp_path / "ray_results").iterdir() if (p / "sweep.json").is_file())
    assert len(dirs) == 2
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parents = set()
    for d in dirs:
        state = json.loads((d / "sweep.json").read_text())
        parents.add(state["parent_run_id"])
        df = pd.read_parquet(d / "results.parquet")
        _, children = _children(uri, state["parent_run_id"])
        assert len(df) == 1 and len(children) == 1
    assert len(parents) == 2
