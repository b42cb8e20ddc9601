"""The constrained Optuna searcher, driven directly (suggest / on_trial_complete, no Ray cluster)."""

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.samplers import NSGAIISampler, TPESampler
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from sweeper.constraints import MISSING_VIOLATION, BandConstraint, ConstrainedOptunaSearch

optuna.logging.set_verbosity(optuna.logging.WARNING)
BAND = (0.10, 0.20)
SPACE = {"beta2": FloatDistribution(1.0, 1000.0, log=True)}


def share(beta2):
    """Toy reached SA share: grows with beta2; inside the band for beta2 in [11.1, 25]."""
    return beta2 / (beta2 + 100.0)


def lpips(beta2):
    """Toy objective that pulls beta2 up, out of the band."""
    return 0.3 - 0.02 * math.log(beta2)


def searcher(sampler=None):
    return ConstrainedOptunaSearch(
        space=SPACE,
        metric="val_lpips",
        mode="min",
        sampler=sampler or TPESampler(seed=0),
        constraint=BandConstraint("sa_share_mean", BAND),
    )


def drive(searcher, n, start=0):
    for i in range(start, start + n):
        tid = f"t{i}"
        b = searcher.suggest(tid)["beta2"]
        searcher.on_trial_complete(tid, {"val_lpips": lpips(b), "sa_share_mean": share(b), "step": 60})


def test_constraint_values_are_on_the_optuna_trials_before_tell():
    s = searcher()
    drive(s, 6)
    s.suggest("err")
    s.on_trial_complete("err", None, error=True)  # crashed trial: FAIL, no constraint
    s.suggest("nometric")
    s.on_trial_complete("nometric", {"val_lpips": 0.2})  # never reported the share
    trials = s._ot_study.trials
    assert len(trials) == 8
    for t in trials[:6]:
        v = share(t.params["beta2"])
        assert t.state == TrialState.COMPLETE and t.user_attrs["sa_share_mean"] == pytest.approx(v, rel=1e-12)
        # recorded before tell (a told trial is read-only): what the sampler reads
        assert t.constraints == pytest.approx({"sa_share_mean": max(0.10 - v, v - 0.20)}, rel=1e-12)
    assert any(t.constraints["sa_share_mean"] <= 0 for t in trials[:6])  # both kinds occur
    assert any(t.constraints["sa_share_mean"] > 0 for t in trials[:6])
    assert trials[6].state == TrialState.FAIL and trials[6].constraints == {}
    assert trials[7].constraints == {"sa_share_mean": MISSING_VIOLATION}
    assert trials[7].user_attrs == {"trial_id": "nometric"}  # no reached share recorded


def test_band_constraint_by_hand():
    c = BandConstraint("m", [0.10, 0.20])
    assert c.violation(0.15) == pytest.approx(-0.05) and c.violation(0.10) == 0.0 and c.violation(0.20) == 0.0
    assert c.violation(0.25) == pytest.approx(0.05) and c.violation(0.04) == pytest.approx(0.06)
    for missing in (None, float("nan"), "0.15", True):
        assert c.violation(missing) == MISSING_VIOLATION
    with pytest.raises(ValueError, match="not a finite interval"):
        BandConstraint("m", (0.2, 0.1))


def feasible_share(searcher, first, n):
    done = [t for t in searcher._ot_study.trials if t.state == TrialState.COMPLETE][first : first + n]
    return sum(BAND[0] <= share(t.params["beta2"]) <= BAND[1] for t in done) / len(done)


def test_tpe_learns_the_band_and_unconstrained_tpe_does_not():
    con = searcher()
    plain = OptunaSearch(space=SPACE, metric="val_lpips", mode="min", sampler=TPESampler(seed=0))
    for s in (con, plain):
        drive(s, 40)
    # The objective pulls beta2 above the band. After TPE's 10 random start-up trials the
    # constrained searcher keeps probing the band's upper edge (0.35 of trials 20-39 inside,
    # 0.25-0.4 over seeds 0-4); the plain one leaves the band (0.0; at most 0.05 over seeds).
    assert feasible_share(con, 20, 20) >= 0.25
    assert feasible_share(plain, 20, 20) <= 0.05
    best = con._ot_study.best_trial  # Optuna's best honours feasibility
    assert BAND[0] <= best.user_attrs["sa_share_mean"] <= BAND[1]


def test_state_survives_save_and_restore(tmp_path):
    s = searcher()
    drive(s, 4)
    s.save(str(tmp_path / "searcher.pkl"))
    back = searcher()
    back.restore(str(tmp_path / "searcher.pkl"))
    drive(back, 2, start=4)
    trials = back._ot_study.trials
    assert len(trials) == 6 and all("sa_share_mean" in t.constraints for t in trials)
    assert trials[5].user_attrs["sa_share_mean"] == pytest.approx(share(trials[5].params["beta2"]))


def test_nsga2_reads_the_same_constraints():
    s = searcher(NSGAIISampler(seed=0, population_size=4))
    drive(s, 12)
    trials = s._ot_study.trials
    assert all(
        t.constraints["sa_share_mean"]
        == pytest.approx(BandConstraint("x", BAND).violation(share(t.params["beta2"])))
        for t in trials
    )


