"""Orchestration overhead: one trial's training run directly vs the same trial in `srsweep run`.

The same experiment (SA-ESRGAN Canny, tiny models, DIV2K256 / Set14, one shared pretrained
G written beforehand, so stage-1 pretraining is excluded from both sides) runs:
- ``direct``: ``Trainer(cfg).run()``, the same steps, validations and periodic saves;
- ``direct+ckpt``: the same with a checkpoint after every validation (what a trial does);
- ``sweep``: a one-point grid sweep through ``sweeper.sweep`` (``srsweep run``'s code):
  Ray start-up, ``prepare`` (bicubic baseline, MLflow parent run, sweep.json), the Tuner
  (trial process, reports with checkpoint folders, MLflow callback), ``finish`` (results
  table, winner, plots). The trial's own wall time is Ray's ``time_total_s``.
Direct runs go before and after the sweep; their mean is the reference. Target: the trial
inside the sweep < 3% over ``direct`` at a trial length of about 60 s (``--steps``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository on sys.path)
import yaml
from _common import parser, table, write

DATA = _common.ROOT.parent / "shared" / "data"


class _Quiet:
    def metrics(self, step, values):
        pass

    def validation(self, step, metrics, images, scores):
        pass

    def checkpoint(self, step, path):
        pass


def experiment(args, pretrained: str) -> dict:
    return {
        "data": {
            "train": str(DATA / "DIV2K256"),
            "val": str(DATA / "Set14"),
            "patch_size": 32,
            "batch_size": 4,
            "num_workers": 0,
        },
        "train": {
            "pretrained_g": pretrained,
            "steps": args.steps,
            "val_every": args.val_every,
            "checkpoint_every": args.val_every,
            "val_images": 4,
            "val_crop": 64,
            "log_every": 10,
            "device": args.device,
        },
        "loss": {"pixel": {"sa": {"sa_share_target": None, "beta2": 20.0}}},  # the paper's fixed beta2
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=120, help="GAN steps of the trial (~60 s here)")
    p.add_argument("--val-every", type=int, default=30)
    args = p.parse_args()
    if args.quick:
        args.steps, args.val_every = 4, 2
    import torch

    from sweeper import sweep as S
    from trainables.config import validate
    from trainables.config_files import deep_merge, load_config, to_dict
    from trainables.train import Trainer

    torch.set_num_threads(2)  # the trial gets resources.cpu = 2 threads too
    tmp = Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    base = load_config("sa_esrgan_canny", overlays=["tiny_cpu"])
    # A G checkpoint to start from (its quality does not matter for timing): pretraining excluded.
    pre = Trainer(
        validate(deep_merge(to_dict(base), {"train": {"pretrain_steps": 0, "steps": 1}})), tmp / "pre"
    )
    pretrained = str(pre.save_generator(tmp / "pretrain_g.pt"))
    cfg = validate(deep_merge(to_dict(base), experiment(args, pretrained)))

    def direct(ckpt: bool) -> float:
        t0 = time.perf_counter()
        Trainer(cfg, tempfile.mkdtemp(dir=tmp), _Quiet(), checkpoint_on_validation=ckpt).run()
        return time.perf_counter() - t0

    direct(False)  # warm-up, not counted: first image decode, allocator, OS file cache
    first = {"direct": direct(False), "direct+ckpt": direct(True)}
    sweep_file = tmp / "one.yaml"
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "name": "overhead",
                "base": ["sa_esrgan_canny", "tiny_cpu"],
                "set": experiment(args, pretrained),
                "space": [{"path": "loss.pixel.sa.beta2", "grid": [20.0]}],
                "search": {"algorithm": "grid"},
                "budget": {"num_samples": 1, "max_concurrent": 1},
                "scheduler": {"type": "none"},
                "resources": {"cpu": 2, "gpu": 0},
                "selection": {"psnr_margin": -100.0},
            }
        )
    )
    parts, t_all = {}, time.perf_counter()
    t0 = time.perf_counter()
    from sweeper.cluster import connect

    connect(None, {"cpu": 2, "gpu": 0})  # the embedded local Ray, as srsweep run starts it
    parts["ray_start"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    state = S.prepare(sweep_file, tmp / "ray", f"sqlite:///{tmp / 'mlflow.db'}", None)
    parts["prepare"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    grid = S.build_tuner(state).fit()
    parts["tuner_fit"] = time.perf_counter() - t0
    parts["trial"] = float(grid[0].metrics["time_total_s"])
    t0 = time.perf_counter()
    S.finish(state)
    parts["finish"] = time.perf_counter() - t0
    parts["sweep_total"] = time.perf_counter() - t_all
    import ray

    ray.shutdown()  # the Ray this script started
    second = {"direct": direct(False), "direct+ckpt": direct(True)}
    ref = {k: (first[k] + second[k]) / 2 for k in first}
    rows = [
        ["direct (mean of before/after)", ref["direct"], 1.0],
        ["direct + checkpoint per validation", ref["direct+ckpt"], ref["direct+ckpt"] / ref["direct"]],
        ["trial inside the sweep (Ray time_total_s)", parts["trial"], parts["trial"] / ref["direct"]],
        ["  Ray start-up", parts["ray_start"], ""],
        ["  prepare: baseline, MLflow parent, state", parts["prepare"], ""],
        [
            "  Tuner.fit (trial + scheduling + callbacks)",
            parts["tuner_fit"],
            parts["tuner_fit"] / ref["direct"],
        ],
        ["  finish: table, winner, plots", parts["finish"], ""],
        ["sweep end to end", parts["sweep_total"], parts["sweep_total"] / ref["direct"]],
    ]
    print(
        f"{args.steps} GAN steps, validation + report every {args.val_every}; direct before/after: "
        f"{first['direct']:.1f} s / {second['direct']:.1f} s"
    )
    print(table(["part", "seconds", "x direct"], rows))
    extra = parts["trial"] / ref["direct"] - 1
    print(
        f"trial overhead {100 * extra:+.1f}% (target < 3%); checkpoints alone "
        f"{100 * (ref['direct+ckpt'] / ref['direct'] - 1):+.1f}%"
    )
    write(
        "overhead",
        args,
        {
            "steps": args.steps,
            "direct": ref,
            "direct_runs": [first, second],
            "parts": parts,
            "trial_overhead": extra,
        },
    )


if __name__ == "__main__":
    main()
