"""Winner selection on hand-made results tables (the schema the sweep driver builds)."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from sweeper.select import (BootstrapResult, NoWinnerError, SelectionRule, format_ranking, paired_bootstrap,
                            pareto_front, rank, select, short_param_names, winner_config)


def trial(tid, lpips, psnr, status="TERMINATED", ssim=0.70, per_image=None, **params):
    row = {"trial_id": tid, "status": status, "mlflow_run_id": f"run-{tid}", "steps": 100, "time_s": 12.5,
           "final_val_lpips": lpips, "final_val_psnr": psnr, "final_val_ssim": ssim,
           "best_val_lpips": lpips, "best_val_psnr": psnr, "best_val_ssim": ssim,
           "sa_share": 0.15, "beta2": 20.0, "param.loss.dp.mu": 0.5, "param.loss.dp.resnet_stage": 3,
           "config_json": json.dumps({"name": tid, "loss": {"dp": {"mu": math.inf}}}),
           "per_image_lpips_json": json.dumps(per_image) if per_image is not None else None,
           "checkpoint": f"/ckpt/{tid}/last.pt"}
    row.update({f"param.{k.replace('__', '.')}": v for k, v in params.items()})
    return row


def table(*rows):
    return pd.DataFrame(list(rows))


FIVE = table(
    trial("t1", 0.20, 27.0),   # best LPIPS, below the floor
    trial("t2", 0.22, 28.5),   # the winner
    trial("t3", 0.25, 29.0),
    trial("t4", 0.21, 27.5),   # below the floor
    trial("t5", 0.30, 28.0),   # exactly on the floor: feasible
)
FLOOR = SelectionRule(psnr_floor=28.0)


def by_id(df, col):
    return dict(zip(df["trial_id"], df[col]))


def test_rank_by_hand_with_a_floor_that_excludes_the_best_lpips():
    r = rank(FIVE, FLOOR)
    assert list(r["trial_id"]) == ["t2", "t3", "t5", "t1", "t4"]
    assert list(r["rank"]) == [1, 2, 3, 4, 5]
    assert by_id(r, "feasible") == {"t1": False, "t2": True, "t3": True, "t4": False, "t5": True}
    assert select(FIVE, FLOOR).winner["trial_id"] == "t2"
    # without a floor the best LPIPS wins and everything finished is feasible
    r = rank(FIVE)
    assert list(r["trial_id"]) == ["t1", "t4", "t2", "t3", "t5"] and r["feasible"].all()
    assert len(FIVE) == 5 and "rank" not in FIVE.columns  # input untouched


def test_error_unfinished_and_nan_rows_are_last_and_never_win():
    df = pd.concat([table(
        trial("e1", 0.01, 40.0, status="ERROR"),          # fantastic numbers, but it crashed
        trial("r1", 0.02, 39.0, status="RUNNING"),
        trial("n1", float("nan"), 30.0),                   # finished, no LPIPS
        trial("s1", 0.215, 28.2, status="STOPPED"),         # ASHA-stopped trials compete
    ), FIVE], ignore_index=True)
    r = rank(df, FLOOR)
    assert list(r["trial_id"]) == ["s1", "t2", "t3", "t5", "t1", "t4", "e1", "r1", "n1"]
    assert list(r["rank"][:6]) == [1, 2, 3, 4, 5, 6] and r["rank"][6:].isna().all()
    assert not r["feasible"][6:].any()
    sel = select(df, FLOOR)
    assert sel.winner["trial_id"] == "s1" and sel.runner_up["trial_id"] == "t2"


def test_no_feasible_trial_raises_one_line():
    with pytest.raises(NoWinnerError) as e:
        select(FIVE, SelectionRule(psnr_floor=30.0))
    msg = str(e.value)
    assert "\n" not in msg and "5 trials" in msg and "29.00" in msg and "30.00" in msg
    assert list(e.value.ranked["trial_id"])[0] == "t1"  # the table is still there to report
    with pytest.raises(NoWinnerError, match="none finished"):
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
    df = table(*[trial(f"t{i:03d}", rng.uniform(0.1, 0.4), rng.uniform(25, 30),
                       status=rng.choice(["TERMINATED", "STOPPED", "ERROR", "RUNNING"], p=[.5, .3, .1, .1]),
                       loss__dp__mu=rng.choice([0.1, 0.5, math.inf])) for i in range(n)])
    df.loc[rng.choice(n, 20, replace=False), "final_val_lpips"] = np.nan
    r = rank(df, SelectionRule(psnr_floor=27.0))
    ok = df[df.status.isin(["TERMINATED", "STOPPED"]) & df.final_val_lpips.notna()]
    feas = ok[ok.final_val_psnr >= 27.0]
    assert r.iloc[0]["trial_id"] == feas.loc[feas.final_val_lpips.idxmin(), "trial_id"]
    assert r["rank"].notna().sum() == len(ok) and r["feasible"].sum() == len(feas)
    assert r["feasible"].iloc[:len(feas)].all()
    assert (np.diff(r["final_val_lpips"].iloc[:len(feas)]) >= 0).all()


HAND = table(
    trial("A", 0.10, 25.0),                     # extreme: best LPIPS
    trial("B", 0.20, 30.0),                     # extreme: best PSNR
    trial("C", 0.15, 28.0),
    trial("D", 0.15, 28.0),                     # duplicate of C: both stay
    trial("E", 0.18, 27.0),                     # dominated by C
    trial("F", 0.10, 24.0),                     # same LPIPS as A, lower PSNR: dominated
    trial("G", 0.25, 30.0),                     # same PSNR as B, worse LPIPS: dominated
    trial("H", 0.05, 35.0, status="ERROR"),     # would dominate all, but crashed
    trial("I", float("nan"), 31.0),
    trial("J", 0.12, float("inf")),             # not finite: excluded
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


NAMES = [f"img_{i:03d}" for i in range(8)]
BASE = {n: v for n, v in zip(NAMES, [0.20, 0.30, 0.35, 0.25, 0.40, 0.22, 0.31, 0.28])}


def test_bootstrap_identical_is_zero_and_not_significant():
    r = paired_bootstrap(BASE, dict(BASE))
    assert r.mean_diff == 0 and r.ci_low <= 0 <= r.ci_high and not r.significant and r.n_images == 8


def test_bootstrap_constant_shift_is_exact():
    # For b in [0.08125, 0.1125) the double b - 0.05 is exact, so each difference is
    # exactly -0.05 and so is every resampled mean (8 equal terms sum exactly).
    b = dict(zip(NAMES, [0.082, 0.085, 0.09, 0.095, 0.1, 0.104, 0.108, 0.112]))
    a = {n: v - 0.05 for n, v in b.items()}
    assert all(a[n] - b[n] == -0.05 for n in NAMES)
    r = paired_bootstrap(a, b)
    assert r.mean_diff == -0.05 and r.ci_low == -0.05 and r.ci_high == -0.05
    assert r.p_value == 0 and r.significant


def test_bootstrap_noisy_case_matches_a_direct_numpy_bootstrap():
    rng = np.random.default_rng(3)
    names = [f"im{i}" for i in range(12)]
    a = dict(zip(names, rng.uniform(0.1, 0.4, 12)))
    b = {n: a[n] + e for n, e in zip(names, rng.normal(0.01, 0.03, 12))}
    r = paired_bootstrap(a, b, n_boot=5000, seed=7)
    d = np.array([a[n] - b[n] for n in sorted(names)])
    g = np.random.default_rng(7)
    means = d[g.integers(0, len(d), size=(5000, len(d)))].mean(axis=1)
    assert r.mean_diff == np.mean(d)
    assert (r.ci_low, r.ci_high) == tuple(np.percentile(means, [2.5, 97.5]))
    assert r.p_value == np.mean(means >= 0) and r.n_boot == 5000
    assert paired_bootstrap(a, b, n_boot=5000, seed=7) == r  # reproducible


def test_bootstrap_uses_only_common_images_and_needs_one():
    a = {**BASE, "only_a": 9.0}
    b = {n: v + 0.01 for n, v in BASE.items()} | {"only_b": -9.0}
    assert paired_bootstrap(a, b) == paired_bootstrap(BASE, {n: b[n] for n in NAMES})
    assert paired_bootstrap(a, b).n_images == 8
    with pytest.raises(ValueError, match="no image in common"):
        paired_bootstrap({"x": 0.1}, {"y": 0.2})
    one = paired_bootstrap({"x": 0.1}, {"x": 0.3})  # one image: the CI is a point
    assert one.ci_low == one.ci_high == pytest.approx(-0.2) and one.n_images == 1


def with_images(df):
    df = df.copy()
    rng = np.random.default_rng(0)
    for i, lp in enumerate(df["final_val_lpips"]):
        vals = lp + rng.normal(0, 0.005, 5)
        df.loc[i, "per_image_lpips_json"] = json.dumps({f"im{k}": v for k, v in enumerate(vals)})
    return df


def test_select_bootstraps_winner_against_the_next_feasible_trial():
    sel = select(with_images(FIVE), FLOOR, n_boot=2000)
    assert sel.winner["trial_id"] == "t2" and sel.runner_up["trial_id"] == "t3"
    assert isinstance(sel.bootstrap, BootstrapResult) and sel.bootstrap.n_images == 5
    assert sel.bootstrap.mean_diff == pytest.approx(-0.03, abs=0.01) and sel.bootstrap.significant
    assert winner_config(sel.winner) == {"name": "t2", "loss": {"dp": {"mu": math.inf}}}
    assert select(FIVE, FLOOR).bootstrap is None and "no per-image LPIPS" in select(FIVE, FLOOR).note


def test_format_ranking_winner_first_and_significance_sentence():
    df = with_images(FIVE)
    df["param.loss.pixel.sa.lv.delta"] = [0.01, 0.02, 0.03, 0.04, float("nan")]
    df["param.loss.x.delta"] = ["a", "b", "c", "d", "e"]
    text = format_ranking(select(df, FLOOR, n_boot=2000))
    lines = text.splitlines()
    header = next(i for i, l in enumerate(lines) if l.startswith("rank"))
    assert set(lines[header + 1]) == {"-"}
    assert lines[header + 2].split()[:2] == ["1", "t2"] and lines[header + 3].split()[:2] == ["2", "t3"]
    for name in ("mu", "resnet_stage", "lv.delta", "x.delta", "LPIPS", "PSNR", "feasible"):
        assert name in lines[header].split()
    assert lines[-1].startswith("winner vs runner-up (t2 vs t3): mean LPIPS difference -0.0")
    assert "95% CI" in lines[-1] and "5 images" in lines[-1] and lines[-1].endswith(": significant")
    last_rows = [l.split() for l in lines[header + 2:-1]]
    assert [r[-1] for r in last_rows] == ["yes", "yes", "yes", "no", "no"]
    same = FIVE.assign(per_image_lpips_json=json.dumps({"a": 0.2, "b": 0.3}))
    assert format_ranking(select(same, FLOOR)).endswith(": not significant")
    assert "significance not tested (no per-image LPIPS" in format_ranking(select(FIVE, FLOOR))


def test_short_param_names_do_not_collide():
    names = short_param_names(["param.loss.pixel.sa.lv.delta", "param.loss.x.delta", "param.loss.dp.mu",
                               "param.a.b", "param.b"])
    assert names == {"param.loss.pixel.sa.lv.delta": "lv.delta", "param.loss.x.delta": "x.delta",
                     "param.loss.dp.mu": "mu", "param.a.b": "a.b", "param.b": "b"}
    assert short_param_names(["param.train.status"], reserved=["status"]) == {"param.train.status": "train.status"}


def test_select_survives_a_broken_per_image_score():
    df = with_images(FIVE)
    df.loc[1, "per_image_lpips_json"] = json.dumps({"im0": float("nan"), "im1": 0.2})
    sel = select(df, FLOOR)
    assert sel.winner["trial_id"] == "t2" and sel.bootstrap is None and "non-finite" in sel.note