def test_sweep_file_constraint_section(tmp_path):
    from pathlib import Path

    import yaml

    from sweeper.sweep_config import load_sweep, validate_sweep
    from trainables.config import ConfigError

    path = Path(__file__).parents[1] / "search_spaces" / "sa_beta2.yaml"
    sweep = load_sweep(path)
    assert (sweep.constraint.metric, sweep.constraint.band) == ("sa_share_mean", (0.10, 0.20))
    (p,) = sweep.space
    assert (p.path, p.float_, p.log) == ("loss.pixel.sa.beta2", (2.0, 200.0), True)  # raw beta2, log scale
    raw = yaml.safe_load(path.read_text())
    for bad, msg in (
        ({"metric": "m", "band": [0.2, 0.1]}, "constraint.band: [0.2, 0.1] is not a finite interval"),
        ({"metric": "m"}, "constraint.band"),
        ({"metric": "m", "band": [0.1, 0.2], "x": 1}, "constraint.x"),
    ):
        with pytest.raises(ConfigError, match=msg.replace("[", r"\[").replace("]", r"\]")) as e:
            validate_sweep({**raw, "constraint": bad}, "s.yaml")
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="search.algorithm random has no sampler that reads constraints"):
        validate_sweep({**raw, "search": {"algorithm": "random"}}, "s.yaml")
    assert validate_sweep({k: v for k, v in raw.items() if k != "constraint"}, "s.yaml").constraint is None


def test_a_diverged_trial_is_told_as_fail_not_left_running():
    """Its NaN objective is refused by Optuna's tell: without care the trial stays RUNNING."""
    s = searcher()
    drive(s, 2)
    s.suggest("nan")
    reason = "diverged: step 3: loss is nan (non-finite terms: loss_vgg)"
    s.on_trial_complete("nan", {"val_lpips": math.nan, "step": 3, "diverged": 1.0, "failure": reason})
    t = s._ot_study.trials[2]
    assert t.state == TrialState.FAIL and t.values is None and t.constraints == {}
    assert t.user_attrs == {"failure": reason, "trial_id": "nan"}
    drive(s, 1, start=3)  # the study goes on
    states = [t.state for t in s._ot_study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]


def test_a_trial_stopped_before_the_full_budget_is_pruned_with_its_intermediate_values():
    """ASHA stops a trial at step 30 of 60: Optuna must see PRUNED (a partial value), not
    COMPLETE, so TPE does not model 30-step values as final; finished and failed trials keep
    COMPLETE and FAIL."""
    s = ConstrainedOptunaSearch(
        space=SPACE, metric="val_lpips", mode="min", sampler=TPESampler(seed=0), total_steps=60
    )
    for tid, steps in (("full", 60), ("stopped", 30)):
        s.suggest(tid)
        for i, step in enumerate(range(15, steps + 1, 15), start=1):
            s.on_trial_result(tid, {"val_lpips": 0.3 - 0.01 * i, "step": step, "training_iteration": i})
        s.on_trial_complete(tid, {"val_lpips": 0.3 - 0.01 * (steps // 15), "step": steps})
    s.suggest("crash")
    s.on_trial_complete("crash", None, error=True)
    full, stopped, crash = s._ot_study.trials
    assert (full.state, stopped.state, crash.state) == (
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.FAIL,
    )
    assert full.value == pytest.approx(0.26)
    assert stopped.value == pytest.approx(0.28)  # Optuna keeps a pruned trial's last intermediate value
    assert stopped.intermediate_values == pytest.approx({1: 0.29, 2: 0.28})
    assert stopped.user_attrs["steps"] == 30
    # TPE still proposes from a study with a pruned trial in it
    assert "beta2" in s.suggest("next")


def test_study_names_its_metrics_and_each_trial_carries_its_ids(tmp_path):
    """optuna-dashboard shows val_lpips (not "Objective 0"); every Optuna trial carries the
    terminal's trial id and its MLflow run id as user attributes."""
    from sweeper.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    exp = tracker.experiment("ids")
    parent = tracker.start_run(exp, "sweep", {"role": "sweep"})
    run = tracker.start_run(exp, "trial-108f6b1e", {"ray_trial_id": "108f6b1e"}, parent=parent)
    s = ConstrainedOptunaSearch(
        space=SPACE,
        metric="val_lpips",
        mode="min",
        sampler=TPESampler(seed=0),
        total_steps=60,
        mlflow_runs=(uri, exp, parent),
    )
    s.suggest("108f6b1e")
    s.on_trial_complete("108f6b1e", {"val_lpips": 0.2, "step": 60})
    s.suggest("no-run")  # no MLflow run (the store was down): the trial still completes
    s.on_trial_complete("no-run", {"val_lpips": 0.3, "step": 60})
    assert s._ot_study.metric_names == ["val_lpips"]
    first, second = s._ot_study.trials
    assert first.user_attrs["trial_id"] == "108f6b1e" and first.user_attrs["mlflow_run_id"] == run
    assert tracker.client.get_run(run).data.tags["optuna_trial"] == "#0"  # optuna-dashboard's name
    assert second.user_attrs["trial_id"] == "no-run" and "mlflow_run_id" not in second.user_attrs
