"""The sweep state (paths fixed at launch, one typed snapshot), the trainer's events, and
the module boundaries the sweeper keeps (MLflow in one module)."""

import math
import re
from pathlib import Path

import pytest

from sweeper.state import STATE_FILE, SweepState, absolute_paths
from sweeper.sweep_config import experiment_dict, load_sweep
from trainables.config import ConfigError
from trainables.train import Trainer

REPO = Path(__file__).resolve().parents[1]


def test_absolute_paths_are_taken_against_the_launch_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("SRSWEEP_WEIGHTS_DIR", raising=False)
    raw = {
        "data": {"train": "../shared/data/DIV2K256", "val": "embedded", "patch_size": 32},
        "backbones": {"weights": "random", "weights_dir": "/abs/w"},
        "train": {"pretrained_g": "runs/g.pt", "steps": 3},
    }
    out = absolute_paths(raw, tmp_path / "repo")
    assert out["data"] == {
        "train": str(tmp_path / "shared" / "data" / "DIV2K256"),
        "val": "embedded",
        "patch_size": 32,
    }
    assert out["backbones"]["weights_dir"] == "/abs/w"
    assert out["train"] == {"pretrained_g": str(tmp_path / "repo" / "runs" / "g.pt"), "steps": 3}
    assert raw["data"]["train"] == "../shared/data/DIV2K256"  # the input is not modified
    # An unset weights folder takes the environment's, fixed now (workers run elsewhere).
    monkeypatch.setenv("SRSWEEP_WEIGHTS_DIR", "w")
    assert absolute_paths({}, tmp_path)["backbones"] == {"weights_dir": str(tmp_path / "w")}


def _state(tmp_path: Path) -> SweepState:
    path = REPO / "search_spaces" / "demo.yaml"
    sweep = load_sweep(path)
    exp = absolute_paths(experiment_dict(sweep, path), tmp_path)
    exp["loss"]["dp"]["mu"] = math.inf
    return SweepState(
        sweep=sweep,
        sweep_file=str(path),
        experiment=exp,
        sweep_dir=str(tmp_path),
        tracking_uri="sqlite:///x.db",
        experiment_id="1",
        parent_run_id="p",
        bicubic_psnr=30.5,
        total_steps=60,
        tags={"backbones": "random-init"},
    )


def test_state_round_trips_with_its_sweep_snapshot(tmp_path):
    state = _state(tmp_path)
    assert state.save() == tmp_path / STATE_FILE
    back = SweepState.load(tmp_path)
    assert back == state and back.experiment["loss"]["dp"]["mu"] == math.inf
    assert back.sweep.search.algorithm == "tpe" and back.base_config.train.val_every == 15
    # Optuna's names -> the trial's validated config, searched values on top of the base.
    cfg = back.trial_config(
        {
            "loss.dp.mu#choice": "range",
            "loss.dp.mu": 2.5,
            "loss.fm.blocks": 3,
            "loss.dp.resnet_stage": 2,
            "loss.perceptual.layer": "conv3_4",
            "loss.pixel.sa.sa_share_target": 0.2,
        },
        "t1",
    )
    assert (cfg.loss.dp.mu, cfg.loss.dp.resnet_stage, cfg.loss.fm.blocks) == (2.5, 2, [0, 1, 2])
    assert cfg.loss.pixel.sa.sa_share_target == 0.2 and cfg.loss.perceptual.layer == "conv3_4"
    with pytest.raises(ConfigError, match=r"^trial t2: loss\.dp\.resnet_stage: 7 is not one of"):
        back.trial_config({"loss.dp.resnet_stage": 7}, "t2")


def test_a_folder_without_a_valid_state_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="not a sweep folder"):
        SweepState.load(tmp_path)
    (tmp_path / STATE_FILE).write_text('{"sweep_file": "x.yaml"}')
    with pytest.raises(ConfigError) as e:
        SweepState.load(tmp_path)
    assert "not a sweep state of this srsweep version" in str(e.value) and "\n" not in str(e.value)


class Events:
    def __init__(self):
        self.log = []

    def metrics(self, step, values):
        self.log.append(("metrics", step, sorted(k for k in values if k.startswith("val_"))))

    def validation(self, step, metrics, images, scores):
        self.log.append(("validation", step, sorted(metrics)))

    def checkpoint(self, step, path):
        self.log.append(("checkpoint", step, Path(path).name))


def _cfg(tiny_config):
    return tiny_config(
        {
            "loss": {"perceptual": {"layer": "conv2_2"}},
            "train": {
                "pretrain_steps": 0,
                "steps": 5,
                "val_every": 2,
                "log_every": 1,
                "checkpoint_every": 100,
                "val_images": 1,
                "val_crop": 32,
                "device": "cpu",
            },
        }
    )


@pytest.mark.parametrize("on_validation", [False, True])
def test_trainer_events_validation_then_the_checkpoint_of_that_step(tiny_config, tmp_path, on_validation):
    rep = Events()
    Trainer(_cfg(tiny_config), tmp_path, rep, checkpoint_on_validation=on_validation).run()
    val = ["val_lpips", "val_psnr", "val_ssim"]
    assert [e for e in rep.log if e[0] == "validation"] == [("validation", s, val) for s in (2, 4, 5)]
    assert all(e[2] == [] for e in rep.log if e[0] == "metrics")  # losses only: metrics never carry val_*
    ckpts = [e[1] for e in rep.log if e[0] == "checkpoint"]
    assert ckpts == ([2, 4, 5] if on_validation else [5])  # periodic saves: checkpoint_every and the end
    for step in (2, 4, 5) if on_validation else ():
        i = rep.log.index(("validation", step, val))
        assert rep.log[i + 1] == ("checkpoint", step, "last.pt")


def test_mlflow_is_called_from_one_module():
    """Every MLflow call goes through sweeper/tracking.py (the API changes between releases),
    and the tracking outbox (sweeper/outbox.py), which buffers those writes."""
    files = [p for d in ("sweeper", "trainables") for p in (REPO / d).glob("*.py")]
    users = sorted(
        str(p.relative_to(REPO))
        for p in files
        if re.search(r"mlflow\.|from mlflow|import mlflow", p.read_text())
    )
    assert users == ["sweeper/outbox.py", "sweeper/tracking.py"]
