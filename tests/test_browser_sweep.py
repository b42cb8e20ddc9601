"""End to end as a user: a real tiny sweep, `srsweep ui --background`, the printed link in
headless Chromium. The page must show the sweep's trial runs with their LPIPS / PSNR /
SSIM (the values of results.parquet) and the winner; `srsweep ui --stop` ends the server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sweeper import ui

sys.path.insert(0, str(Path(__file__).parent))
from test_browser import CHROMIUM, _free_port, open_page  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SRSWEEP = str(Path(sys.executable).parent / "srsweep")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)"),
]


def _srsweep(*args, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PYTHONPATH": str(REPO),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [SRSWEEP, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_tiny_sweep_opens_in_the_browser_with_metrics_and_winner(tmp_path):
    res = _srsweep(
        "run",
        REPO / "search_spaces" / "demo.yaml",
        "--tiny",
        "--set",
        "budget.num_samples=2",
        "--set",
        "train.pretrain_steps=10",
        "--set",
        "train.steps=10",
        "--set",
        "train.val_every=5",
        "--set",
        "scheduler.type=none",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    for line in (
        "pretrain step 10/10",
        "started:",
        "step 10/10:",
        "finished",
        "winner: trial",
        "rerun the winner: srsweep train",
        "dashboard: http://127.0.0.1:5000/#/experiments/",
    ):
        assert line in out, f"{line!r} missing from the run output:\n{out[-3000:]}"
    for noise in ("Configuration for experiment", "TensorBoard", "Token authentication", "new study created"):
        assert noise not in out + res.stderr, noise
    sweep_dir = next((tmp_path / "ray_results").glob("demo-*"))
    df = pd.read_parquet(sweep_dir / "results.parquet")
    winner = re.search(r"^winner: trial (\w+) ", out, re.M).group(1)
    assert len(df) == 2 and winner in set(df["trial_id"])
    assert (sweep_dir / "optuna.db").is_file()

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    port = _free_port()
    started = _srsweep("ui", "--background", "--port", port, cwd=tmp_path, timeout=300)
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int(re.search(r"pid (\d+)", started.stdout).group(1))
    try:
        url = re.search(r"^dashboard: (\S+)", started.stdout, re.M).group(1)
        assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/") and "viewStateShareKey=" in url
        names = [f"trial-{t}" for t in df["trial_id"]]
        text, rows, shot = open_page(url, tmp_path, names + ["val_lpips", "true"], width=3600)
        for header in ("val_lpips", "val_psnr", "val_ssim", "winner", "status", "steps"):
            assert header in text, header
        by_trial = {re.search(r"trial-(\w+)", " ".join(r.values())).group(1): r for r in rows}
        assert set(by_trial) == set(df["trial_id"]), rows
        for _, t in df.iterrows():
            row = by_trial[t["trial_id"]]
            for m in ("lpips", "psnr", "ssim"):  # the UI rounds: compare to its shown digits
                shown = row[f"metrics.`val_{m}`"]
                assert float(shown) == pytest.approx(t[f"final_val_{m}"], rel=1e-3, abs=1e-4), (m, row)
            assert row["tags.`winner`"] == ("true" if t["trial_id"] == winner else "-"), row
            assert row["tags.`status`"] == "finished" and row["tags.`steps`"] == "10", row
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        stopped = _srsweep("ui", "--stop", cwd=tmp_path, timeout=120)
        if stopped.returncode != 0:  # still stop what this test started
            ui.stop_group(pid)
    assert stopped.returncode == 0 and f"pid {pid}" in stopped.stdout, stopped.stdout + stopped.stderr
    assert ui.running(uri) is None
