"""End to end with real components: local Ray, Optuna, a SQLite MLflow store, real images.

Runs the installed ``srsweep`` as a user does. Slow-ish (Ray start-up, several tiny
trials), so marked ``slow``; CI runs it.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

SRSWEEP = str(Path(sys.executable).with_name("srsweep"))
QUIET = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
ENV = {**os.environ, **QUIET}
pytestmark = pytest.mark.slow


def write_sweep(
    tmp_path: Path, tiny_data: Path, num_samples: int, concurrent: int, steps: int = 6, where: str = "."
) -> Path:
    """``tiny_data`` may be relative: to the folder srsweep is started from, not the sweep file's."""
    sweep = {
        "name": "e2e",
        "base": ["sa_esrgan_lv", "tiny_cpu"],
        "set": {
            "data": {
                "train": str(tiny_data / "train"),
                "val": str(tiny_data / "val"),
                "patch_size": 32,
                "batch_size": 2,
            },
            "loss": {
                "pixel": {"sa": {"beta2": None, "sa_share_target": 0.15, "calibration_batches": 1}},
                "dp": {"mu": 0.5, "resnet_stage": 1},
                "fm": {"blocks": [0, 1], "weight": 1.0},
            },
            "train": {
                "pretrain_steps": 4,
                "steps": steps,
                "val_every": 2,
                "val_images": 2,
                "val_crop": 64,
                "log_every": 2,
            },
        },
        "space": [
            {"path": "loss.pixel.sa.sa_share_target", "float": [0.05, 0.3]},
            {"path": "loss.dp.mu", "float": [0.2, 20], "log": True, "or": [float("inf")]},
            {"path": "loss.dp.resnet_stage", "choices": [1, 2]},
        ],
        "objective": {"metrics": [{"name": "val_lpips", "mode": "min"}]},
        "search": {"algorithm": "tpe", "seed": 0},
        "budget": {"num_samples": num_samples, "max_concurrent": concurrent},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "resources": {"cpu": 1, "gpu": 0},
        "selection": {"psnr_margin": -10.0},
    }
    path = tmp_path / where / "sweep.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(sweep))
    return path


def srsweep(*args, cwd, timeout=900, env=None, **kw) -> subprocess.CompletedProcess:
    """The installed ``srsweep ARGS`` to its end; ``env`` (default: this process's) gets QUIET."""
    env = {**(env or os.environ), **QUIET}
    return subprocess.run(
        [SRSWEEP, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, **kw
    )


def start_srsweep(*args, cwd, env=None) -> subprocess.Popen:
    """``srsweep ARGS`` started in its own process group (a test stops exactly it, with its
    local Ray, by ``os.killpg``), stdout and stderr merged into text lines."""
    return subprocess.Popen(
        [SRSWEEP, *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**(env or os.environ), **QUIET},
        start_new_session=True,
    )


def _sweep_dir(tmp_path: Path) -> Path:
    (d,) = [p for p in (tmp_path / "ray_results").iterdir() if (p / "sweep.json").is_file()]
    return d


def _children(uri: str, parent: str):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("srsweep-e2e")
    runs = client.search_runs([exp.experiment_id])
    return client, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]


def closed_as_ended(run) -> bool:
    """A trial run is FINISHED when it ran the full budget, KILLED when ASHA stopped it."""
    return run.info.status == ("FINISHED" if run.data.tags.get("ray_status") == "TERMINATED" else "KILLED")


