"""Parquet round trip of the results table and the two PNG plots."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from matplotlib.image import imread

from sweeper.export import plot_parallel, plot_pareto, read_parquet, write_parquet
from sweeper.select import SelectionRule, rank


def results(n=6, seed=0, params=True):
    """A results table with the driver's schema; params of every kind the space has."""
    rng = np.random.default_rng(seed)
    status = (["TERMINATED", "STOPPED", "ERROR", "RUNNING"] * n)[:n]
    lp = np.round(rng.uniform(0.1, 0.4, n), 4)
    ps = np.round(rng.uniform(26, 30, n), 2)
    lp[2], ps[2] = np.nan, np.nan  # the ERROR row
    df = pd.DataFrame(
        {
            "trial_id": [f"t{i}" for i in range(n)],
            "status": status,
            "mlflow_run_id": [None if s == "ERROR" else f"run{i}" for i, s in enumerate(status)],
            "steps": [100] * n,
            "time_s": rng.uniform(10, 20, n),
            "final_val_lpips": lp,
            "final_val_psnr": ps,
            "final_val_ssim": rng.uniform(0.6, 0.8, n),
            "best_val_lpips": lp,
            "best_val_psnr": ps,
            "best_val_ssim": rng.uniform(0.6, 0.8, n),
            "sa_share": rng.uniform(0.1, 0.2, n),
            "beta2": [20.0] * (n - 1) + [np.nan],
            "config_json": [json.dumps({"name": f"t{i}"}) for i in range(n)],
            "per_image_lpips_json": [json.dumps({"a": float(v)}) if v == v else None for v in lp],
            "checkpoint": [f"/c/t{i}.pt" if i % 2 else None for i in range(n)],
        }
    )
    if params:
        df["param.loss.dp.mu"] = rng.choice([0.01, 0.5, 5.0, math.inf], n)
        df["param.loss.dp.resnet_stage"] = rng.integers(1, 5, n)
        df["param.loss.pixel.sa.edge"] = rng.choice(["lv", "canny"], n)
        df["param.loss.pixel.sa.lv.delta"] = [0.01 * (i + 1) if i % 3 else np.nan for i in range(n)]
        df["param.loss.fm.blocks"] = [
            str(list(range(1 + i % 3))) for i in range(n)
        ]  # lists stored as strings
    return df


def assert_same(back, df):
    assert list(back.columns) == list(df.columns) and len(back) == len(df)
    for c in df.columns:
        for x, y in zip(back[c], df[c]):
            if isinstance(y, float) and math.isnan(y) or y is None:
                assert x is None or (isinstance(x, float) and math.isnan(x)), (c, x, y)
            else:
                assert x == y and type(x) is type(y) or (isinstance(y, (float, np.floating)) and x == y), (
                    c,
                    x,
                    y,
                )


def test_parquet_round_trip_with_inf_lists_none_and_strings(tmp_path):
    df = results()
    df["param.loss.fm.real_lists"] = [[1, 2], [3], None, [1, 2, 3], [], [4]]  # real lists
    df["param.loss.dp.mixed"] = [0.5, "vgg_only", math.inf, None, 2, "x"]  # str + numbers
    df["param.model.kind"] = ["a", None, "b", "c", "d", "e"]
    path = write_parquet(df, tmp_path / "sub" / "results.parquet")
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    back = read_parquet(path)
    assert_same(back, df)
    assert (
        back["param.loss.dp.mu"].dtype == np.float64
        and np.isinf(back["param.loss.dp.mu"]).sum() == np.isinf(df["param.loss.dp.mu"]).sum()
    )
    assert back["param.loss.fm.real_lists"][3] == [1, 2, 3] and back["param.loss.dp.mixed"][2] == math.inf
    assert back["param.loss.fm.blocks"][1] == "[0, 1]"  # strings stay strings
    assert pq.read_schema(path).field("param.loss.fm.real_lists").type == "string"  # stored as JSON text
    # a ranked table (rank NaN, may_win bool) round-trips too, and overwriting works
    r = rank(df, SelectionRule(psnr_floor=27.0))
    back = read_parquet(write_parquet(r, path))
    assert_same(back, r.reset_index(drop=True))


def test_read_parquet_missing_file_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="results table not found"):
        read_parquet(tmp_path / "nope.parquet")


def assert_png(path):
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


@pytest.mark.parametrize("kind", ["normal", "single", "none", "large", "empty"])
def test_plots_write_valid_pngs(tmp_path, kind):
    df = results(n=200 if kind == "large" else 6, seed=1)
    if kind == "single":
        df = df.drop(columns=[c for c in df.columns if c.startswith("param.") and c != "param.loss.dp.mu"])
    elif kind == "none":
        df = df.drop(columns=[c for c in df.columns if c.startswith("param.")])
    elif kind == "empty":
        df = df.iloc[:0]
    ranked = rank(df, SelectionRule(psnr_floor=27.0))
    assert_png(plot_pareto(ranked, tmp_path / "pareto.png", psnr_floor=27.0))
    assert_png(plot_parallel(ranked, tmp_path / "parallel.png"))
    assert_png(plot_parallel(df, tmp_path / "plain.png"))  # no rank column: no winner line


def test_plot_missing_column_is_clear(tmp_path):
    with pytest.raises(ValueError, match="final_val_psnr"):
        plot_pareto(results().drop(columns="final_val_psnr"), tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


def test_parallel_draws_stopped_trials_grey_dashed(tmp_path, monkeypatch):
    """ASHA-stopped trials: thin grey dashed lines outside the colour scale (a partial value)."""
    from sweeper import export

    df = results(n=6, seed=1)
    df["status"] = ["TERMINATED"] * 4 + ["STOPPED"] * 2
    df.loc[df["status"] == "STOPPED", "final_val_lpips"] = 0.001  # better than any finished one
    drawn = []
    monkeypatch.setattr(export, "_save", lambda fig, path: drawn.append(fig) or Path(path))
    export.plot_parallel(df, tmp_path / "parallel.png")
    ax = drawn[0].axes[0]
    colored, grey = ax.collections[0], ax.collections[1]
    assert len(colored.get_segments()) == 4 and len(grey.get_segments()) == 2
    assert grey.get_linestyle()[0][1] is not None  # dashed
    assert colored.norm.vmin > 0.001  # the stopped value does not stretch the scale
    assert "2 stopped early" in ax.get_title()
    monkeypatch.undo()
    assert_png(plot_parallel(df, tmp_path / "real.png"))
