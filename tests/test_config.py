"""Config validation: one line per problem, naming the key path and what is allowed."""

import math

import pytest

from trainables.config import ConfigError, ExperimentConfig, validate
from trainables.config_files import load_config, to_dict


def _error(data) -> str:
    with pytest.raises(ConfigError) as exc:
        validate(data)
    return str(exc.value)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"loss": {"dp": {"resnet_stage": 5}}}, "config: loss.dp.resnet_stage: 5 is not one of 1, 2, 3, 4"),
        (
            {"loss": {"pixel": {"criterion": "l3"}}},
            "config: loss.pixel.criterion: 'l3' is not one of 'l1', 'charbonnier', 'huber', 'l2'",
        ),
        (
            {"data": {"patchsize": 64}},
            "config: data.patchsize: unknown key (allowed: num_frames, synth_frames, "
            "synth_size, max_speed, kind, train, val, test, holdout, patch_size, batch_size, num_workers, augment, cache)",
        ),
        ({"data": {"patch_size": 30}}, "config: data.patch_size: 30 is not a multiple of scale 4"),
        ({"scale": 8}, "config: scale: 8 is not one of 2, 3, 4"),
        ({"train": {"lr": -1}}, "config: train.lr: input should be greater than 0 (got -1)"),
        (
            {"train": {"steps": "many"}},
            "config: train.steps: input should be a valid integer, unable to parse string as an integer (got 'many')",
        ),
        (
            {"loss": {"pixel": {"sa": {"beta2": 20, "sa_share_target": 0.15}}}},
            "config: loss.pixel.sa: give exactly one of beta2 (fixed) or sa_share_target (calibrated target)",
        ),
        (
            {"loss": {"pixel": {"sa": {"beta2": 5, "lv": {"window": 4}}}}},
            "config: loss.pixel.sa.lv.window: 4 must be odd",
        ),
        (
            {"loss": {"pixel": {"sa": {"sa_share": 0.15}}}},
            "config: loss.pixel.sa.sa_share: renamed to sa_share_target (the share asked for; the reached share is "
            "reported as sa_share)",
        ),
        (
            {"loss": {"pixel": {"sa": {"beta2": 20, "track_every": 5}}}},
            "config: loss.pixel.sa.track_every: needs sa_share_target (a fixed beta2 is never re-solved)",
        ),
        (
            {"model": {"generator": {"arch": "srresnet", "grow_ch": 8}}},
            "config: model.generator.grow_ch: unknown key (allowed: num_feat, num_blocks, bicubic_skip, arch, variant)",
        ),
        (
            {"model": {"discriminator": {"arch": "patch"}}},
            "config: model.discriminator.arch: 'patch' is not one of 'vgg', 'srgan', 'vsrresfeat'",
        ),
        (
            {"loss": {"dp": {"resnet_variant": "code"}}},
            "config: loss.dp.resnet_variant: 'code' is not one of 'released', 'paper'",
        ),
        (
            {"loss": {"pixel": {"sa": {"sa_share_target": 1.5}}}},
            "config: loss.pixel.sa.sa_share_target: input should be less than 1 (got 1.5)",
        ),
        (
            {"loss": {"pixel": {"sa": {"beta2": 1, "canny": {"low": 200, "high": 100}}}}},
            "config: loss.pixel.sa.canny: low (200.0) must be <= high (100.0)",
        ),
        (
            {"backbones": {"weights": "imagenet"}},
            "config: backbones.weights: 'imagenet' is not one of 'pretrained', 'random'",
        ),
    ],
)
def test_one_line_errors(data, message):
    assert _error(data) == message


def test_several_problems_give_one_line_each():
    lines = _error({"scale": 5, "train": {"steps": 0}}).splitlines()
    assert lines == [
        "config: scale: 5 is not one of 2, 3, 4",
        "config: train.steps: input should be greater than or equal to 1 (got 0)",
    ]


def test_defaults_and_types():
    cfg = validate({"loss": {"dp": {"mu": float("inf")}, "pixel": {"sa": {"sa_share_target": 0.15}}}})
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.scale == 4 and cfg.data.patch_size == 128 and cfg.train.lr == 1e-4
    assert math.isinf(cfg.loss.dp.mu) and cfg.loss.dp.resnet_stage == 3
    assert cfg.loss.pixel.sa.sa_share_target == 0.15 and cfg.loss.pixel.sa.beta2 is None
    assert validate(to_dict(cfg)) == cfg  # round trip


def test_yaml_files(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("scale: 2\ndata:\n  patch_size: 32\nloss:\n  dp: {mu: .inf, resnet_stage: 2}\n")
    cfg = load_config(good)
    assert cfg.scale == 2 and cfg.data.patch_size == 32 and math.isinf(cfg.loss.dp.mu)

    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  dp: {resnet_stage: 5}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    assert str(exc.value) == f"{bad}: loss.dp.resnet_stage: 5 is not one of 1, 2, 3, 4"

    broken = tmp_path / "broken.yaml"
    broken.write_text("data:\n  patch_size: [1, 2\n")
    with pytest.raises(ConfigError) as exc:
        load_config(broken)
    assert str(exc.value).startswith(f"{broken}: line 3, column 1 invalid YAML") and "\n" not in str(
        exc.value
    )

    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got list"):
        load_config(listy)
