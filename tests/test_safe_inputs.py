"""Bounded YAML, plain scalars and the one error policy, in process (fast; issue 17 items 8, 9)."""

from __future__ import annotations

import errno
import sqlite3
import time

import pytest
import yaml
from bad_input_cases import alias_bomb, bomb_value

from sweeper.errors import BUG_LINE, describe
from trainables import safe_yaml
from trainables.config import ConfigError
from trainables.config_files import load_config, read_yaml


def _problem(text: str) -> str:
    with pytest.raises(yaml.YAMLError) as info:
        safe_yaml.load(text)
    return info.value.problem


def test_alias_bombs_are_refused_at_once():
    for text in (alias_bomb(9), f"milestones: {bomb_value(9)}", alias_bomb(5)):
        start = time.monotonic()
        assert "alias bomb" in _problem(text)
        assert time.monotonic() - start < 2
    assert "aliases" in _problem("a: &a 1\nb: [" + ", ".join(["*a"] * 101) + "]")
    assert safe_yaml.load("a: &a [1, 2]\nb: *a\nc: {<<: {x: 1}, y: 2}") == {
        "a": [1, 2],
        "b": [1, 2],
        "c": {"x": 1, "y": 2},
    }


@pytest.mark.parametrize(
    "text, words",
    [
        ("a: 1\na: 2", "duplicate key 'a'"),
        ("a: yes", "'yes' is ambiguous"),
        ("a: Off", "'Off' is ambiguous"),
        ("a: 1:30", "base-60"),
        ("a: 010", "octal"),
        ("a: " + "9" * 5000, "a number of 5000 characters"),
    ],
)
def test_surprising_yaml_is_refused(text, words):
    assert words in _problem(text)


def test_plain_yaml_still_reads():
    assert safe_yaml.load("a: true\nb: .inf\nc: 0\nd: 0.5\ne: 'yes'\nf: 0x10\ng: 1_000\nh: null") == {
        "a": True,
        "b": float("inf"),
        "c": 0,
        "d": 0.5,
        "e": "yes",
        "f": 16,
        "g": 1000,
        "h": None,
    }


def test_file_errors_are_one_line(tmp_path):
    bomb = tmp_path / "b.yaml"
    bomb.write_text(alias_bomb(9))
    with pytest.raises(ConfigError, match="alias bomb"):
        read_yaml(bomb)
    latin = tmp_path / "l.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_yaml(latin)


@pytest.mark.parametrize(
    "override, words",
    [
        ("seed=4294967296", "seed: input should be less than or equal to 4294967295"),
        ("train.lr=.inf", "train.lr: inf is not a finite number"),
        ("train.betas=[.nan, 0.9]", "train.betas: nan is not a finite number"),
        ("train.steps=true", "train.steps: True is a boolean"),
        ("data.augment.hflip=1", "data.augment.hflip: 1 is not true or false"),
        ("data.batch_size=1000000", "data.batch_size: input should be less than or equal to 1024"),
        ("train.milestones=[-1]", "train.milestones[0]"),
    ],
)
def test_numbers_out_of_any_sane_range(override, words):
    with pytest.raises(ConfigError) as info:
        load_config("esrgan", [override])
    assert words in str(info.value) and len(str(info.value).splitlines()) == 1


def test_dp_mu_keeps_its_inf():
    assert load_config("esrgan", ["loss.dp.mu=.inf", "loss.dp.resnet_stage=2"]).loss.dp.mu == float("inf")


def test_huge_values_are_truncated_in_errors():
    with pytest.raises(ConfigError) as info:
        load_config("esrgan", ["name=" + "x" * 5000, "scale=" + "7" * 60])
    assert len(str(info.value)) < 600 and "..." in str(info.value)


@pytest.mark.parametrize(
    "exc, words",
    [
        (OSError(errno.ENOSPC, "No space left on device", "/data/sweep/x.pt"), "/data/sweep/x.pt: No space"),
        (PermissionError(errno.EACCES, "Permission denied", "/ro/x"), "/ro/x: Permission denied"),
        (OSError(errno.EROFS, "Read-only file system", "/ro"), "/ro: Read-only"),
        (MemoryError(), "cannot allocate memory"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 1 TB"), "lower data.batch_size"),
        (sqlite3.OperationalError("database is locked"), "another process holds it"),
        (sqlite3.DatabaseError("file is not a database"), "not a database"),
    ],
)
def test_environmental_failures_are_one_line(exc, words):
    line = describe(exc)
    assert line is not None and words in line and "\n" not in line


def test_bugs_keep_their_traceback_and_ask_for_a_report(capsys, monkeypatch):
    from sweeper import cli

    def boom(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "_cmd_config", boom)
    assert describe(KeyError("x")) is None and describe(ValueError("x")) is None
    assert cli.main(["config", "esrgan"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == BUG_LINE


def test_wrapped_environmental_failure_is_found_in_the_chain():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/full/optuna.db")
        except OSError as inner:
            raise RuntimeError("storage commit failed") from inner
    except RuntimeError as outer:
        assert "the disk is full" in describe(outer)
