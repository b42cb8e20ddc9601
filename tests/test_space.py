"""Search spaces and sweep files: every YAML in search_spaces/ loads, compiles, samples
valid configs; decoding conventions are exact; bad sweep files fail with one line."""

import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import FixedTrial

from sweeper.space import Param, compile_space, decode, grid_points
from sweeper.sweep_config import encode, experiment_at, experiment_dict, load_sweep, validate_sweep
from trainables.config import ConfigError, validate
from trainables.config_files import nested

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "search_spaces").glob("*.yaml"))
optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_the_expected_sweeps_are_there():
    assert {p.stem for p in SWEEPS} >= {"demo", "sa_esrgan", "dp_grid", "dp_optuna", "fm", "combined"}


def _check_assignments(params: list[Param], out: dict) -> set:
    """Every top-level key present and within its entry's bounds; children exactly when
    their branch is the chosen value. Returns the paths it accounted for."""
    seen = set()
    for p in params:
        assert p.path in out, p.path
        v, kind = out[p.path], p.kind
        seen.add(p.path)
        if kind in ("float", "int"):
            lo, hi = p.float_ or p.int_
            if not (p.or_ and any(v == c for c in p.or_)):
                assert lo <= v <= hi and (kind == "float" or isinstance(v, int)), (p.path, v)
        elif kind in ("choices", "grid"):
            assert v in (p.choices or p.grid)
            for key, kids in (p.when or {}).items():
                if key == v:
                    seen |= _check_assignments(kids, out)
                else:
                    assert not {k.path for k in kids} & set(out), f"{p.path}={v}: other branch's children set"
        elif kind == "first_k":
            assert v == list(range(len(v))) and p.first_k[0] <= len(v) <= p.first_k[1]
        else:
            assert v and v == sorted(v) and set(v) <= set(p.subset)
    return seen


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_samples_valid_configs_with_tpe(path):
    sweep = load_sweep(path)
    exp, fn = experiment_dict(sweep, path), compile_space(sweep.space)
    sampled = []

    def objective(trial):
        assert fn(trial) is None  # constants-free: everything comes back through decode
        out = decode(trial.params)
        assert _check_assignments(sweep.space, out) == set(out)
        cfg = experiment_at(exp, out, f"{path.name} trial {trial.number}")
        sampled.append(out)
        return cfg.loss.pixel.beta1 + len(out)  # any number: the sampler only needs feedback

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for point in sweep.search.points_to_evaluate:
        study.enqueue_trial(point)
    study.optimize(objective, n_trials=20)
    assert len(sampled) == 20
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_dumped_sweep_reloads_unchanged(path):
    """What the runner logs (model_dump, as YAML) is a sweep file again: inf stays .inf,
    aliases (float, or) are used, encoded points_to_evaluate are kept."""
    sweep = load_sweep(path)
    text = yaml.safe_dump(sweep.model_dump(mode="json"))
    assert ".inf" in text or "inf" not in yaml.safe_dump(yaml.safe_load(path.read_text()))
    assert validate_sweep(yaml.safe_load(text), "dump") == sweep


def test_demo_sweep_settings():
    sweep = load_sweep(REPO / "search_spaces" / "demo.yaml")
    cfg = validate(experiment_dict(sweep, REPO / "search_spaces" / "demo.yaml"))
    assert cfg.model.discriminator.arch == "vgg"  # 10 D blocks: fm.blocks first_k up to 10
    assert (cfg.train.pretrain_steps, cfg.train.steps, cfg.train.val_every) == (150, 60, 15)
    assert cfg.backbones.weights == "random" and cfg.data.train == "embedded"
    assert [p.path for p in sweep.space] == [
        "loss.pixel.sa.sa_share_target",
        "loss.dp.mu",
        "loss.dp.resnet_stage",
        "loss.fm.blocks",
        "loss.perceptual.layer",
    ]
    assert sweep.search.algorithm == "tpe" and sweep.selection.psnr_margin == -1.0
    assert sweep.experiment_name == "srsweep-demo"


