"""Data-loader wait as a fraction of the training step, with the real data and Canny maps.

The trainer's own loader (``Trainer.batches``: random crops + flips of DIV2K256 HR, MATLAB
bicubic LR, the Canny map of each HR patch, made in the workers) feeds the trainer's own
``gan_step`` (SA-ESRGAN, Canny). Per step: ``wait`` = time blocked in ``next(loader)``
(the transfer to the device included), ``step`` = the G+D step. The first ``--skip``
steps (worker start-up, cache fill) are left out. Target: wait / (wait + step) < 5%.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import _common  # noqa: F401  (puts the repository on sys.path)
from _common import parser, sync, table, write

DATA = _common.ROOT.parent / "shared" / "data"


def measure(args, workers: int, model: str) -> dict:
    from trainables.config_files import load_config
    from trainables.train import Trainer

    g = {"tiny": "model.generator.num_feat=16", "medium": "model.generator.num_feat=32"}[model]
    cfg = load_config(
        "sa_esrgan_canny",
        overlays=["tiny_cpu"],
        overrides=[
            f"data.train={args.data}",
            f"data.val={DATA / 'Set14'}",
            f"data.num_workers={workers}",
            f"data.batch_size={args.batch}",
            f"data.patch_size={args.patch}",
            g,
            "train.pretrain_steps=0",
            f"train.device={args.device}",
            "train.val_images=1",
        ],
    )
    t = Trainer(cfg, tempfile.mkdtemp(prefix="bench_data_"))
    t.objective.term("pixel").beta2.fill_(20.0)
    waits, steps = [], []
    it = t.batches(0)
    for k in range(args.skip + args.steps):
        t0 = time.perf_counter()
        batch = next(it)
        sync(args.device)
        t1 = time.perf_counter()
        t.gan_step(batch)
        sync(args.device)
        t2 = time.perf_counter()
        if k >= args.skip:
            waits.append(t1 - t0)
            steps.append(t2 - t1)
    del it
    w, s = sum(waits), sum(steps)
    return {
        "workers": workers,
        "model": model,
        "wait_ms": 1e3 * statistics.median(waits),
        "step_ms": 1e3 * statistics.median(steps),
        "wait_fraction": w / (w + s),
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data", default=str(DATA / "DIV2K256"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--skip", type=int, default=3)
    p.add_argument("--workers", default="0,2")
    p.add_argument("--models", default="tiny,medium")
    args = p.parse_args()
    if args.quick:
        args.batch, args.patch, args.steps, args.skip, args.workers, args.models = 4, 64, 3, 1, "0", "tiny"
    rows = [measure(args, int(w), m) for m in args.models.split(",") for w in args.workers.split(",")]
    print(
        f"{args.data}: batch {args.batch}, HR patch {args.patch}, Canny in the loader, {args.steps} steps "
        f"after {args.skip} skipped, {args.device}"
    )
    print(
        table(
            ["G", "workers", "wait ms", "step ms", "wait / (wait+step)"],
            [[r["model"], r["workers"], r["wait_ms"], r["step_ms"], r["wait_fraction"]] for r in rows],
        )
    )
    write("data", args, {"batch": args.batch, "patch": args.patch, "rows": rows})


if __name__ == "__main__":
    main()
