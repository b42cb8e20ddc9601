"""More bad inputs (issue 17): bounded YAML, numbers out of any sane range, files that are not
what they claim, options out of range, names and paths the OS refuses, unusable weight files.

Every case fails before Ray starts, so ``test_bad_inputs`` runs them all in one process
(``tests/cli_batch.py``) with the same checks as the subprocess cases: one line, no
traceback, nothing left behind.
"""

from __future__ import annotations

from pathlib import Path

import yaml


def alias_bomb(levels: int = 9, width: int = 10) -> str:
    """A YAML flow list: ``levels`` anchors, each ``width`` copies of the one before."""
    lines = [f"x0: &a0 [{', '.join(['1'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines)


def _sweep_text(data: Path, name: str, milestones: str = "[]", points: str = "[]", extra: str = "") -> str:
    return f"""name: {name}
base: [sa_esrgan_lv, tiny_cpu]
set:
  data: {{train: {data / "train"}, val: {data / "val"}, patch_size: 32}}
  loss: {{fm: {{blocks: [0, 1]}}}}
  train: {{pretrain_steps: 2, steps: 4, val_every: 2, val_crop: 64, milestones: {milestones}}}
space:
  - {{path: loss.pixel.sa.beta2, float: [1, 40]}}
objective: {{metrics: [{{name: val_lpips, mode: min}}]}}
scheduler: {{type: none}}
budget: {{num_samples: 2}}
search: {{points_to_evaluate: {points}}}
{extra}"""


def bomb_value(levels: int = 9, width: int = 10) -> str:
    """The same chain inside one flow list (one key's value): its last item expands to width**levels."""
    items = [f"&a0 [{', '.join(['1'] * width)}]"]
    items += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return f"[{', '.join(items)}]"


def _bomb_sweep(w: Path, d: Path, key: str) -> Path:
    value = bomb_value() if key == "milestones" else f"[{{loss.pixel.sa.beta2: {bomb_value()}}}]"
    path = w / "cases" / f"bomb-{key}.yaml"
    path.write_text(_sweep_text(d, f"bomb-{key}", **{key: value}))
    return path


def _file(w: Path, name: str, content: str | bytes) -> Path:
    path = w / "cases" / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _cfg(w: Path, d: Path, name: str, **over) -> Path:
    doc = {
        "base": ["sa_esrgan_lv", "tiny_cpu"],
        "name": name,
        "data": {"train": str(d / "train"), "val": str(d / "val"), "patch_size": 32},
        "train": {"pretrain_steps": 2, "steps": 2, "val_every": 2, "val_crop": 64},
    }
    doc.update(over)
    return _file(w, f"cfg-{name}.yaml", yaml.safe_dump(doc))


def _corrupt_weights(w: Path) -> Path:
    from trainables.backbones import SPECS

    folder = w / "cases" / "badweights"
    folder.mkdir(exist_ok=True)
    for spec in SPECS.values():
        (folder / spec.filename).write_bytes(b"PK\x03\x04 not really a torch file" * 10)
    return folder


def yaml_cases(w: Path, d: Path, tiny: Path) -> list[tuple[str, list]]:
    text = tiny.read_text()
    return [
        ("9-level alias bomb in train.milestones", ["run", _bomb_sweep(w, d, "milestones")]),
        ("9-level alias bomb in search.points_to_evaluate", ["run", _bomb_sweep(w, d, "points")]),
        ("5-level alias bomb in a config", ["config", _file(w, "bomb5.yaml", alias_bomb(5))]),
        (
            "101 aliases",
            ["config", _file(w, "aliases.yaml", "a: &a 1\nb: [" + ", ".join(["*a"] * 101) + "]")],
        ),
        ("duplicate key in a config", ["config", _file(w, "dup.yaml", text + "\nname: again\n")]),
        (
            "duplicate key in a sweep",
            ["run", _file(w, "dup-sweep.yaml", _sweep_text(d, "dup") + "name: b\n")],
        ),
        ("yes as a boolean", ["config", tiny, "--set", "data.augment.hflip=yes"]),
        ("off as a boolean in a file", ["config", _file(w, "off.yaml", text + "\ncompile_: off\n")]),
        ("1:30 read as base 60", ["config", tiny, "--set", "train.steps=1:30"]),
        ("010 read as octal", ["config", tiny, "--set", "train.steps=010"]),
        ("sweep file not UTF-8", ["run", _file(w, "latin1.yaml", "name: caf\xe9\n".encode("latin-1"))]),
        ("config file not UTF-8", ["config", _file(w, "utf16.yaml", "name: x\n".encode("utf-16"))]),
        ("sweep YAML that is a list", ["run", _file(w, "list.yaml", "- 1\n- 2\n")]),
        ("config YAML that is a number", ["config", _file(w, "num.yaml", "42\n")]),
        ("sweep file is a folder", ["run", w / "cases"]),
        ("config over 1 MB", ["config", _file(w, "big.yaml", "# " + "x" * (1 << 20) + "\nname: x\n")]),
        ("a huge value quoted in an error", ["config", tiny, "--set", "train.steps=" + "9" * 5000]),
        ("a huge name", ["config", tiny, "--set", "name=" + "x" * 5000]),
        ("true as a step count", ["config", tiny, "--set", "train.steps=true"]),
        ("1 as a flag", ["config", tiny, "--set", "data.augment.hflip=1"]),
    ]


def range_cases(w: Path, d: Path, tiny: Path, sweep) -> list[tuple[str, list]]:
    cfg = lambda *sets: ["config", tiny, *[x for s in sets for x in ("--set", s)]]  # noqa: E731
    return [
        ("seed beyond numpy's range (train)", ["train", tiny, "--set", "seed=4294967296"]),
        ("negative seed", cfg("seed=-1")),
        ("search.seed beyond numpy's range", ["run", sweep(search={"seed": 2**40})]),
        ("lr .inf", cfg("train.lr=.inf")),
        ("lr .nan (train)", ["train", tiny, "--set", "train.lr=.nan"]),
        ("batch_size 10**6", ["run", sweep(**{"set.data.batch_size": 10**6})]),
        ("patch_size 10**6", cfg("data.patch_size=1000000")),
        ("num_workers 1000", cfg("data.num_workers=1000")),
        ("steps 10**12", cfg("train.steps=1000000000000")),
        ("milestone -1", cfg("train.milestones=[-1]")),
        ("betas with a NaN", cfg("train.betas=[.nan, 0.9]")),
        ("num_feat 10**6", cfg("model.generator.num_feat=1000000")),
        (
            "space bound .inf",
            ["run", sweep(space=[{"path": "loss.pixel.sa.beta2", "float": [1, float("inf")]}])],
        ),
        (
            "space bound .nan",
            ["run", sweep(space=[{"path": "loss.pixel.sa.beta2", "float": [float("nan"), 1]}])],
        ),
        ("num_samples 0", ["run", sweep(budget={"num_samples": 0})]),
        ("max_concurrent 10**9", ["run", sweep(budget={"max_concurrent": 10**9})]),
        ("resources.cpu .inf", ["run", sweep(resources={"cpu": float("inf")})]),
        ("time_budget_s .nan", ["run", sweep(budget={"time_budget_s": float("nan")})]),
        (
            "reduction_factor .inf",
            ["run", sweep(scheduler={"type": "asha", "reduction_factor": float("inf")})],
        ),
        ("max_failures 10**6", ["run", sweep(failure={"max_failures": 10**6})]),
    ]


def option_cases(w: Path, d: Path, tiny: Path, sweep) -> list[tuple[str, list]]:
    return [
        ("ui --port 70000", ["ui", "--port", "70000", "--dry-run"]),
        ("ui --port 0", ["ui", "--port", "0", "--dry-run"]),
        ("ui --port abc", ["ui", "--port", "abc", "--dry-run"]),
        ("best --resamples -1", ["best", "x", "--resamples", "-1"]),
        ("eval --scale 5", ["eval", d / "val", "--scale", "5"]),
        ("unknown command", ["frobnicate"]),
        ("run without a sweep", ["run"]),
        ("--set without =", ["train", tiny, "--set", "train.steps"]),
        ("run --set with a huge value", ["run", sweep(), "--set", "train.steps=" + "9" * 5000]),
    ]


def file_cases(w: Path, d: Path, tiny: Path, sweep) -> list[tuple[str, list]]:
    afile = _file(w, "afile", "x")
    weights = {"weights": "pretrained", "weights_dir": str(_corrupt_weights(w))}
    pretrained = _cfg(w, d, "pre", backbones=weights)
    long = "n" * 300
    return [
        ("train --out under a file (ENOTDIR, root too)", ["train", tiny, "--out", afile / "run"]),
        ("train --out is a file", ["train", tiny, "--out", afile]),
        ("train --out with a 300-char name", ["train", tiny, "--out", w / "cases" / long]),
        ("--storage under a file", ["run", "--storage", afile / "sub", sweep()]),
        ("--storage with a 300-char name", ["run", "--storage", w / "cases" / long, sweep()]),
        ("--tracking-uri store under a file", ["run", "--tracking-uri", f"sqlite:///{afile}/m.db", sweep()]),
        ("train: corrupt .pth with weights: pretrained", ["train", pretrained]),
        ("run: corrupt .pth with weights: pretrained", ["run", sweep(**{"set.backbones": weights})]),
        (
            "eval: corrupt AlexNet .pth",
            ["eval", d / "val", "--lpips", "pretrained", "--weights-dir", weights["weights_dir"]],
        ),
        (
            "data.train is a file",
            ["train", _cfg(w, d, "dfile", data={"train": str(afile), "val": str(d / "val")})],
        ),
        ("resume: sweep.json is garbage", ["resume", _state(w, "garbage", b"\x00\xff garbage")]),
        ("resume: sweep.json is a list", ["resume", _state(w, "list", b"[1, 2]")]),
        ("best: sweep.json truncated", ["best", _state(w, "trunc", b'{"sweep": {"name": "x"')]),
        ("sync: sweep.json empty", ["sync", _state(w, "empty", b"")]),
    ]


def _state(w: Path, name: str, content: bytes) -> Path:
    folder = w / "cases" / f"state-{name}"
    folder.mkdir()
    (folder / "sweep.json").write_bytes(content)
    return folder


def more_cases(w: Path, d: Path, tiny: Path, sweep) -> list[tuple[str, list]]:
    return [
        *yaml_cases(w, d, tiny),
        *range_cases(w, d, tiny, sweep),
        *option_cases(w, d, tiny, sweep),
        *file_cases(w, d, tiny, sweep),
    ]
