"""The sweep's terminal and dashboard helpers on values: --set routing, --tiny, resume
checks, one metric format, ETA smoothing, labelled panels, config diff, ranked markdown."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest

from sweeper import overrides, report, terminal
from sweeper.plan import describe
from sweeper.space import Param
from trainables.config import ConfigError
from trainables.panels import LABELS, image_key, label_panels, sample_name


def test_set_routes_sweep_keys_to_the_sweep_and_others_to_the_experiment():
    to_sweep, to_exp = overrides.parse(
        [
            "budget.num_samples=2",
            "train.steps=20",
            "loss.dp.mu=.inf",
            "set.name=x",
            "scheduler.grace_period=1",
        ]
    )
    assert to_sweep == {"budget.num_samples": 2, "scheduler.grace_period": 1}
    assert to_exp == {"train.steps": 20, "loss.dp.mu": float("inf"), "name": "x"}
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        overrides.parse(["train.steps"])


def test_apply_merges_tiny_then_set_over_the_sweep_file():
    data = {
        "name": "s",
        "base": ["esrgan"],
        "set": {"train": {"steps": 400, "val_every": 100}},
        "budget": {"num_samples": 50},
        "resources": {"gpu": 1},
    }
    out = overrides.apply(data, ["budget.num_samples=2", "train.val_every=5"], tiny=True)
    assert out["budget"] == {"num_samples": 2} and out["resources"] == {"gpu": 0}
    assert out["scheduler"] == {"grace_period": 1}
    # tiny_cpu's steps (50) replace the file's 400; --set wins over both
    assert out["set"]["train"]["steps"] == 50 and out["set"]["train"]["val_every"] == 5
    assert out["set"]["backbones"] == {"weights": "random"}
    assert data["set"]["train"] == {"steps": 400, "val_every": 100}  # the input is not mutated
    assert overrides.tiny_overlay({"base": ["sa_vsr_lv"]})[0] == "tiny_cpu_video"
    assert overrides.tiny_overlay({"base": "esrgan"})[0] == "tiny_cpu"


def test_resume_accepts_the_launch_values_and_refuses_changes():
    state = types.SimpleNamespace(
        sweep=types.SimpleNamespace(model_dump=lambda mode: {"budget": {"num_samples": 2}}, base=["esrgan"]),
        experiment={"train": {"steps": 20}},
    )
    overrides.check_resume(state, ["budget.num_samples=2", "train.steps=20"], tiny=False)
    with pytest.raises(ConfigError, match="experiment key train.steps was 20 at launch, not 30"):
        overrides.check_resume(state, ["train.steps=30"], tiny=False)
    with pytest.raises(ConfigError, match="--tiny"):
        overrides.check_resume(state, [], tiny=True)


def test_one_metric_format_matches_the_ranking_table():
    assert terminal.fmt_metric("val_lpips", 0.021385) == "0.02139"
    assert terminal.fmt_metric("final_val_lpips", 0.2) == "0.20000"
    assert terminal.fmt_metric("val_psnr", 27.4567) == "27.46"
    assert terminal.fmt_metric("val_ssim", 0.73344) == "0.7334"
    assert terminal.fmt_metric("val_lpips", None) == "-"
    assert terminal.fmt_metric("val_lpips", float("nan")) == "-"


def _trial(tid, step):
    return types.SimpleNamespace(trial_id=tid, last_result={"step": step}, status="RUNNING")


def test_eta_is_an_ema_of_the_trained_steps_rate(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(terminal.time, "monotonic", lambda: now[0])
    cb = terminal.ProgressCallback("val_lpips", "min", num_samples=4, total_steps=100)
    assert cb.eta([_trial("a", 10)]) == "?"  # one sample: no rate yet
    now[0] = 110.0  # 10 more steps in 10 s: 1 step/s; remaining 80 + 3 x 100
    assert cb.eta([_trial("a", 20)]) == "~6.3 min"
    now[0] = 120.0  # 30 steps in 10 s: 3/s; EMA 0.3 * 3 + 0.7 * 1 = 1.6; remaining 350 -> 219 s
    assert cb.eta([_trial("a", 30), _trial("b", 20)]) == "~3.6 min"
    cb.ended["a"] = "stopped"  # a stopped trial has no remaining steps
    now[0] = 130.0  # no new steps: rate unchanged; remaining 80 + 2 x 100 = 280 / 1.6 = 175 s
    assert cb.eta([_trial("a", 30), _trial("b", 20)]) == "~2.9 min"


def test_a_diverged_trial_prints_as_failed_with_its_reason(capsys):
    cb = terminal.ProgressCallback("val_lpips", "min", num_samples=2, total_steps=4)
    reason = "diverged: step 1: loss is nan (non-finite terms: loss_vgg)"
    t = types.SimpleNamespace(trial_id="a", last_result={"step": 1, "failure": reason}, status="TERMINATED")
    cb.on_trial_complete(0, [t], t)
    line = capsys.readouterr().out.strip()
    assert line.endswith(
        f"trial a failed, not retried: {reason} | trials 1/2: running 0, finished 0, stopped 0, failed 1"
    )
    assert cb.ended == {"a": "failed"}


def test_label_panels_adds_a_caption_strip_and_keeps_the_pixels():
    grid = (np.arange(24 * 96 * 3) % 251).astype(np.uint8).reshape(24, 96, 3)
    out = label_panels(grid, min_panel=0, per_row=4)  # as is, one strip
    assert out.shape == (16 + 24, 96, 3) and (out[16:] == grid).all()
    for i in range(len(LABELS)):  # every panel's caption has white text pixels
        assert out[:16, i * 24 : (i + 1) * 24].max() > 200
    # by default: panels enlarged nearest-neighbour to >= 256 px (24 px -> 11x = 264 px),
    # LR | bicubic over SR | HR, each under its 32 px caption
    big = label_panels(grid)
    assert big.shape == (2 * (32 + 264), 2 * 264, 3)
    lr, sr = big[32 : 32 + 264, :264], big[2 * 32 + 264 :, :264]
    assert (lr[::11, ::11] == grid[:, :24]).all() and (sr[::11, ::11] == grid[:, 48:72]).all()
    assert (lr.reshape(24, 11, 264, 3) == lr[::11, None]).all()  # sharp blocks, no blur
    for top in (0, 32 + 264):  # every caption has white text pixels
        for x in (0, 264):
            assert big[top : top + 32, x : x + 264].max() > 200
    assert sample_name("val_sample_0_chelsea") == "chelsea" and sample_name("other") == "other"
    with pytest.raises(ValueError, match="not 4 equal panels"):
        label_panels(grid[:, :95])
    assert image_key(1, "img 003.png") == "val_sample_1_img_003.png"


def test_config_diff_lists_only_differing_leaves():
    a = {"name": "t1", "loss": {"dp": {"mu": 0.5}, "fm": {"blocks": [0, 1]}}, "train": {"steps": 60}}
    b = {"name": "t2", "loss": {"dp": {"mu": 2.0}, "fm": {"blocks": [0, 1]}}, "train": {"steps": 60}}
    assert report.config_diff(a, b) == [("loss.dp.mu", 0.5, 2.0)]


def test_ranked_markdown_uses_short_names_and_the_metric_format():
    ranked = pd.DataFrame(
        {
            "rank": [1.0, np.nan],
            "trial_id": ["a", "b"],
            "param.loss.dp.mu": [0.5, 2.0],
            "final_val_lpips": [0.021385, 0.3],
            "final_val_psnr": [27.456, 26.0],
            "status": ["TERMINATED", "STOPPED"],
        }
    )
    md = report.ranked_markdown(ranked, {"loss.dp.mu": "mu"}).splitlines()
    assert md[0] == "| rank | trial_id | mu | final_val_lpips | final_val_psnr | status |"
    assert md[2] == "| 1 | a | 0.5 | 0.02139 | 27.46 | TERMINATED |"
    assert md[3] == "| - | b | 2.0 | 0.30000 | 26.00 | STOPPED |"


def test_plan_describes_each_kind_of_range():
    assert (
        describe(
            Param.model_validate(
                {"path": "loss.dp.mu", "float": [0.2, 20], "log": True, "or": [float("inf")]}
            )
        )
        == "float [0.2, 20] log, or .inf"
    )
    assert (
        describe(Param.model_validate({"path": "loss.fm.blocks", "first_k": [1, 10]}))
        == "first k blocks, k in 1..10"
    )
    assert (
        describe(Param.model_validate({"path": "loss.perceptual.layer", "choices": ["conv3_4", "conv5_4"]}))
        == "one of conv3_4 | conv5_4"
    )
