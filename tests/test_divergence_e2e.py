"""A sweep in which one trial diverges (NaN/inf) and two do not, through the real CLI.

Local Ray, a SQLite MLflow store, the installed ``srsweep``. The divergence comes from a
real config value: an absurd GAN-stage learning rate blows the weights up within a step,
deterministically. ``failure.max_failures: 2`` allows retries, so "not retried" means
something: the diverged trial ends itself with its reason, it is not an error Ray retries.
"""

from __future__ import annotations

import json
import math
import re

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState
from ray.tune import ExperimentAnalysis
from test_sweep import _children, _sweep_dir, srsweep, write_sweep

from sweeper.study import storage_url

pytestmark = pytest.mark.slow
ABSURD_LR, HEALTHY_LRS, STEPS = 1e12, (5e-5, 1e-4), 2
REASON = re.compile(r"diverged: step (\d+): loss is (nan|inf|-inf) \(non-finite terms: ([a-z0-9_, ]+)\)")


def _diverging_sweep(tmp_path, tiny_data):
    sweep = write_sweep(tmp_path, tiny_data, num_samples=3, concurrent=3, steps=STEPS)
    spec = yaml.safe_load(sweep.read_text())
    spec["set"]["train"]["pretrain_steps"] = 2
    spec["space"] = [{"path": "train.lr", "choices": [*HEALTHY_LRS, ABSURD_LR]}]
    # every choice once, so which trial diverges is known up front
    spec["search"]["points_to_evaluate"] = [{"train.lr": v} for v in (ABSURD_LR, *HEALTHY_LRS)]
    spec["scheduler"] = {"type": "none"}  # the healthy trials run the whole budget
    spec["resources"] = {"cpu": 0.5, "gpu": 0}  # all three at once on 2 cores
    spec["failure"] = {"max_failures": 2}
    sweep.write_text(yaml.safe_dump(spec))
    return sweep


def test_a_diverged_trial_is_recorded_not_retried_and_cannot_win(tmp_path, tiny_data):
    res = srsweep("run", _diverging_sweep(tmp_path, tiny_data), cwd=tmp_path)
    out = res.stdout
    assert res.returncode == 0, out[-3000:] + res.stderr[-3000:]
    assert not re.search(r"\bERROR\b", res.stderr), res.stderr[
        -3000:
    ]  # e.g. Ray: "No checkpoints have been found"
    d = _sweep_dir(tmp_path)
    state = json.loads((d / "sweep.json").read_text())

    # The results table: the absurd lr, and only it, diverged, with its step and terms.
    df = pd.read_parquet(d / "results.parquet")
    assert len(df) == 3 and sorted(df["param.train.lr"]) == sorted([*HEALTHY_LRS, ABSURD_LR])
    bad, good = df[df["status"] == "DIVERGED"], df[df["status"] != "DIVERGED"]
    assert list(bad["param.train.lr"]) == [ABSURD_LR]
    (bad,) = bad.itertuples()
    m = REASON.match(bad.failure)
    assert m, bad.failure
    terms = m.group(3).split(", ")
    assert int(m.group(1)) == bad.steps < STEPS and pd.isna(bad.checkpoint)
    assert "loss_g_total" in terms and all(t.startswith(("loss_", "fm_w", "sa_share")) for t in terms), terms
    assert math.isnan(bad.final_val_lpips) and isinstance(bad.node_id, str) and bad.node_id  # placed
    assert (good["status"] == "TERMINATED").all() and (good["steps"] == STEPS).all()
    assert good["failure"].isna().all() and good["final_val_lpips"].notna().all()

    # Not retried: Ray ended it once (no failure counted, no restore, no error file), and
    # Optuna holds it as FAIL (its NaN objective is no value), the healthy ones COMPLETE.
    trials = {t.trial_id: t for t in ExperimentAnalysis(str(d)).trials}
    t = trials[bad.trial_id]
    assert t.status == "TERMINATED" and t.max_failures == 2 and t.run_metadata.num_failures == 0
    trial_dir = next(d.glob(f"run_trial_{bad.trial_id}_*"))
    rows = [json.loads(ln) for ln in (trial_dir / "result.json").read_text().splitlines()]
    assert [(r["training_iteration"], r["iterations_since_restore"]) for r in rows] == [(1, 1)]
    assert not list(trial_dir.glob("error.*"))
    assert len(re.findall(rf"trial {bad.trial_id} started", out)) == 1
    assert all(trials[i].run_metadata.num_failures == 0 for i in good["trial_id"])
    (study,) = optuna.get_all_study_names(storage_url(d))
    told = {
        ot.params["train.lr"]: ot for ot in optuna.load_study(study_name=study, storage=storage_url(d)).trials
    }
    assert told[ABSURD_LR].state == TrialState.FAIL and told[ABSURD_LR].user_attrs["failure"] == bad.failure
    assert all(told[v].state == TrialState.COMPLETE for v in HEALTHY_LRS)

    # MLflow: the diverged run is FAILED, tagged with the reason, and has it as error.txt.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, children = _children(uri, state["parent_run_id"])
    runs = {r.data.tags["ray_trial_id"]: r for r in children}
    assert set(runs) == set(df["trial_id"])
    run = runs[bad.trial_id]
    assert run.info.status == "FAILED" and run.data.tags["ray_status"] == "DIVERGED"
    assert run.data.tags["failure"] == bad.failure and run.data.tags["steps"] == str(bad.steps)
    assert run.data.tags["placement.node_id"] == bad.node_id
    from mlflow.artifacts import download_artifacts

    error = download_artifacts(
        run_id=run.info.run_id, artifact_path="error.txt", dst_path=str(tmp_path / "dl"), tracking_uri=uri
    )
    assert open(error).read() == bad.failure + "\n"
    for i in good["trial_id"]:
        assert runs[i].info.status == "FINISHED" and runs[i].data.tags["ray_status"] == "TERMINATED"
        assert "failure" not in runs[i].data.tags

    # The winner is a healthy trial; the ranking lists the diverged one unranked, not eligible.
    winner = client.get_run(state["parent_run_id"]).data.tags["winner_trial_id"]
    assert winner in set(good["trial_id"]) and runs[winner].data.tags["winner"] == "true"
    assert yaml.safe_load((d / "winner.yaml").read_text())["train"]["lr"] in HEALTHY_LRS
    (line,) = [ln for ln in out.splitlines() if re.match(rf"\s*-\s+{bad.trial_id}\s", ln)]
    assert line.split()[-2:] == ["DIVERGED", "no"], line
    assert f"trial {bad.trial_id} failed, not retried: {bad.failure[:60]}" in out
    assert f"winner: trial {winner} " in out
    retried = sum(t.run_metadata.num_failures for t in trials.values())
    print(
        f"\nfigures: trials {len(df)}, diverged {len(df) - len(good)} (lr {ABSURD_LR:g}: {bad.failure}), "
        f"retried {retried}, winner {winner} (lr {df.set_index('trial_id').loc[winner, 'param.train.lr']:g})"
    )
