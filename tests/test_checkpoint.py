"""Safe checkpoints: no code runs on load, no torn files, no names that leave their folder."""

import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables.checkpoint import (
    CheckpointError,
    PathEscapeError,
    load_safe,
    rng_state,
    safe_child,
    save_atomic,
    set_rng_state,
    write_bytes_atomic,
)
from trainables.config import validate
from trainables.train import Trainer


class _Evil:
    """A pickle that creates a marker file when unpickled (what a crafted .pt would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full")  # stands in for a write failing mid-way


def _one_line_refusal(path: Path, **kw) -> str:
    with pytest.raises(CheckpointError) as err:
        load_safe(path, **kw)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: not a loadable srsweep checkpoint (")
    return msg


def test_crafted_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"G": {"w": torch.zeros(2)}, "config": _Evil(marker)}, evil)
    msg = _one_line_refusal(evil)
    assert "io.open" in msg and not marker.exists()
    # The file really is an exploit: the unsafe loader the trainer used before creates the marker.
    code = f"import torch; torch.load({str(evil)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
    assert marker.exists()


def test_raw_pickle_with_reduce_is_refused(tmp_path):
    marker = tmp_path / "pwned2"
    path = tmp_path / "raw.pt"
    path.write_bytes(pickle.dumps({"G": _Evil(marker)}, protocol=2))  # legacy (non-zip) format
    _one_line_refusal(path)
    assert not marker.exists()


def test_bad_files_are_refused_in_one_line(tmp_path):
    good = save_atomic({"G": {"w": torch.arange(4000.0)}, "step": 3}, tmp_path / "good.pt")
    raw = good.read_bytes()
    cases = {
        "truncated.pt": raw[: len(raw) // 2],
        "empty.pt": b"",
        "text.pt": b"step: 3\n",
        "image.png": (Path(__file__).resolve().parents[2] / "shared/data/Set5/HR/img_002.png").read_bytes(),
        "list.pt": None,
    }
    torch.save([1, 2], tmp_path / "list.pt")
    reasons = {}
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        reasons[name] = _one_line_refusal(tmp_path / name)
    assert "truncated or corrupt archive" in reasons["truncated.pt"]
    assert "not a torch checkpoint file" in reasons["text.pt"] and "PNG" in reasons["image.png"]
    assert "holds a list" in reasons["list.pt"]
    assert "no such file" in _one_line_refusal(tmp_path / "missing.pt")
    assert "not a file" in _one_line_refusal(tmp_path)
    assert "no 'D' entry" in _one_line_refusal(good, required=("G", "D"))
    assert load_safe(good, required=("G",))["step"] == 3


def test_legacy_checkpoint_with_numpy_rng_tuple_is_refused(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"rng": {"numpy": np.random.get_state(), "python": random.getstate()}}, path)
    assert "numpy" in _one_line_refusal(path)


def test_failed_write_leaves_the_previous_file_and_no_temp(tmp_path):
    path = save_atomic({"step": 1, "w": torch.ones(1000)}, tmp_path / "last.pt")
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        save_atomic({"step": 2, "w": torch.ones(1000), "bad": _Unpicklable()}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    # A failure on a first write leaves nothing at all.
    with pytest.raises(RuntimeError):
        save_atomic({"bad": _Unpicklable()}, tmp_path / "sub" / "new.pt")
    assert list((tmp_path / "sub").iterdir()) == []
    write_bytes_atomic('{"a": 1}', tmp_path / "state.json")
    assert (tmp_path / "state.json").read_text() == '{"a": 1}'


def test_rng_states_round_trip_exactly(tmp_path):
    random.seed(5), np.random.seed(6), torch.manual_seed(7)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's legacy state
    random.gauss(0, 1)  # and one in Python's
    saved = rng_state()

    def draw():
        return (
            torch.rand(5),
            np.random.standard_normal(5),
            np.random.rand(3),
            [random.random() for _ in range(3)],
            random.gauss(0, 1),
        )

    expect = draw()
    state = load_safe(save_atomic({"rng": saved}, tmp_path / "rng.pt"))["rng"]  # weights_only round trip
    set_rng_state(state)
    got = draw()
    assert torch.equal(expect[0], got[0])
    assert np.array_equal(expect[1], got[1]) and np.array_equal(expect[2], got[2])
    assert expect[3] == got[3] and expect[4] == got[4]


def test_a_real_trainer_state_loads_weights_only(tiny_config, tmp_path):
    cfg = tiny_config(
        {
            "seed": 3,
            "train": {
                "pretrain_steps": 1,
                "steps": 2,
                "milestones": [1],
                "val_every": 100,
                "log_every": 100,
                "checkpoint_every": 100,
                "val_crop": 64,
                "device": "cpu",
            },
        }
    )
    trainer = Trainer(cfg, tmp_path)
    trainer.run()
    state = {**trainer.state_dict(), "rng": rng_state()}  # what Trainer.state_dict should hold
    loaded = load_safe(save_atomic(state, tmp_path / "last.pt"), required=("G", "D", "opt_g", "config"))
    assert validate(loaded["config"]) == cfg and loaded["step"] == 3
    assert loaded["sched_g"]["milestones"] == {1: 1}  # MultiStepLR's Counter is allowed
    for k, v in trainer.G.state_dict().items():
        assert torch.equal(loaded["G"][k], v)


def test_safe_child_keeps_names_inside_the_root(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    assert safe_child(root, "exp-1") == root.resolve() / "exp-1"
    assert safe_child(root, "a/b") == root.resolve() / "a" / "b"
    (root / "out").symlink_to(tmp_path)  # a link inside root that points outside it
    bad = ["../../../X", "..", "a/../../X", "/etc/cron.d/x", "", ".", "out/escaped", "a\x00b"]
    for name in bad:
        with pytest.raises(PathEscapeError) as err:
            safe_child(root, name, what="name")
        assert "\n" not in str(err.value) and str(err.value).startswith("name: ")
    assert not (tmp_path / "X").exists() and not (tmp_path / "escaped").exists()