def test_algorithm_defaults_follow_the_number_of_metrics():
    assert load_sweep(REPO / "search_spaces" / "combined.yaml").search.algorithm == "nsga2"
    assert load_sweep(REPO / "search_spaces" / "dp_optuna.yaml").search.algorithm == "tpe"


# ------------------------------------------------------------ exact decoded values
def _decoded(sweep_name: str, params: dict) -> dict:
    sweep = load_sweep(REPO / "search_spaces" / f"{sweep_name}.yaml")
    trial = FixedTrial(params)
    compile_space(sweep.space)(trial)
    assert trial.params == params  # every given param was asked for, nothing else
    return decode(trial.params)


def test_mu_vgg_only_branch():
    assert _decoded("dp_optuna", {"loss.dp.mu#choice": "inf", "loss.dp.resnet_stage": 2}) == {
        "loss.dp.mu": math.inf,
        "loss.dp.resnet_stage": 2,
    }
    assert _decoded(
        "dp_optuna", {"loss.dp.mu#choice": "range", "loss.dp.mu": 0.7, "loss.dp.resnet_stage": 3}
    ) == {"loss.dp.mu": 0.7, "loss.dp.resnet_stage": 3}


def test_canny_branch_brings_its_children_only():
    canny = {
        "loss.pixel.sa.sa_share_target": 0.2,
        "loss.pixel.sa.edge": "canny",
        "loss.pixel.sa.canny.low": 80,
        "loss.pixel.sa.canny.high": 210,
    }
    assert _decoded("sa_esrgan", canny) == canny
    lv = {"loss.pixel.sa.sa_share_target": 0.1, "loss.pixel.sa.edge": "lv", "loss.pixel.sa.lv.delta": 0.02}
    assert _decoded("sa_esrgan", lv) == lv


def test_subset_and_first_k():
    flags = {f"loss.fm.blocks#{i}": i in (0, 2) for i in range(8)}
    assert _decoded("fm", {**flags, "loss.fm.weight": 2.0, "loss.perceptual.weight": 0.5}) == {
        "loss.fm.blocks": [0, 2],
        "loss.fm.weight": 2.0,
        "loss.perceptual.weight": 0.5,
    }
    none = {f"loss.fm.blocks#{i}": False for i in range(8)}  # all off reads as "no restriction"
    assert decode(none) == {"loss.fm.blocks": list(range(8))}
    assert decode({"loss.fm.blocks": 3}) == {"loss.fm.blocks": [0, 1, 2]}


def test_combined_full_assignment_and_overrides():
    params = {
        "loss.pixel.sa.sa_share_target": 0.15,
        "loss.pixel.sa.edge": "lv",
        "loss.pixel.sa.lv.delta": 0.01,
        "loss.dp.mu#choice": "inf",
        "loss.dp.resnet_stage": 4,
        "loss.fm.blocks": 4,
        "loss.perceptual.layer": "conv4_4",
    }
    out = _decoded("combined", params)
    assert out == {
        "loss.pixel.sa.sa_share_target": 0.15,
        "loss.pixel.sa.edge": "lv",
        "loss.pixel.sa.lv.delta": 0.01,
        "loss.dp.mu": math.inf,
        "loss.dp.resnet_stage": 4,
        "loss.fm.blocks": [0, 1, 2, 3],
        "loss.perceptual.layer": "conv4_4",
    }
    assert nested(out)["loss"]["dp"] == {"mu": math.inf, "resnet_stage": 4}
    assert nested(out)["loss"]["pixel"]["sa"] == {
        "sa_share_target": 0.15,
        "edge": "lv",
        "lv": {"delta": 0.01},
    }


