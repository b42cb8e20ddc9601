"""The dashboard as a person sees it: a real mlflow server and headless Chromium.

A store logged like a sweep (parent + trial runs, the tags and short params
``sweeper.dashboard`` expects) is served by ``sweeper.ui.serve``; Chromium opens
``runs_url`` and the rendered page is read through the DevTools protocol. Needs
Debian's ``chromium`` (.ci/run installs it); skipped with the reason when it is absent.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from sweeper import dashboard, ui
from sweeper.tracking import Tracker

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")


def _p(mu: float, layer: str) -> dict:
    return {"loss.dp.mu": mu, "loss.perceptual.layer": layer}


# trial -> (val_lpips, val_psnr, val_ssim, steps, status, searched params)
TRIALS = {
    "aaaa0001": (0.2871, 23.41, 0.6523, 40, "finished", _p(0.5, "conv5_4")),
    "aaaa0002": (0.2345, 24.12, 0.6788, 40, "finished", _p(2.0, "conv4_4")),
    # stopped by ASHA with the lowest LPIPS of all: a partial value that must not rank first
    "aaaa0003": (0.2011, 22.87, 0.6011, 20, "stopped", _p(9.0, "conv3_4")),
}
WINNER = "aaaa0002"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_sweep(uri: str) -> tuple[str, str]:
    """A sweep's MLflow records, logged as the driver logs them; returns (experiment, parent)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.create_experiment("srsweep-browser", artifact_location=str(Path(uri[10:]).parent / "art"))
    tracker = Tracker(uri)
    tracker.configure_experiment(exp)
    parent = client.create_run(exp, run_name="browser (sweep)", tags={"role": "sweep"}).info.run_id
    searched = list(next(iter(TRIALS.values()))[5])
    tracker.configure_parent(exp, parent, "val_lpips", "min", searched)
    tracker.describe_experiment(exp, dashboard.sweep_note(exp, parent, "browser-sweep", WINNER))
    for trial, (lpips, psnr, ssim, steps, status, params) in TRIALS.items():
        run = client.create_run(
            exp, run_name=f"trial-{trial}", tags={"mlflow.parentRunId": parent, "ray_trial_id": trial}
        ).info.run_id
        for k, v in {**{k: str(v) for k, v in params.items()}, **dashboard.child_params(params)}.items():
            client.log_param(run, k, v)
        for step in (steps // 2, steps):  # the last point is what the table shows
            last = step == steps
            client.log_metric(run, "val_lpips", lpips if last else lpips + 0.1, step=step)
            client.log_metric(run, "val_psnr", psnr if last else psnr - 1, step=step)
            client.log_metric(run, "val_ssim", ssim if last else ssim - 0.1, step=step)
        if status == "finished":  # the sorted columns: full-budget trials only
            tracker.log_metrics(
                run, steps, dashboard.final_metrics(dict(zip(dashboard.METRICS, (lpips, psnr, ssim))))
            )
        client.set_tag(run, dashboard.STEPS_TAG, str(steps))
        client.set_tag(run, dashboard.STATUS_TAG, status)
        if trial == WINNER:
            tracker.mark_winner(run)
        client.set_terminated(run, "FINISHED" if status == "finished" else "KILLED")
    client.set_terminated(parent, "FINISHED")
    return exp, parent


# The grid's rows, top to bottom, as {column id: cell text}: ag-grid splits a row over its
# pinned and centre containers, each part carrying the row's index.
ROWS_JS = """(() => { const rows = {};
  for (const el of document.querySelectorAll('.ag-row[row-index]')) {
    const row = rows[el.getAttribute('row-index')] ||= {};
    for (const c of el.querySelectorAll('.ag-cell[col-id]'))
      row[c.getAttribute('col-id')] = c.innerText.trim();
  }
  return JSON.stringify(Object.keys(rows).sort((a, b) => a - b).map(i => rows[i]));
})()"""


# Where each column header sits (its left and right edge in CSS px): "in view" at a width.
HEADERS_JS = """JSON.stringify(Object.fromEntries([...document.querySelectorAll('.ag-header-cell[col-id]')]
  .map(h => { const r = h.getBoundingClientRect(); return [h.getAttribute('col-id'), [r.left, r.right]]; })
  .concat([...document.querySelectorAll('.ag-root-wrapper')].slice(0, 1)
  .map(g => { const r = g.getBoundingClientRect(); return ['_grid', [r.left, r.right]]; }))))"""
# Every image on the page that has loaded: its natural and shown size, and its source.
IMAGES_JS = """JSON.stringify([...document.images].filter(i => i.complete && i.naturalWidth)
  .map(i => ({src: i.currentSrc || i.src, w: i.naturalWidth, h: i.naturalHeight,
              shown: Math.round(i.getBoundingClientRect().width)})))"""


async def _cdp_page(
    port: int, url_part: str, wanted: list[str], shot: Path, deadline_s: float, width: int, height: int
) -> tuple[str, list[dict[str, str]]]:
    """Wait until the page's text shows every string in ``wanted`` (or the deadline),
    save a screenshot, return the text and the grid's rows."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
            targets = await r.json(content_type=None)
        page = next(t for t in targets if t.get("type") == "page" and url_part in t.get("url", ""))
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            ids = iter(range(1, 10**6))

            async def call(method: str, **params):
                i = next(ids)
                await ws.send_json({"id": i, "method": method, "params": params})
                while True:
                    msg = await ws.receive_json()
                    if msg.get("id") == i:
                        if "error" in msg:
                            raise RuntimeError(f"CDP {method}: {msg['error']}")
                        return msg["result"]

            await call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            end = time.monotonic() + deadline_s
            text = ""
            while time.monotonic() < end:
                res = await call(
                    "Runtime.evaluate",
                    returnByValue=True,
                    expression="document.body ? document.body.innerText : ''",
                )
                text = res["result"].get("value", "")
                if all(w in text for w in wanted):
                    break
                await asyncio.sleep(1.0)
            await asyncio.sleep(1.0)  # let the grid finish painting before the screenshot
            png = await call("Page.captureScreenshot", format="png")
            shot.write_bytes(base64.b64decode(png["data"]))
            layout = {}
            for key, js in (("rows", ROWS_JS), ("headers", HEADERS_JS), ("images", IMAGES_JS)):
                res = await call("Runtime.evaluate", expression=js, returnByValue=True)
                layout[key] = json.loads(res["result"].get("value") or "null")
            return text, layout


def _devtools_port(profile: Path, proc: subprocess.Popen, deadline_s: float = 60.0) -> int:
    end = time.monotonic() + deadline_s
    f = profile / "DevToolsActivePort"
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with code {proc.returncode}")
        if f.is_file() and f.read_text().strip():
            port = int(f.read_text().split()[0])
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=2).close()
                return port
            except OSError:
                pass
        time.sleep(0.2)
    raise RuntimeError("chromium did not open its DevTools port")


def open_page(
    url: str, tmp_path: Path, wait_for: list[str], width: int, height: int = 900, name: str = "dashboard"
) -> tuple[str, list[dict], Path]:
    """Headless Chromium on ``url`` until every string of ``wait_for`` shows: the page text, the
    table rows and a screenshot (``name``.png). The browser (its own process group) is stopped
    either way; the text and rows are kept beside the screenshot for a failing run."""
    profile, shot = tmp_path / f"chromium-profile-{name}", tmp_path / f"{name}.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        f"--window-size={width},{height}",
    ]
    browser = subprocess.Popen(
        [CHROMIUM, *flags, url],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port = _devtools_port(profile, browser)
        text, layout = asyncio.run(_cdp_page(port, "/experiments/", wait_for, shot, 180, width, height))
    finally:
        ui.stop_group(browser.pid)
    rows = layout["rows"] or []
    (tmp_path / f"{name}.txt").write_text(text + "\n" + json.dumps(rows, indent=1))
    (tmp_path / f"{name}.layout.json").write_text(json.dumps(layout))  # headers' edges, images
    print(f"screenshot: {shot}")
    return text, rows, shot


@pytest.fixture
def served_sweep(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp, parent = _log_sweep(uri)
    base, pid = ui.serve(uri, port=_free_port(), background=True, timeout=240)
    try:
        yield uri, base, exp, parent
    finally:
        if ui.running(uri) is not None:
            ui.stop(uri)
        else:  # the pid file is gone or stale: still stop what this test started
            ui.stop_group(pid)


def in_view(tmp_path: Path, name: str, cols: list[str]) -> dict[str, bool]:
    """Whether each column header lies inside the table's box (no horizontal scrolling)."""
    headers = json.loads((tmp_path / f"{name}.layout.json").read_text())["headers"] or {}
    left, right = headers.get("_grid", (0, 0))
    return {c: c in headers and left <= headers[c][0] and headers[c][1] <= right for c in cols}


def test_dashboard_shows_trials_with_metrics_and_winner(served_sweep, tmp_path):
    uri, base, exp, parent = served_sweep
    url = dashboard.runs_url(base, exp, parent)
    finished = [t for t in TRIALS if TRIALS[t][4] == "finished"]
    values = [f"{v}" for t in finished for v in TRIALS[t][:3]]
    names = [f"trial-{t}" for t in TRIALS]
    text, rows, shot = open_page(url, tmp_path, names + values + ["winner"], width=1600, height=1000)
    # The view: only the sweep's trials (not the parent), every column named.
    for header in ("final_val_lpips", "final_val_psnr", "final_val_ssim", "mu", "layer", "steps", "status"):
        assert header in text, f"column {header} missing from the page: {text[:2000]}"
    for name in names:
        assert name in text, f"{name} missing from the page"
    for value in values:
        assert value in text, f"metric value {value} missing from the page"
    assert "browser (sweep)" not in text  # the parent is one click away, in the description:
    assert f"Sweep browser-sweep (newest in this experiment): winner \u2605 trial-{WINNER}" in text
    assert "Summary, importances and plots" in text
    # At 1600 px: the metrics, status, steps and winner columns in view, no scrolling.
    key = ["metrics.`final_val_lpips`", "tags.`status`", "tags.`steps`", "tags.`winner`"]
    assert all(in_view(tmp_path, "dashboard", key).values()), in_view(tmp_path, "dashboard", key)
    # Rows: finished trials by LPIPS, the stopped one last (its better partial value unranked).
    order = sorted(finished, key=lambda t: TRIALS[t][0]) + [t for t in TRIALS if t not in finished]
    assert [re.search(r"trial-\w+", " ".join(row.values())).group(0) for row in rows] == [
        f"trial-{t}" for t in order
    ], rows
    for trial, row in zip(order, rows):
        lpips, psnr, ssim, steps, status, params = TRIALS[trial]
        cells = {k: row.get(k) for k in dashboard.columns(params)}
        done = status == "finished"
        assert cells == {
            "metrics.`final_val_lpips`": f"{lpips}" if done else "-",
            "metrics.`final_val_psnr`": f"{psnr}" if done else "-",
            "metrics.`final_val_ssim`": f"{ssim}" if done else "-",
            "params.`mu`": f"{params['loss.dp.mu']}",
            "params.`layer`": params["loss.perceptual.layer"],
            "tags.`steps`": str(steps),
            "tags.`status`": status,
            "tags.`winner`": "true" if trial == WINNER else "-",
        }, row
        # the winner's name starred
        assert (dashboard.WINNER_MARK + f"trial-{trial}" in " ".join(row.values())) == (trial == WINNER), row
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