def test_sweep_end_to_end_then_rerun_the_winner(tmp_path, tiny_data):
    """Data paths relative to the launch folder (as DESIGN's ../shared/data), the sweep file
    in another folder: every trial (running in its own Ray folder) still finds the data."""
    shutil.copytree(tiny_data, tmp_path / "images")
    sweep = write_sweep(tmp_path, Path("images"), num_samples=4, concurrent=2, where="sweeps")
    res = srsweep("run", sweep, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "best val_lpips" in res.stdout and "winner: trial" in res.stdout
    d = _sweep_dir(tmp_path)
    state = json.loads((d / "sweep.json").read_text())
    assert state["experiment"]["data"]["train"] == str(tmp_path / "images" / "train")
    # Editing the sweep file after launch changes nothing: the state holds the snapshot.
    sweep.write_text("name: [broken")
    df = pd.read_parquet(d / "results.parquet")
    assert len(df) == 4 and set(df["status"]) <= {"TERMINATED", "STOPPED"}
    assert ((df["status"] == "TERMINATED") == (df["steps"] == 6)).all()
    assert df["final_val_lpips"].notna().all() and (df["sa_share"] > 0).all()
    for p in ("pareto.png", "parallel.png", "winner.yaml"):
        assert (d / p).is_file(), p

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, children = _children(uri, state["parent_run_id"])
    assert len(children) == 4
    assert {r.data.tags["ray_trial_id"] for r in children} == set(df["trial_id"])
    assert all(closed_as_ended(r) and r.data.tags["backbones"] == "random-init" for r in children)
    winners = [r for r in children if r.data.tags.get("winner") == "true"]
    assert len(winners) == 1
    hist = client.get_metric_history(winners[0].info.run_id, "val_lpips")
    assert len(hist) >= 1 and all(m.value >= 0 for m in hist)
    # One report per validation (val_every 2), each with the checkpoint of its own step.
    steps = [m.step for m in hist]
    assert steps == sorted(set(steps)) and all(s % 2 == 0 for s in steps)
    # Labelled sample grids as step-indexed MLflow images (the UI's slider), one key per val image.
    arts = [a.path for a in client.list_artifacts(winners[0].info.run_id, "images")]
    assert {p.split("/")[-1].split("+")[0] for p in arts if p.endswith(".png")} == {
        "val_sample_0_img_002",
        "val_sample_1_img_003",
    }, arts
    # ... and the latest ones under readable names, shown in the run's description
    samples = {a.path for a in client.list_artifacts(winners[0].info.run_id, "samples")}
    assert samples == {"samples/img_002.png", "samples/img_003.png"}, samples
    assert "get-artifact?path=samples/img_002.png" in winners[0].data.tags["mlflow.note.content"]
    parent = client.get_run(state["parent_run_id"])
    assert parent.data.tags["winner_run_id"] == winners[0].info.run_id
    # its Overview opens on the winner, the plots and the ranking
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith(f"**Winner: \u2605 {winners[0].info.run_name[2:]}**") and "pareto.png" in note
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "results.parquet",
        "pareto.png",
        "winner.yaml",
        "sweep.yaml",
    }
    # The winner file is a complete config that `srsweep train` reruns unchanged.
    res = srsweep(
        "train", d / "winner.yaml", "--out", tmp_path / "rerun", "--set", "train.steps=2", cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    # `best` can be asked again, by experiment name, and tags the same winner.
    res = srsweep("best", "e2e", "--tracking-uri", uri, "--resamples", "200", cwd=tmp_path)
    assert res.returncode == 0 and winners[0].data.tags["ray_trial_id"] in res.stdout, res.stderr[-2000:]


def test_killed_driver_resumes_without_duplicates(tmp_path, tiny_data):
    sweep = write_sweep(tmp_path, tiny_data, num_samples=4, concurrent=1, steps=8)
    proc = start_srsweep("run", sweep, cwd=tmp_path)
    # Kill the whole driver session (driver + its local Ray) once a second trial reports.
    deadline = time.monotonic() + 600
    seen, trials = [], set()
    for line in proc.stdout:
        seen.append(line)
        m = re.match(r"\[\s*[\d.]+ min\] trial (\w+) step (\d+)/", line)
        if m:
            trials.add(m.group(1))
        if len(trials) >= 2:
            break
        assert time.monotonic() < deadline, "".join(seen[-50:])
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    d = _sweep_dir(tmp_path)
    assert not (d / "results.parquet").exists()  # it really was interrupted

    res = srsweep("resume", d, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    df = pd.read_parquet(d / "results.parquet")
    assert len(df) == 4 and df["trial_id"].is_unique
    assert set(df["status"]) <= {"TERMINATED", "STOPPED"}
    state = json.loads((d / "sweep.json").read_text())
    _, children = _children(f"sqlite:///{tmp_path / 'mlflow.db'}", state["parent_run_id"])
    assert len(children) == 4  # no duplicated MLflow runs
    assert all(closed_as_ended(r) for r in children)


def write_confirm_sweep(tmp_path: Path, tiny_data: Path, shared_data: Path) -> tuple[Path, Path]:
    """A 3-trial sweep whose top 2 are confirmed with 2 seeds on 3 held-out Set5 images."""
    test = tmp_path / "test" / "HR"
    test.mkdir(parents=True)
    for name in ("img_001.png", "img_004.png", "img_005.png"):  # Set5 images not in tiny_data
        shutil.copy(shared_data / "Set5" / "HR" / name, test / name)
    path = write_sweep(tmp_path, tiny_data, num_samples=3, concurrent=2, steps=4)
    sweep = yaml.safe_load(path.read_text())
    sweep["set"]["data"]["test"] = str(test.parent)
    sweep["scheduler"] = {"type": "none"}
    sweep["confirm"] = {"top_k": 2, "seeds": 2}
    path.write_text(yaml.safe_dump(sweep))
    return path, test


def test_confirmation_end_to_end_and_resume(tmp_path, tiny_data, shared_data):
    """2 finalists x 2 fresh seeds retrained and scored on a held-out data.test; a lost
    confirmation run is trained again by `srsweep resume`, the finished ones are kept."""
    path, test = write_confirm_sweep(tmp_path, tiny_data, shared_data)
    res = srsweep("run", path, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    d = _sweep_dir(tmp_path)
    conf = pd.read_parquet(d / "confirm.parquet")
    assert len(conf) == 4 and set(conf["seed"]) == {10000, 10001} and (conf["status"] == "FINISHED").all()
    assert all(len(json.loads(s)) == 3 for s in conf["per_image_json"])
    assert conf["test_lpips"].notna().all() and conf["val_lpips"].notna().all()
    results = pd.read_parquet(d / "results.parquet")
    assert set(conf["trial_id"]) < set(results["trial_id"]) and (results["seed"] == 0).all()
    assert "winner (confirmed): trial" in res.stdout and "two-way seed x image" in res.stdout
    head = (d / "winner.yaml").read_text()
    assert "Confirmation seeds: [10000, 10001]" in head and f"data.test = {test.parent}" in head
    assert yaml.safe_load(head)["seed"] == 10000  # the rerun trains with a confirmation seed
    state = json.loads((d / "sweep.json").read_text())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, children = _children(uri, state["parent_run_id"])
    confirm = [r for r in children if r.data.tags.get("stage") == "confirm"]
    assert len(confirm) == 4 and all(r.info.status == "FINISHED" for r in confirm)
    assert {(r.data.tags["confirm_of"], r.data.params["seed"]) for r in confirm} == {
        (t, str(s)) for t, s in zip(conf["trial_id"], conf["seed"])
    }
    # A driver SIGKILLed mid-confirmation: one run lost, the parent left RUNNING (a finished
    # sweep is not resumed at all); resume trains that one run only.
    from sweeper.export import write_parquet

    write_parquet(conf.iloc[1:], d / "confirm.parquet")
    client.update_run(state["parent_run_id"], status="RUNNING")
    res = srsweep("resume", d, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "1 runs to train, 3 kept" in res.stdout
    again = pd.read_parquet(d / "confirm.parquet")
    assert len(again) == 4 and set(again["mlflow_run_id"]) >= set(conf["mlflow_run_id"].iloc[1:])
    _, children = _children(uri, state["parent_run_id"])  # the replaced run is deleted, not counted
    assert len([r for r in children if r.data.tags.get("stage") == "confirm"]) == 4
    # `best` again: the confirmation is re-reported from confirm.parquet, nothing retrained,
    # and winner.yaml stays the confirmed winner's.
    res = srsweep("best", d, "--resamples", "200", cwd=tmp_path)
    assert res.returncode == 0 and "winner (confirmed): trial" in res.stdout, res.stderr[-2000:]
    assert "runs to train" not in res.stdout and "Confirmation seeds" in (d / "winner.yaml").read_text()


def test_interrupted_confirmation_resumes_keeping_finished_runs(tmp_path, tiny_data, shared_data):
    """SIGINT once the first confirmation run is recorded: the parent is KILLED, the resume
    hint printed; `srsweep resume` trains only what confirm.parquet lacks."""
    path, _ = write_confirm_sweep(tmp_path, tiny_data, shared_data)
    proc = start_srsweep("run", path, cwd=tmp_path)
    seen, deadline = [], time.monotonic() + 600
    for line in proc.stdout:
        seen.append(line)
        if re.match(r"confirm \w+ seed \d+: finished", line):
            break
        assert time.monotonic() < deadline, "".join(seen[-50:])
    os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "srsweep resume" in out, "".join(seen[-20:]) + out[-3000:]
    d = _sweep_dir(tmp_path)
    kept = pd.read_parquet(d / "confirm.parquet")
    state = json.loads((d / "sweep.json").read_text())
    client, _ = _children(f"sqlite:///{tmp_path / 'mlflow.db'}", state["parent_run_id"])
    assert client.get_run(state["parent_run_id"]).info.status == "KILLED"
    res = srsweep("resume", d, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"{4 - len(kept)} runs to train, {len(kept)} kept" in res.stdout
    done = pd.read_parquet(d / "confirm.parquet")
    assert len(done) == 4 and set(kept["mlflow_run_id"]) <= set(done["mlflow_run_id"])
    assert client.get_run(state["parent_run_id"]).info.status == "FINISHED"