def test_int_step_and_log_distributions():
    fn = compile_space(
        [
            {"path": "train.steps", "int": [10, 20], "step": 5},
            {"path": "loss.adv.weight", "float": [1e-3, 1e-2], "log": True},
        ]
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(lambda t: fn(t) or 0.0, n_trials=15)
    assert {t.params["train.steps"] for t in study.trials} <= {10, 15, 20}
    assert study.trials[0].distributions["loss.adv.weight"].log


def test_points_to_evaluate_are_written_as_config_values():
    sweep = load_sweep(REPO / "search_spaces" / "dp_optuna.yaml")
    assert sweep.search.points_to_evaluate == [
        {"loss.dp.mu#choice": "range", "loss.dp.mu": 0.5, "loss.dp.resnet_stage": 3},
        {"loss.dp.mu#choice": "inf", "loss.dp.resnet_stage": 3},
    ]
    fm = load_sweep(REPO / "search_spaces" / "fm.yaml").search.points_to_evaluate[0]
    assert decode(fm)["loss.fm.blocks"] == list(range(8))
    combined = load_sweep(REPO / "search_spaces" / "combined.yaml").space
    assert encode(
        combined, {"loss.fm.blocks": [0, 1, 2], "loss.pixel.sa.edge": "canny", "loss.pixel.sa.canny.low": 60}
    ) == {"loss.fm.blocks": 3, "loss.pixel.sa.edge": "canny", "loss.pixel.sa.canny.low": 60}
    with pytest.raises(ValueError, match=r"loss.fm.blocks: \[1, 2\] is not list\(range\(k\)\)"):
        encode(combined, {"loss.fm.blocks": [1, 2]})
    with pytest.raises(ValueError, match="loss.pixel.sa.lv.delta: not a parameter of the space"):
        encode(combined, {"loss.pixel.sa.edge": "canny", "loss.pixel.sa.lv.delta": 0.01})


def test_dp_grid_is_the_papers_mu_by_stage_product():
    sweep = load_sweep(REPO / "search_spaces" / "dp_grid.yaml")
    assert sweep.search.algorithm == "grid"
    points = grid_points(sweep.space)
    mus, stages = [0.2, 0.5, 1, 5, 10, 20, math.inf], [1, 2, 3, 4]
    assert points == [{"loss.dp.mu": m, "loss.dp.resnet_stage": s} for m in mus for s in stages]
    assert [decode(p) for p in points] == points


def test_ray_optuna_search_drives_the_compiled_space():
    from ray.tune.search.optuna import OptunaSearch

    sweep = load_sweep(REPO / "search_spaces" / "combined.yaml")
    search = OptunaSearch(
        space=compile_space(sweep.space),
        metric=["val_lpips", "val_psnr"],
        mode=["min", "max"],
        sampler=optuna.samplers.NSGAIISampler(seed=0),
    )
    exp = experiment_dict(sweep, REPO / "search_spaces" / "combined.yaml")
    for i in range(3):
        config = search.suggest(f"t{i}")
        experiment_at(exp, decode(config), "combined")
        search.on_trial_complete(f"t{i}", {"val_lpips": 0.3 - 0.1 * i, "val_psnr": 20.0 + i})


# --------------------------------------------------------------------- bad files
BASE = {
    "name": "bad",
    "base": "esrgan_dp",
    "space": [{"path": "loss.dp.mu", "float": [0.1, 20], "log": True}],
}


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"budgett": {"num_samples": 2}},
            "budgett: unknown key (allowed: name, base, set, space, objective, search, budget, scheduler, resources, "
            "failure, selection, constraint, seeds, confirm, allow_test_overlap)",
        ),
        (
            {
                "space": [
                    {"path": "loss.dp.mu", "float": [0.1, 1]},
                    {"path": "loss.dp.resnet_stage", "choices": [1, 2]},
                    {"path": "loss.dp.mux", "float": [0.1, 1]},
                ]
            },
            "space[2].path: loss.dp.mux is not a config key",
        ),
        (
            {"space": [{"path": "model.generator.num_feat", "int": [8, 64]}]},
            "space[0].path: model.generator.num_feat cannot be searched (the shared pretraining fixes model and data)",
        ),
        (
            {"space": [{"path": "data.patch_size", "choices": [64, 128]}]},
            "space[0].path: data.patch_size cannot be searched (the shared pretraining fixes model and data)",
        ),
        (
            {"space": [{"path": "loss.dp.mu", "float": [0.3, 0.3]}]},
            "space[0].float: low (0.3) must be < high (0.3)",
        ),
        (
            {"space": [{"path": "loss.perceptual.layer", "choices": []}]},
            "space[0].choices: must list at least one value",
        ),
        (
            {
                "space": [
                    {
                        "path": "loss.pixel.criterion",
                        "choices": ["l1", "l2"],
                        "when": {"l3": [{"path": "loss.dp.mu", "float": [0.1, 1]}]},
                    }
                ]
            },
            "space[0].when: 'l3' is not one of the choices 'l1', 'l2'",
        ),
        (
            {"space": [{"path": "loss.dp.mu", "flaot": [0.1, 1]}]},
            "space[0].flaot: unknown key (allowed: path, float, int, log, step, or, choices, grid, first_k, subset, when)",
        ),
        (
            {"space": [{"path": "loss.dp.resnet_stage", "choices": [1, 5]}]},
            "space[0].choices: 5 is not one of 1, 2, 3, 4",
        ),
        (
            {"space": [{"path": "loss.dp.mu", "float": [0.1, 1]}, {"path": "loss.dp.mu", "float": [1, 2]}]},
            "space[1].path: loss.dp.mu is searched twice (also space[0].path)",
        ),
        (
            {"space": [{"path": "loss.fm.blocks", "first_k": [1, 8]}]},
            "space[0].path: loss.fm.blocks: the experiment (base + set) has no loss.fm section; add it under set",
        ),
        (
            {"search": {"points_to_evaluate": [{"loss.dp.mu": 50}]}},
            "search.points_to_evaluate[0]: loss.dp.mu: 50 is not a float in [0.1, 20]",
        ),
        (
            {"objective": {"metrics": [{"name": "val_lpipz", "mode": "min"}]}},
            "objective.metrics[0].name: 'val_lpipz' is not one of 'val_lpips', 'val_psnr', 'val_ssim'",
        ),
    ],
)
def test_bad_sweep_files_fail_with_one_line(tmp_path, change, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, **change}))
    with pytest.raises(ConfigError) as exc:
        load_sweep(path)
    assert str(exc.value) == f"{path}: {message}"


