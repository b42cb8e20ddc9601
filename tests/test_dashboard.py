"""sweeper.dashboard (names, view, parent summary) and sweeper.ui (the real mlflow server)."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from sweeper import dashboard, ui
from sweeper.tracking import Tracker


def test_short_names_are_the_shortest_distinct_suffixes():
    paths = [
        "loss.pixel.sa.sa_share",
        "loss.dp.mu",
        "loss.pixel.sa.lv.delta",
        "loss.fm.x.delta",
        "loss.perceptual.layer",
    ]
    assert dashboard.short_names(paths) == {
        "loss.pixel.sa.sa_share": "sa_share",
        "loss.dp.mu": "mu",
        "loss.pixel.sa.lv.delta": "lv.delta",
        "loss.fm.x.delta": "x.delta",
        "loss.perceptual.layer": "layer",
    }
    # a name already taken (a top-level config key) is lengthened like a clash
    assert dashboard.short_names(["train.seed", "loss.dp.mu"], reserved=["seed"]) == {
        "train.seed": "train.seed",
        "loss.dp.mu": "mu",
    }
    # a path that is a suffix of another keeps its full name; the other grows past it
    assert dashboard.short_names(["a.b", "x.a.b"]) == {"a.b": "a.b", "x.a.b": "x.a.b"}


def test_child_params_and_columns_use_the_same_names():
    searched = {"loss.dp.mu": 0.5, "loss.perceptual.layer": "conv4_4"}
    assert dashboard.child_params(searched) == {"mu": "0.5", "layer": "conv4_4"}
    # the full-budget metrics next to the run name, then status / steps / winner, then knobs
    assert dashboard.columns(searched) == [
        "metrics.`final_val_lpips`",
        "metrics.`final_val_psnr`",
        "metrics.`final_val_ssim`",
        "tags.`status`",
        "tags.`steps`",
        "tags.`winner`",
        "params.`mu`",
        "params.`layer`",
    ]


def test_final_metrics_are_rounded_and_key_params_picked():
    assert dashboard.final_metrics(
        {"val_lpips": 0.021334921, "val_psnr": 27.53396, "val_ssim": float("nan")}
    ) == {
        "final_val_lpips": 0.02133,
        "final_val_psnr": 27.53,
    }
    flat = {"seed": "3", "train.steps": "60", "loss.dp.mu": "0.5", "data.kind": "image"}
    assert dashboard.key_params(flat) == {"seed": "3", "data.kind": "image", "train.steps": "60"}


def test_view_state_filters_children_and_sorts_by_objective():
    state = dashboard.view_state("abc123", "val_psnr", "max", ["metrics.`val_psnr`"])
    assert state["searchFilter"] == "tags.`mlflow.parentRunId` = 'abc123'"
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`final_val_psnr`", False)
    assert dashboard.view_state("abc123", "val_lpips", "min", [])["orderByAsc"] is True
    with pytest.raises(ValueError, match="objective mode"):
        dashboard.view_state("abc123", "val_lpips", "lowest", [])


def test_runs_url_carries_the_view_key_and_no_search_facet():
    url = dashboard.runs_url("http://127.0.0.1:5000/", "7", "abc123")
    assert url == (
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
        "&compareRunsMode=TABLE&viewStateShareKey=srsweep-abc123"
    )
    for facet in ("searchFilter", "orderByKey", "orderByAsc", "startTime", "lifecycleFilter"):
        assert facet not in url  # the UI drops a shared view when the URL has one


def test_configure_writes_experiment_tags_the_ui_reads(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("e", artifact_location=str(tmp_path / "art"))
    parent = client.create_run(exp, run_name="s (sweep)").info.run_id
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker.configure_experiment(exp)
    key = tracker.configure_parent(exp, parent, "val_lpips", "min", ["loss.dp.mu"])
    tags = client.get_experiment(exp).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    state = json.loads(tags[f"mlflow.sharedViewState.{key}"])
    table = dashboard.view_state(parent, "val_lpips", "min", dashboard.columns(["loss.dp.mu"]))
    assert state == table | dashboard.charts(["val_lpips"], ["mu"])
    assert client.get_run(parent).data.tags["dashboard_view"] == key == f"srsweep-{parent}"


RESULTS = pd.DataFrame(
    {
        "trial_id": ["t1", "t2", "t3", "t4", "t5"],
        "status": ["TERMINATED", "STOPPED", "TERMINATED", "ERROR", "STOPPED"],
        "steps": [40, 10, 40, 3, 20],
        "final_val_lpips": [0.30, 0.25, 0.28, 0.01, math.nan],
        "final_val_psnr": [24.0, 22.0, 25.5, 99.0, 23.0],
        "final_val_ssim": [0.70, 0.65, 0.72, 0.99, 0.66],
    }
)


def test_parent_summary_counts_and_bests_by_hand():
    out = dashboard.parent_summary(RESULTS, "t3", bicubic_psnr=23.5)
    # neither the failed trial t4 (its 0.01 / 99.0 / 0.99) nor the stopped t2 (a partial
    # 0.25 after 10 steps) counts as a best: full-budget trials only
    assert out == {
        "trials_finished": 2.0,
        "trials_stopped": 2.0,
        "trials_failed": 1.0,
        "bicubic_val_psnr": 23.5,
        "best_val_lpips": 0.28,
        "best_val_psnr": 25.5,
        "best_val_ssim": 0.72,
        "winner_val_lpips": 0.28,
        "winner_val_psnr": 25.5,
        "winner_val_ssim": 0.72,
        "winner_steps": 40.0,
    }
    assert "winner_val_lpips" not in dashboard.parent_summary(RESULTS, None, 23.5)
    with pytest.raises(ValueError, match="winner 'zz' is not a trial"):
        dashboard.parent_summary(RESULTS, "zz", 23.5)
    with pytest.raises(ValueError, match="missing columns steps"):
        dashboard.parent_summary(RESULTS.drop(columns="steps"), None, 23.5)


# ---- srsweep ui: the real mlflow server --------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_security_args_match_the_bind_address():
    assert ui.security_args("127.0.0.1", 5001) == [
        "--allowed-hosts",
        "127.0.0.1:5001,localhost:5001,127.0.0.1,localhost",
        "--cors-allowed-origins",
        "http://127.0.0.1:5001,http://localhost:5001",
    ]
    assert ui.security_args("10.0.0.7", 80) == [
        "--allowed-hosts",
        "10.0.0.7:80,10.0.0.7",
        "--cors-allowed-origins",
        "http://10.0.0.7:80",
    ]


@pytest.mark.slow
def test_background_serve_answers_then_stop_frees_the_port(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    port = _free_port()
    url, pid = ui.serve(uri, port=port, background=True, timeout=240)
    try:
        assert url == f"http://127.0.0.1:{port}"
        assert ui.answers(url)  # serve returned only once the server answered
        rec = json.loads((tmp_path / ui.PID_FILE).read_text())
        assert (rec["pid"], rec["port"]) == (pid, port) and ui.running(uri) == rec
        with pytest.raises(ui.UIError, match="already in use"):
            ui.serve(uri, port=port, background=True)
    finally:
        stopped = ui.stop(uri) if ui.running(uri) else ui.stop_group(pid)
    assert stopped == pid
    assert ui.port_free("127.0.0.1", port) and not ui.answers(url)
    assert not (tmp_path / ui.PID_FILE).exists()
    with pytest.raises(ui.UIError, match="no dashboard pid file"):
        ui.stop(uri)


def test_stop_refuses_a_pid_file_naming_another_process(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        record = {"pid": sleeper.pid, "start": ui._proc_start(sleeper.pid), "port": 5000}
        (tmp_path / ui.PID_FILE).write_text(json.dumps(record))
        with pytest.raises(ui.UIError, match="stale"):
            ui.stop(uri)
        assert sleeper.poll() is None  # not an mlflow server: left alone
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.slow
def test_sigterm_to_foreground_serve_leaves_nothing_on_the_port(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    port = _free_port()
    code = f"from sweeper import ui; ui.serve({uri!r}, port={port})"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    server_pids: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while not ui.answers(url):
            assert proc.poll() is None, "foreground serve exited before the server answered"
            assert time.monotonic() < deadline, "server never answered"
            time.sleep(0.5)
        found = subprocess.run(["pgrep", "-f", "--", f"--port {port}"], capture_output=True, text=True)
        server_pids = [int(p) for p in found.stdout.split()]
        assert server_pids  # the mlflow server and its uvicorn worker
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        assert ui.port_free("127.0.0.1", port) and not ui.answers(url)
        assert not [p for p in server_pids if Path(f"/proc/{p}").exists()]
    finally:
        if proc.poll() is None:  # a failed assertion above: stop what this test started
            proc.kill()
            proc.wait()
        for pid in server_pids:
            if Path(f"/proc/{pid}").exists():
                ui.stop_group(os.getpgid(pid))


def test_view_opens_charts_on_the_objective_against_the_knobs():
    state = json.loads(
        dashboard.view_json("abc", "val_lpips", "min", ["loss.dp.mu", "loss.perceptual.layer"])
    )
    (section,) = state["compareRunSections"]
    parallel, *curves = state["compareRunCharts"]
    assert parallel["type"] == "PARALLEL" and parallel["metricSectionId"] == section["uuid"]
    assert parallel["selectedParams"] == ["mu", "layer"]
    assert parallel["selectedMetrics"] == ["final_val_lpips"]
    assert [(c["type"], c["metricKey"]) for c in curves] == [
        ("LINE", m) for m in ("val_lpips", "val_psnr", "val_ssim", "sa_share")
    ]
    # a PSNR objective's curve comes first
    psnr = json.loads(dashboard.view_json("abc", "val_psnr", "max", ["loss.dp.mu"]))["compareRunCharts"]
    assert [c["metricKey"] for c in psnr[1:]] == ["val_psnr", "val_lpips", "val_ssim", "sa_share"]


def test_notes_link_the_parent_and_show_the_samples():
    note = dashboard.sweep_note("7", "p1", "demo-2026", "108f6b1e")
    assert "\u2605 trial-108f6b1e" in note
    assert "(#/experiments/7/runs/p1?workflowType=machine_learning)" in note
    assert "no winner yet" in dashboard.sweep_note("7", "p1", "demo-2026", None)
    samples = dashboard.sample_note("r1", ["chelsea", "coffee"])
    assert samples.startswith("![chelsea](get-artifact?path=samples/chelsea.png&run_uuid=r1)")
    assert "![coffee](get-artifact?path=samples/coffee.png&run_uuid=r1)" in samples


def test_parent_note_names_the_winner_shows_plots_and_ranking():
    summary = dashboard.parent_summary(RESULTS, "t3", bicubic_psnr=23.5)
    note = dashboard.parent_note("p1", "t3", summary, "| rank | trial_id |\n|---|---|\n| 1 | t3 |\n", 12)
    assert note.startswith("**Winner: \u2605 trial-t3** (val_lpips 0.28, val_psnr 25.5, val_ssim 0.72)")
    assert "2 finished, 2 stopped, 1 failed" in note and "bicubic val PSNR 23.50 dB" in note
    assert "![pareto](get-artifact?path=pareto.png&run_uuid=p1)" in note
    assert "![parallel](get-artifact?path=parallel.png&run_uuid=p1)" in note
    assert "(top 10 of 12: all in `ranked.md`)" in note and note.endswith("| 1 | t3 |\n")
    assert dashboard.parent_note("p1", None, summary, "", 2).startswith("**No winner**")
    long = dashboard.parent_note("p1", "t3", summary, "| x |\n" * 3000, 12)  # over MLflow's limit
    assert len(long) < 8000 and long.endswith("**Ranking**: `ranked.md`")
