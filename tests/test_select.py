"""Winner selection on hand-made results tables (the schema the sweep driver builds)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from sweeper.select import (
    NoWinnerError,
    SelectionRule,
    format_ranking,
    pareto_front,
    rank,
    select,
    short_param_names,
    significance_line,
    winner_config,
)
from sweeper.significance import PairedTest


def trial(tid, lpips, psnr, status="TERMINATED", ssim=0.70, per_image=None, steps=100, **params):
    row = {
        "trial_id": tid,
        "status": status,
        "mlflow_run_id": f"run-{tid}",
        "steps": steps,
        "time_s": 12.5,
        "final_val_lpips": lpips,
        "final_val_psnr": psnr,
        "final_val_ssim": ssim,
        "best_val_lpips": lpips,
        "best_val_psnr": psnr,
        "best_val_ssim": ssim,
        "sa_share": 0.15,
        "beta2": 20.0,
        "param.loss.dp.mu": 0.5,
        "param.loss.dp.resnet_stage": 3,
        "config_json": json.dumps({"name": tid, "loss": {"dp": {"mu": math.inf}}}),
        "per_image_lpips_json": json.dumps(per_image) if per_image is not None else None,
        "checkpoint": f"/ckpt/{tid}/last.pt",
    }
    row.update({f"param.{k.replace('__', '.')}": v for k, v in params.items()})
    return row


def table(*rows):
    return pd.DataFrame(list(rows))


FIVE = table(
    trial("t1", 0.20, 27.0),  # best LPIPS, below the floor
    trial("t2", 0.22, 28.5),  # the winner
    trial("t3", 0.25, 29.0),
    trial("t4", 0.21, 27.5),  # below the floor
    trial("t5", 0.30, 28.0),  # exactly on the floor: may win
)
FLOOR = SelectionRule(psnr_floor=28.0)


def by_id(df, col):
    return dict(zip(df["trial_id"], df[col]))


def test_rank_by_hand_with_a_floor_that_excludes_the_best_lpips():
    r = rank(FIVE, FLOOR)
    assert list(r["trial_id"]) == ["t2", "t3", "t5", "t1", "t4"]
    assert list(r["rank"]) == [1, 2, 3, 4, 5]
    assert by_id(r, "may_win") == {"t1": False, "t2": True, "t3": True, "t4": False, "t5": True}
    assert select(FIVE, FLOOR).winner["trial_id"] == "t2"
    # without a floor the best LPIPS wins and every finished trial may win
    r = rank(FIVE)
    assert list(r["trial_id"]) == ["t1", "t4", "t2", "t3", "t5"] and r["may_win"].all()
    assert len(FIVE) == 5 and "rank" not in FIVE.columns  # input untouched


def test_error_unfinished_and_nan_rows_are_last_and_never_win():
    df = pd.concat(
        [
            table(
                trial("e1", 0.01, 40.0, status="ERROR"),  # fantastic numbers, but it crashed
                trial("r1", 0.02, 39.0, status="RUNNING"),
                trial("n1", float("nan"), 30.0),  # finished, no LPIPS
            ),
            FIVE,
        ],
        ignore_index=True,
    )
    r = rank(df, FLOOR)
    assert list(r["trial_id"]) == ["t2", "t3", "t5", "t1", "t4", "e1", "r1", "n1"]
    assert list(r["rank"][:5]) == [1, 2, 3, 4, 5] and r["rank"][5:].isna().all()
    assert not r["may_win"][5:].any()


def test_a_stopped_trial_with_the_best_lpips_does_not_win():
    # s1 and s2 were stopped by ASHA (STOPPED, or TERMINATED short of the budget in an
    # older table): their LPIPS after 30 / 50 steps is not comparable with 100 steps.
    df = pd.concat(
        [
            table(
                trial("s1", 0.05, 29.0, status="STOPPED", steps=30),
                trial("s2", 0.06, 29.0, status="TERMINATED", steps=50),
                trial("s3", 0.07, 29.0, status="STOPPED", steps=50),
            ),
            FIVE,
        ],
        ignore_index=True,
    )
    rule = SelectionRule(psnr_floor=28.0, total_steps=100)
    r = rank(df, rule)
    # finished (may win, then below the floor), then stopped: most steps first, then LPIPS
    assert list(r["trial_id"]) == ["t2", "t3", "t5", "t1", "t4", "s2", "s3", "s1"]
    assert list(r["rank"][:5]) == [1, 2, 3, 4, 5] and r["rank"][5:].isna().all()
    assert list(r["steps"][5:]) == [50, 50, 30] and not r["may_win"][5:].any()
    sel = select(df, rule)
    assert sel.winner["trial_id"] == "t2" and sel.runner_up["trial_id"] == "t3"
    # without total_steps the status alone decides: s2 (TERMINATED) counts as finished
    assert rank(df, FLOOR)["trial_id"].iloc[0] == "s2"
    text = format_ranking(sel)
    lines = text.splitlines()
    assert "5 ran the full budget" in lines[0] and "steps == 100" in lines[0]
    s1 = next(l for l in lines if " s1 " in f" {l} ").split()
    assert s1[0] == "-" and "30" in s1 and "STOPPED" in s1
    with pytest.raises(NoWinnerError, match="none ran the full budget"):
        select(df[df.trial_id.str.startswith("s")], rule)


def test_pareto_front_uses_finished_trials_only():
    df = pd.concat(
        [HAND, table(trial("S", 0.01, 40.0, status="STOPPED", steps=30), trial("T", 0.02, 39.0, steps=50))],
        ignore_index=True,
    )
    assert list(pareto_front(df, total_steps=100)["trial_id"]) == ["A", "C", "D", "B"]
    assert list(pareto_front(df)["trial_id"]) == ["T"]  # T's status says finished, steps unchecked
    outside = HAND.assign(constraint_ok=[False] + [True] * 9)
    assert list(pareto_front(outside)["trial_id"]) == ["F", "C", "D", "B"]  # F was dominated by A only


def test_constraint_band_rules_out_trials_outside_it():
    df = FIVE.assign(sa_share_mean=[0.15, 0.25, 0.10, 0.20, float("nan")])  # t2 drifted out of the band
    rule = SelectionRule(psnr_floor=28.0, constraint_metric="sa_share_mean", constraint_band=(0.10, 0.20))
    r = rank(df, rule)
    assert by_id(r, "constraint_ok") == {"t1": True, "t2": False, "t3": True, "t4": True, "t5": False}
    assert list(r["trial_id"]) == ["t3", "t1", "t4", "t2", "t5"] and by_id(r, "may_win")["t3"]
    assert select(df, rule).winner["trial_id"] == "t3" and "sa_share_mean in [0.1, 0.2]" in rule.describe()
    # a table that already carries constraint_ok (missing = not ok) is honoured as is
    marked = FIVE.assign(constraint_ok=[True, None, True, True, True])
    assert select(marked, FLOOR).winner["trial_id"] == "t3"
    with pytest.raises(ValueError, match="'sa_share_mean' .needed by the constraint"):
        rank(FIVE, rule)
    with pytest.raises(ValueError, match="go together"):
        SelectionRule(constraint_metric="sa_share_mean")
    with pytest.raises(NoWinnerError, match="0 inside the constraint band"):
        select(FIVE.assign(sa_share_mean=0.5), rule)


def test_no_feasible_trial_raises_one_line():
    with pytest.raises(NoWinnerError) as e:
        select(FIVE, SelectionRule(psnr_floor=30.0))
    msg = str(e.value)
    assert "\n" not in msg and "5 trials" in msg and "29.00" in msg and "30.00" in msg
    assert list(e.value.ranked["trial_id"])[0] == "t1"  # the table is still there to report
    with pytest.raises(NoWinnerError, match="none ran the full budget"):
        select(table(trial("a", 0.1, 30.0, status="ERROR"), trial("b", 0.1, 30.0, status="PENDING")))


def test_mode_max_for_ssim():
    df = table(trial("a", 0.2, 28, ssim=0.71), trial("b", 0.3, 28, ssim=0.75), trial("c", 0.1, 28, ssim=0.69))
    r = rank(df, SelectionRule(metric="final_val_ssim", mode="max"))
    assert list(r["trial_id"]) == ["b", "a", "c"]


def test_missing_column_and_bad_rule_are_clear_errors():
    with pytest.raises(ValueError, match="missing column 'final_val_psnr'"):
        rank(FIVE.drop(columns="final_val_psnr"), FLOOR)
    rank(FIVE.drop(columns="final_val_psnr"))  # not needed without a floor
    with pytest.raises(ValueError, match="'status'"):
        pareto_front(FIVE.drop(columns="status"))
    with pytest.raises(ValueError, match="per_image_lpips_json"):
        select(FIVE.drop(columns="per_image_lpips_json"))
    with pytest.raises(ValueError, match="mode"):
        SelectionRule(mode="lowest")


def test_rank_on_a_large_random_table_matches_pandas():
    rng = np.random.default_rng(5)
    n = 300
    df = table(
        *[
            trial(
                f"t{i:03d}",
                rng.uniform(0.1, 0.4),
                rng.uniform(25, 30),
                status=rng.choice(["TERMINATED", "STOPPED", "ERROR", "RUNNING"], p=[0.5, 0.3, 0.1, 0.1]),
                loss__dp__mu=rng.choice([0.1, 0.5, math.inf]),
            )
            for i in range(n)
        ]
    )
    df.loc[rng.choice(n, 20, replace=False), "final_val_lpips"] = np.nan
    r = rank(df, SelectionRule(psnr_floor=27.0))
    ok = df[df.status.eq("TERMINATED") & df.final_val_lpips.notna()]
    feas = ok[ok.final_val_psnr >= 27.0]
    stopped = df[df.status.eq("STOPPED") & df.final_val_lpips.notna()]
    assert r.iloc[0]["trial_id"] == feas.loc[feas.final_val_lpips.idxmin(), "trial_id"]
    assert r["rank"].notna().sum() == len(ok) and r["may_win"].sum() == len(feas)
    assert r["may_win"].iloc[: len(feas)].all()
    assert set(r["trial_id"].iloc[len(ok) : len(ok) + len(stopped)]) == set(stopped.trial_id)
    assert (np.diff(r["final_val_lpips"].iloc[: len(feas)]) >= 0).all()


HAND = table(
    trial("A", 0.10, 25.0),  # extreme: best LPIPS
    trial("B", 0.20, 30.0),  # extreme: best PSNR
    trial("C", 0.15, 28.0),
    trial("D", 0.15, 28.0),  # duplicate of C: both stay
    trial("E", 0.18, 27.0),  # dominated by C
    trial("F", 0.10, 24.0),  # same LPIPS as A, lower PSNR: dominated
    trial("G", 0.25, 30.0),  # same PSNR as B, worse LPIPS: dominated
    trial("H", 0.05, 35.0, status="ERROR"),  # would dominate all, but crashed
    trial("I", float("nan"), 31.0),
    trial("J", 0.12, float("inf")),  # not finite: excluded
)


def test_pareto_front_by_hand():
    assert list(pareto_front(HAND)["trial_id"]) == ["A", "C", "D", "B"]


def dominates(p, q):
    return p[0] <= q[0] and p[1] >= q[1] and (p[0] < q[0] or p[1] > q[1])


def test_pareto_front_property_on_random_points():
    rng = np.random.default_rng(11)
    pts = np.round(rng.uniform(size=(200, 2)) * [0.3, 6] + [0.1, 25], 2)  # rounding makes ties
    df = table(*[trial(f"p{i}", lp, ps) for i, (lp, ps) in enumerate(pts)])
    front = pareto_front(df)
    fp = front[["final_val_lpips", "final_val_psnr"]].to_numpy()
    rest = df[~df.trial_id.isin(front.trial_id)][["final_val_lpips", "final_val_psnr"]].to_numpy()
    assert len(fp) >= 1 and len(fp) + len(rest) == 200
    assert not any(dominates(p, q) for q in fp for p in pts)
    assert all(any(dominates(p, q) for p in fp) for q in rest)
    assert (np.diff(fp[:, 0]) >= 0).all()


def with_images(df, n=5, sd=0.005):
    df = df.copy()
    rng = np.random.default_rng(0)
    for i, lp in enumerate(df["final_val_lpips"]):
        vals = lp + rng.normal(0, sd, n)
        df.loc[i, "per_image_lpips_json"] = json.dumps({f"im{k}": v for k, v in enumerate(vals)})
    return df


def test_select_tests_winner_against_the_next_trial_that_may_win():
    sel = select(with_images(FIVE, n=8), FLOOR)
    assert sel.winner["trial_id"] == "t2" and sel.runner_up["trial_id"] == "t3"
    assert isinstance(sel.test, PairedTest) and sel.test.n_images == 8 and sel.test.exact
    # t2's images sit 0.03 below t3's with noise 0.005: all 8 differences negative, so the
    # observed pattern and its mirror are the only extremes of 2^8: p = 2 / 256.
    assert sel.test.mean_diff == pytest.approx(-0.03, abs=0.01) and sel.test.p_value == 2 / 256
    assert sel.test.significant
    assert winner_config(sel.winner) == {"name": "t2", "loss": {"dp": {"mu": math.inf}}}
    assert select(FIVE, FLOOR).test is None and "no per-image LPIPS" in select(FIVE, FLOOR).note


def test_format_ranking_winner_first_and_significance_sentence():
    df = with_images(FIVE, n=8)
    df["param.loss.pixel.sa.lv.delta"] = [0.01, 0.02, 0.03, 0.04, float("nan")]
    df["param.loss.x.delta"] = ["a", "b", "c", "d", "e"]
    text = format_ranking(select(df, FLOOR))
    lines = text.splitlines()
    header = next(i for i, l in enumerate(lines) if l.startswith("rank"))
    assert set(lines[header + 1]) == {"-"}
    assert lines[header + 2].split()[:2] == ["1", "t2"] and lines[header + 3].split()[:2] == ["2", "t3"]
    for name in ("mu", "resnet_stage", "lv.delta", "x.delta", "LPIPS", "PSNR", "steps", "may_win"):
        assert name in lines[header].split()
    assert lines[-1].startswith("winner vs runner-up (t2 vs t3): mean LPIPS difference -0.0")
    assert "95% t-CI" in lines[-1] and "p = 0.00781" in lines[-1] and "8 images" in lines[-1]
    assert lines[-1].endswith(": significant at 0.05")
    rows = [l.split() for l in lines[header + 2 : header + 7]]
    assert [r[-1] for r in rows] == ["yes", "yes", "yes", "no", "no"]
    assert [r[-3] for r in rows] == ["100"] * 5  # steps
    same = FIVE.assign(per_image_lpips_json=json.dumps({f"i{k}": 0.2 for k in range(8)}))
    assert format_ranking(select(same, FLOOR)).endswith(
        "p = 1 (exact over 256 sign patterns, two-sided), 8 images: not significant at 0.05"
    )
    assert "significance not tested (no per-image LPIPS" in format_ranking(select(FIVE, FLOOR))


def test_two_images_are_never_called_significant():
    # The demo's old setup: 2 validation images, a large consistent difference.
    df = FIVE.copy()
    df["per_image_lpips_json"] = [json.dumps({"a": v, "b": v + 0.001}) for v in df["final_val_lpips"]]
    sel = select(df, FLOOR)
    line = format_ranking(sel).splitlines()[-1]
    assert sel.test.p_value is None and not sel.test.significant
    assert "too few images to test" in line and "significant" not in line and "2 images" in line


def test_sa_share_target_and_reached_side_by_side():
    df = FIVE.assign(
        **{"param.loss.pixel.sa.sa_share_target": [0.15, 0.17, 0.19, 0.1, 0.3], "sa_share_mean": 0.2}
    )
    text = format_ranking(select(df, FLOOR))
    lines = text.splitlines()
    head = next(l for l in lines if l.startswith("rank")).split()
    i = head.index("sa_share_target")
    assert head[i : i + 3] == ["sa_share_target", "sa_share", "sa_share_mean"] and head[i + 3] == "LPIPS"
    row = next(l.split() for l in lines if l.split()[:1] == ["1"])
    assert row[i : i + 3] == ["0.170", "0.150", "0.200"]
    assert (
        "sa_share_target: SA share of the generator loss asked for; sa_share: share reached (last value); "
        "sa_share_mean: share reached, mean over the GAN stage"
    ) in lines
    # the old key name (before the rename) gets the same clear header
    old = FIVE.assign(**{"param.loss.pixel.sa.sa_share": 0.15})
    lines = format_ranking(select(old, FLOOR)).splitlines()
    head = next(l for l in lines if l.startswith("rank")).split()
    assert head[head.index("sa_share_target") + 1] == "sa_share"
    assert (
        "sa_share_target: SA share of the generator loss asked for; sa_share: share reached (last value)"
        in lines
    )


def test_short_param_names_do_not_collide():
    names = short_param_names(
        ["param.loss.pixel.sa.lv.delta", "param.loss.x.delta", "param.loss.dp.mu", "param.a.b", "param.b"]
    )
    assert names == {
        "param.loss.pixel.sa.lv.delta": "lv.delta",
        "param.loss.x.delta": "x.delta",
        "param.loss.dp.mu": "mu",
        "param.a.b": "a.b",
        "param.b": "b",
    }
    assert short_param_names(["param.train.status"], reserved=["status"]) == {
        "param.train.status": "train.status"
    }


def test_select_survives_a_broken_per_image_score():
    df = with_images(FIVE)
    df.loc[1, "per_image_lpips_json"] = json.dumps({"im0": float("nan"), "im1": 0.2})
    sel = select(df, FLOOR)
    assert sel.winner["trial_id"] == "t2" and sel.test is None and "non-finite" in sel.note


def _state(metrics):
    """A sweep state with only what the selection rule reads."""
    from sweeper.state import SweepState
    from sweeper.sweep_config import validate_sweep

    sweep = validate_sweep(
        {
            "name": "s",
            "space": [{"path": "loss.dp.mu", "float": [0.2, 20]}],
            "objective": {"metrics": metrics},
        }
    )
    return SweepState.model_construct(sweep=sweep, bicubic_psnr=20.0, total_steps=100)


def test_the_declared_objective_picks_the_winner():
    """LPIPS and PSNR disagree: objective val_psnr max picks the best PSNR, not the best LPIPS."""
    from sweeper.best import objectives, selection_rule

    df = table(trial("lp", 0.10, 25.0), trial("ps", 0.30, 31.0), trial("mid", 0.20, 28.0))
    # the search-stage paired test runs on the per-image scores of the declared metric
    df["per_image_psnr_json"] = [
        json.dumps({f"i{k}": p + 0.1 * k for k in range(8)}) for p in df["final_val_psnr"]
    ]
    psnr = _state([{"name": "val_psnr", "mode": "max"}])
    sel = select(df, selection_rule(psnr))
    assert sel.winner["trial_id"] == "ps" and sel.runner_up["trial_id"] == "mid"
    assert sel.test.metric == "PSNR" and "mean PSNR difference 3" in significance_line(sel)
    lpips = _state([{"name": "val_lpips", "mode": "min"}])
    assert select(df, selection_rule(lpips)).winner["trial_id"] == "lp"
    two = _state([{"name": "val_ssim", "mode": "max"}, {"name": "val_lpips", "mode": "min"}])
    assert objectives(two) == [("final_val_ssim", "max"), ("final_val_lpips", "min")]
    assert selection_rule(two).metric == "final_val_ssim"