def test_space_at_its_first_values_must_validate(tmp_path):
    """DP needs the VGG term: dropping it while searching mu fails before any trial."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, "set": {"loss": {"perceptual": None}}}))
    with pytest.raises(ConfigError) as exc:
        load_sweep(path)
    assert str(exc.value) == (
        f"{path} (base + set + space at first values): loss.dp: needs a perceptual "
        "section (it uses the VGG layer and weight)"
    )


def test_no_torch_import():
    code = (
        "import sys; import sweeper.space, sweeper.sweep_config as c; "
        "s = c.load_sweep('search_spaces/combined.yaml'); sweeper.space.compile_space(s.space); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_sa_vsr_searches_the_two_independent_weights_of_eq13():
    # VSR poster eq. 13: the SA feature term replaces the plain VGG term, so alpha3 and beta3
    # are the only feature-side knobs (the term's own weight would be a third, redundant one).
    path = REPO / "search_spaces" / "sa_vsr.yaml"
    sweep = load_sweep(path)
    paths = {p.path for p in sweep.space}
    assert {"loss.sa_feature.alpha3", "loss.sa_feature.beta3"} <= paths
    assert "loss.sa_feature.weight" not in paths and "loss.perceptual.weight" not in paths
    sf = experiment_dict(sweep, path)["loss"]["sa_feature"]
    assert sf["mode"] == "replace" and sf["weight"] == 1.0
