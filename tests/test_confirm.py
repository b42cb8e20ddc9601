"""Held-out splits, seeds and the confirmation's decision, without Ray (the end-to-end run
through the CLI is tests/test_sweep.py::test_confirmation_end_to_end_and_resume)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from sweeper.claim import PAIRED
from sweeper.confirm_report import decide, summary_lines, table_lines
from sweeper.preflight import PreflightError, check_test_overlap
from sweeper.state import SweepState
from sweeper.sweep_config import validate_sweep
from trainables.config import DataConfig
from trainables.data import embedded
from trainables.splits import content_hashes, open_split


def test_embedded_train_val_test_are_disjoint_by_content():
    splits = {s: embedded(s) for s in ("train", "val", "test")}
    assert len(splits["test"]) >= 8 and len(splits["val"]) >= 8
    hashes = {s: set(content_hashes(d)) for s, d in splits.items()}
    assert all(len(hashes[s]) == len(splits[s]) for s in splits)  # no duplicate inside a split
    assert not hashes["test"] & hashes["val"] and not hashes["test"] & hashes["train"]
    assert not hashes["val"] & hashes["train"]
    assert not set(splits["test"].names) & (set(splits["val"].names) | set(splits["train"].names))
    for i in range(len(splits["test"])):
        hr, lr = splits["test"].pair(i)
        assert hr.shape[0] >= 96 and hr.shape[1] >= 96 and hr.std() > 10  # val_crop 96 fits
    check_test_overlap(splits, allowed=False)


def test_test_split_sharing_a_val_image_is_refused(tiny_data, tmp_path):
    """Same pixels under another name still count as overlap; allow_test_overlap lets it through."""
    test = tmp_path / "test"
    test.mkdir()
    shutil.copy(tiny_data / "val" / "HR" / "img_002.png", test / "renamed.png")
    shutil.copy(
        tiny_data / "train" / sorted(p.name for p in (tiny_data / "train").iterdir())[0], test / "b.png"
    )
    data = DataConfig(train=str(tiny_data / "train"), val=str(tiny_data / "val"), test=str(test))
    splits = {s: open_split(data, 4, s, cache=False) for s in ("train", "val", "test")}
    with pytest.raises(PreflightError, match=r"data\.test: 1 image\(s\) also in data\.val .*renamed"):
        check_test_overlap(splits, allowed=False)
    check_test_overlap(splits, allowed=True)
    sweep = validate_sweep({"name": "s", "space": [{"path": "loss.dp.mu", "float": [0.2, 20]}]})
    assert sweep.allow_test_overlap is False  # refused unless the sweep says so


def test_holdout_validates_on_the_last_training_images_and_training_skips_them(tiny_data):
    names = sorted(p.stem for p in (tiny_data / "train").iterdir())
    data = DataConfig(train=str(tiny_data / "train"), val="holdout", holdout=1)
    assert open_split(data, 4, "val").names == names[-1:]
    assert open_split(data, 4, "train").names == names[:-1]
    with pytest.raises(ValueError, match="holdout"):
        DataConfig(train=str(tiny_data / "train"), holdout=1)


def _state(**sweep_keys):
    sweep = validate_sweep({"name": "s", "space": [{"path": "loss.dp.mu", "float": [0.2, 20]}], **sweep_keys})
    return SweepState.model_construct(
        sweep=sweep, experiment={"seed": 3, "data": {"test": "embedded"}}, sweep_dir="/nonexistent"
    )


def test_seed_policy_and_trial_count():
    assert _state().trial_seed("abc_00004") == 3  # same: the experiment's seed for every trial
    per = _state(seeds={"search": "per_trial", "base": 10})
    assert [per.trial_seed(f"abc_{i:05d}") for i in range(3)] == [11, 12, 13]
    grid = validate_sweep(
        {
            "name": "g",
            "space": [{"path": "loss.dp.mu", "grid": [0.5, 1.0, 2.0]}],
            "search": {"algorithm": "grid"},
            "budget": {"num_samples": 2},
        }
    )
    from sweeper.preflight import planned_trials

    assert grid.planned_trials == planned_trials(grid) == 6  # Ray repeats the grid num_samples times
    assert (
        validate_sweep(
            {"name": "s", "space": [{"path": "loss.dp.mu", "float": [0.2, 20]}], "confirm": False}
        ).confirm
        is None
    )


def _confirm_rows(means: dict, seeds=(10000, 10001, 10002), images=8, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for tid, (lp, ps) in means.items():
        for s in seeds:
            shift = rng.normal(0, 1e-3)
            per = {
                f"im{i}": {"lpips": lp + shift + 0.01 * i, "psnr": ps + 10 * shift, "ssim": 0.8}
                for i in range(images)
            }
            rows.append(
                {
                    "trial_id": tid,
                    "seed": s,
                    "status": "FINISHED",
                    "test_lpips": float(np.mean([v["lpips"] for v in per.values()])),
                    "test_psnr": ps + 10 * shift,
                    "test_ssim": 0.8,
                    "per_image_json": json.dumps(per),
                }
            )
    return pd.DataFrame(rows)


def test_confirmation_winner_follows_the_objective_and_says_when_the_search_winner_loses():
    df = _confirm_rows({"a": (0.30, 25.0), "b": (0.20, 24.0), "c": (0.25, 26.0)})
    lp = _state()
    conf = decide(lp, df)
    assert conf.winner == "b" and conf.runner_up == "c" and conf.metric == "test_lpips"
    assert list(conf.table["n_seeds"]) == [3, 3, 3] and conf.claim.method == PAIRED
    lines = summary_lines(lp, conf, "a", 8)
    assert lines[0].startswith("the search winner a loses the confirmation")
    assert "seeds [10000, 10001, 10002]" in lines[1] and "data.test = embedded" in lines[1]
    assert PAIRED in lines[1]
    assert "per-seed test_lpips" in table_lines(conf, {"a": 1, "b": 2, "c": 3})[0]
    ps = _state(objective={"metrics": [{"name": "val_psnr", "mode": "max"}]})
    conf = decide(ps, df)
    assert conf.winner == "c" and conf.metric == "test_psnr"
    assert len(summary_lines(ps, conf, "c", 8)) == 1  # the search winner won: no "loses" line


def test_one_seed_per_finalist_makes_no_claim():
    conf = decide(_state(), _confirm_rows({"a": (0.3, 25.0), "b": (0.2, 24.0)}, seeds=(10000,)))
    assert conf.claim.p_value is None and "no claim" in conf.claim.describe()


def test_allowed_overlap_is_said_in_every_confirmation_line():
    from sweeper.confirm import split_label

    st = _state(allow_test_overlap=True)
    assert "NOT held-out" in split_label(st)
    conf = decide(st, _confirm_rows({"a": (0.3, 25.0), "b": (0.2, 24.0)}))
    assert all("NOT held-out" in line for line in summary_lines(st, conf, "b", 8))
    assert "NOT held-out" not in split_label(_state())
