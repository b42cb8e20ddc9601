"""End to end as a user: a real tiny sweep, `srsweep ui --background`, the printed link in
headless Chromium at 1600x1000. The page must show the sweep's trial runs with their final
LPIPS / PSNR / SSIM (the values of results.parquet), the winner starred, status and steps
in view, stopped trials apart; the winner's run page shows its sample grids at >= 256 px a
panel; `srsweep ui --stop` ends the server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sweeper import dashboard, ui

sys.path.insert(0, str(Path(__file__).parent))
from test_browser import CHROMIUM, _free_port, in_view, open_page  # noqa: E402

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
        "budget.num_samples=2",  # run together: ASHA stops the one behind at step 5 (unless a tie)
        "--set",
        "train.pretrain_steps=10",
        "--set",
        "train.steps=10",
        "--set",
        "train.val_every=5",
        "--set",
        "scheduler.grace_period=1",
        "--set",
        "scheduler.reduction_factor=100",  # at step 5 ASHA keeps only a trial that leads so far
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
    # the confirmed winner when the demo's confirmation ran, else the search winner
    found = re.search(r"^winner \(confirmed\): trial (\w+),", out, re.M) or re.search(
        r"^winner: trial (\w+) ", out, re.M
    )
    winner = found.group(1)
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
        text, rows, shot = open_page(
            url, tmp_path, names + ["final_val_lpips", "true"], width=1600, height=1000
        )
        _check_table(df, winner, text, rows, tmp_path)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        _check_run_page(url, df.set_index("trial_id").loc[winner, "mlflow_run_id"], tmp_path)
    finally:
        stopped = _srsweep("ui", "--stop", cwd=tmp_path, timeout=120)
        if stopped.returncode != 0:  # still stop what this test started
            ui.stop_group(pid)
    assert stopped.returncode == 0 and f"pid {pid}" in stopped.stdout, stopped.stdout + stopped.stderr
    assert ui.running(uri) is None


def _check_table(df: pd.DataFrame, winner: str, text: str, rows: list[dict], tmp_path: Path) -> None:
    """The printed link's table: final metrics as results.parquet has them (rounded), the
    winner starred, status and steps in view at 1600 px, stopped trials last and KILLED."""
    for header in ("final_val_lpips", "final_val_psnr", "final_val_ssim", "winner", "status", "steps"):
        assert header in text, header
    assert f"winner \u2605 trial-{winner}. Summary, importances and plots" in text  # the parent's link
    key = ["metrics.`final_val_lpips`", "tags.`status`", "tags.`steps`", "tags.`winner`"]
    assert all(in_view(tmp_path, "dashboard", key).values()), in_view(tmp_path, "dashboard", key)
    # the confirmation's runs (confirm-<trial>-seed<N>) have no final_* value: they sort last
    confirm = [i for i, r in enumerate(rows) if "confirm-" in " ".join(r.values())]
    rows = [r for r in rows if "confirm-" not in " ".join(r.values())]
    n_done = int((df["status"] == "TERMINATED").sum())
    assert not confirm or min(confirm) >= n_done, confirm  # after the finished trials
    by_trial = {re.search(r"trial-(\w+)", " ".join(r.values())).group(1): r for r in rows}
    assert set(by_trial) == set(df["trial_id"]), rows
    order = [re.search(r"trial-(\w+)", " ".join(r.values())).group(1) for r in rows]
    done = set(df.loc[df["status"] == "TERMINATED", "trial_id"])
    assert set(order[: len(done)]) == done, (order, done)  # stopped ones sort after
    print(f"statuses: {dict(zip(df['trial_id'], df['status']))}")
    for _, t in df.iterrows():
        row = by_trial[t["trial_id"]]
        finished = t["status"] == "TERMINATED"
        for m in ("lpips", "psnr", "ssim"):
            shown = row[f"metrics.`final_val_{m}`"]
            if finished:
                assert float(shown) == pytest.approx(t[f"final_val_{m}"], rel=1e-3), (m, row)
            else:  # an ASHA-stopped trial's partial value is not in the sorted column
                assert shown == "-", (m, row)
        starred = dashboard.WINNER_MARK + f"trial-{t['trial_id']}" in row["attributes.`Run Name`"]
        assert starred == (t["trial_id"] == winner), row
        assert row["tags.`winner`"] == ("true" if t["trial_id"] == winner else "-"), row
        assert row["tags.`status`"] == ("finished" if finished else "stopped"), row
        assert row["tags.`steps`"] == str(int(t["steps"])), row


def _check_run_page(url: str, run: str, tmp_path: Path) -> None:
    """The winner's page (the link srsweep writes, in the model-training layout) shows its
    sample grids, each panel >= 256 px, shown unshrunk."""
    base, exp = url.split("#")[0], re.search(r"/experiments/(\d+)/", url).group(1)
    page = f"{base}{dashboard.run_link(exp, run)}"
    text, _, _ = open_page(page, tmp_path, ["Validation samples", "Model training"], 1600, 1000, "run")
    assert "Model training" in text and "Evaluations" not in text  # not the GenAI layout
    images = json.loads((tmp_path / "run.layout.json").read_text())["images"]
    samples = [i for i in images if "samples/" in i["src"]]
    assert samples, images
    for img in samples:  # LR | bicubic over SR | HR: 2 panels a row, each >= 256 px, unshrunk
        assert img["w"] >= 2 * 256 and img["shown"] >= img["w"] - 1, img
