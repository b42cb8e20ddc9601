"""Search cost: TPE + ASHA against the full mu x stage grid of dp_grid.yaml (a TABULAR REPLAY).

1. Train every point of the dp_grid.yaml grid (mu x ResNet stage, 7 x 4) once on a cheap
   proxy: tiny models (``tiny_cpu`` overlay), real DIV2K256 / Set14 data, random-init
   backbones, one shared pretrained G (as a sweep shares stage 1), validated every round.
   Each config's validation curve (``val_lpips``, the sweep's first metric) goes in a table.
2. Replay, per seed: Optuna's ``TPESampler(seed)`` over the same grid values (categorical),
   started from dp_optuna.yaml's points_to_evaluate, 4 trials at a time, each trial stepping
   round by round through its table curve, stopped by an asynchronous successive-halving
   rule with Ray's ``ASHAScheduler`` semantics (rungs at grace * rf^k rounds; a trial stops at
   a rung when its value is worse than the (1 - 1/rf) quantile of the values already recorded
   there). A stopped trial's last value is told to TPE, as Ray's OptunaSearch does.
   Compute = training steps spent by all trials up to the moment a trial that ran the full
   length ends within ``tol`` of the grid's best final value (tol = ``--tol`` times the
   spread best..worst of the grid's finals). The grid's compute: every point, full length.
Nothing is re-trained in the replay: the same config always gives the same curve, so the
replay measures the search algorithm's sample efficiency, not run-to-run noise.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import statistics
import tempfile
from pathlib import Path

import _common  # noqa: F401  (puts the repository on sys.path)
import numpy as np
from _common import parser, table, write

DATA = _common.ROOT.parent / "shared" / "data"
MUS = [0.2, 0.5, 1, 5, 10, 20, math.inf]
STAGES = [1, 2, 3, 4]


class _Curve:
    """A Reporter that keeps the validation metric of each round."""

    def __init__(self, metric: str):
        self.metric, self.values = metric, []

    def metrics(self, step, values):
        pass

    def validation(self, step, metrics, images, scores):
        self.values.append(float(metrics[self.metric]))

    def checkpoint(self, step, path):
        pass


def build_table(args, grid: list[tuple[float, int]]) -> dict:
    from trainables.config_files import load_config
    from trainables.train import Trainer

    out = Path(tempfile.mkdtemp(prefix="bench_search_"))
    base = [
        f"data.train={DATA / 'DIV2K256'}",
        f"data.val={DATA / 'Set14'}",
        "data.batch_size=4",
        "data.patch_size=32",
        f"train.val_images={args.val_images}",
        "train.val_crop=64",
        f"train.device={args.device}",
        "train.log_every=1000",
        "train.checkpoint_every=100000",
    ]
    pre = Trainer(
        load_config(
            "esrgan_dp",
            overlays=["tiny_cpu"],
            overrides=base
            + [f"train.pretrain_steps={args.pretrain}", "train.steps=1", f"train.val_every={args.pretrain}"],
        ),
        out / "pre",
        reporter=_Curve("val_lpips"),
    )
    pre.run(until=args.pretrain)
    g = pre.save_generator(out / "pretrain_g.pt")
    curves = {}
    for mu, stage in grid:
        cfg = load_config(
            "esrgan_dp",
            overlays=["tiny_cpu"],
            overrides=base
            + [
                f"train.pretrained_g={g}",
                f"train.steps={args.rounds * args.val_every}",
                f"train.val_every={args.val_every}",
                f"loss.dp.mu={mu}",
                f"loss.dp.resnet_stage={stage}",
            ],
        )
        rep = _Curve("val_lpips")
        Trainer(cfg, out / f"{mu}_{stage}", reporter=rep).run()
        curves[f"{mu}|{stage}"] = rep.values
        print(f"mu={mu} stage={stage}: val_lpips {['%.4f' % v for v in rep.values]}", flush=True)
    return {"metric": "val_lpips", "mode": "min", "steps_per_round": args.val_every, "curves": curves}


def replay(
    tab: dict, seed: int, tol: float, grace: int, rf: float, budget: int, concurrent: int, points: list[str]
) -> dict:
    """One TPE + ASHA run over the table; returns the steps spent until within tol (or inf)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    curves = tab["curves"]
    rounds = len(next(iter(curves.values())))
    finals = [c[-1] for c in curves.values()]
    best, target = min(finals), min(finals) + tol * (max(finals) - min(finals))
    keys = sorted(curves)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    for p in points:
        study.enqueue_trial({"cfg": p})
    rungs = []  # milestones in rounds: grace, grace*rf, ... below the full length
    m = grace
    while m < rounds:
        rungs.append(m)
        m = int(math.ceil(m * rf))
    recorded: dict[int, list[float]] = {r: [] for r in rungs}
    spent, started, events, found_at = 0, 0, [], math.inf  # events: (time, trial number)
    running: dict[int, tuple] = {}

    def start(now: float) -> None:
        nonlocal started
        t = study.ask({"cfg": optuna.distributions.CategoricalDistribution(keys)})
        running[t.number] = (t, curves[t.params["cfg"]], 0)
        started += 1
        heapq.heappush(events, (now + 1, t.number))

    for _ in range(min(concurrent, budget)):
        start(0.0)
    while events:
        now, n = heapq.heappop(events)
        t, curve, done = running[n]
        done += 1
        spent += tab["steps_per_round"]
        value = curve[done - 1]
        stop = False
        if done in recorded:
            rec = recorded[done]
            if rec and value > float(np.nanpercentile(rec, 100 / rf)):  # min mode: keep the best 1/rf
                stop = True
            rec.append(value)
        if done == rounds and value <= target and math.isinf(found_at):
            found_at = spent
        if stop or done == rounds:
            study.tell(t, value)
            del running[n]
            if started < budget and math.isinf(found_at):
                start(now)
        else:
            running[n] = (t, curve, done)
            heapq.heappush(events, (now + 1, n))
        if not math.isinf(found_at):
            break
    return {"seed": seed, "steps": found_at, "trials_started": started, "best": best, "target": target}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--table", default=None, help="reuse a table JSON written by an earlier run (no training)")
    p.add_argument("--pretrain", type=int, default=40)
    p.add_argument("--rounds", type=int, default=8, help="validation rounds per config")
    p.add_argument("--val-every", type=int, default=5, help="GAN steps per round")
    p.add_argument("--val-images", type=int, default=4)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--tol", type=float, default=0.05)
    p.add_argument("--grace", type=int, default=2, help="ASHA grace period, rounds")
    p.add_argument("--rf", type=float, default=2.0)
    p.add_argument("--budget", type=int, default=28, help="TPE trials at most (the grid has 28)")
    p.add_argument("--concurrent", type=int, default=4)
    args = p.parse_args()
    grid = list(itertools.product(MUS, STAGES))
    if args.quick:
        grid, args.pretrain, args.rounds, args.val_every, args.val_images = (
            grid[4:8] + grid[-4:-2],
            2,
            4,
            1,
            1,
        )
        args.seeds, args.budget = 5, 6
    if args.table:
        tab = json.loads(Path(args.table).read_text())["table"]
    else:
        tab = build_table(args, grid)
    rounds = len(next(iter(tab["curves"].values())))
    grid_steps = len(tab["curves"]) * rounds * tab["steps_per_round"]
    points = [k for k in (f"{0.5}|3", f"{math.inf}|3") if k in tab["curves"]]
    runs = [
        replay(tab, s, args.tol, args.grace, args.rf, args.budget, args.concurrent, points)
        for s in range(args.seeds)
    ]
    frac = [r["steps"] / grid_steps for r in runs]
    hit = [f for f in frac if not math.isinf(f)]
    print(
        f"TABULAR REPLAY over {len(tab['curves'])} grid configs x {rounds} rounds x "
        f"{tab['steps_per_round']} steps; tol {args.tol} of the finals' spread; ASHA grace {args.grace} rf "
        f"{args.rf}; <= {args.budget} TPE trials, {args.concurrent} at a time"
    )
    print(
        table(
            ["seed", "steps to within tol", "x grid compute", "trials started"],
            [[r["seed"], r["steps"], f, r["trials_started"]] for r, f in zip(runs, frac)],
        )
    )
    summary = {
        "grid_steps": grid_steps,
        "found": len(hit),
        "seeds": len(runs),
        "mean_fraction": statistics.mean(hit) if hit else math.inf,
        "sd_fraction": statistics.stdev(hit) if len(hit) > 1 else 0.0,
        "min_fraction": min(hit, default=math.inf),
        "max_fraction": max(hit, default=math.inf),
    }
    print(
        f"found in {len(hit)}/{len(runs)} seeds; compute / grid over those seeds: "
        f"mean {summary['mean_fraction']:.3f}, "
        f"sd {summary['sd_fraction']:.3f}, range {summary['min_fraction']:.3f}-{summary['max_fraction']:.3f} "
        f"(target <= 0.25)"
    )
    write(
        "search",
        args,
        {
            "tabular_replay": True,
            "tol": args.tol,
            "grace": args.grace,
            "rf": args.rf,
            "summary": summary,
            "runs": runs,
            "table": tab,
        },
    )


if __name__ == "__main__":
    main()
