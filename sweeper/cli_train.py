"""``srsweep eval`` and ``srsweep train``: one model or one configuration, no sweep."""

from __future__ import annotations

import argparse
import sys

from trainables.config import ConfigError


def _lpips(args: argparse.Namespace, seed: int):
    """The LPIPS metric --lpips asks for (None: skipped); a random trunk is built from ``seed``."""
    from trainables.backbones import WeightsNotFoundError, resolve_weights_dir
    from trainables.metrics import LPIPSMetric

    if args.lpips == "none":
        return None
    try:
        lpips = LPIPSMetric(args.lpips if args.lpips != "auto" else "pretrained", args.weights_dir, seed=seed)
    except WeightsNotFoundError:
        if args.lpips != "auto":
            raise
        print(
            f"note: LPIPS skipped: no AlexNet weights in {resolve_weights_dir(args.weights_dir)} "
            "('srsweep weights fetch DIR' on a machine with internet; '--lpips random' for a "
            "plumbing check)",
            file=sys.stderr,
        )
        return None
    if args.lpips == "random":
        print(
            f"note: LPIPS uses a random-init AlexNet trunk (backbones.seed {seed}): a plumbing "
            "check, not a perceptual score",
            file=sys.stderr,
        )
    return lpips


def evaluate(args: argparse.Namespace) -> int:
    import torch

    from trainables.data import PairedImages, open_dataset
    from trainables.evaluate import bicubic, evaluate, format_table
    from trainables.train import load_generator, resolve_device
    from trainables.video_train import looks_like_video

    video = looks_like_video(args.dataset, args.scale)  # embedded-video or a Vid4-layout folder
    if not video:
        items = PairedImages(open_dataset(args.dataset, args.scale, split="val"))
    device = resolve_device(args.device)
    upscale, what, cfg = bicubic(args.scale), "bicubic (MATLAB imresize)", None
    if args.model:
        g, cfg = load_generator(args.model, device)
        if cfg.scale != args.scale:
            raise ConfigError(f"{args.model}: generator is x{cfg.scale}, --scale is {args.scale}")
        upscale, what = (lambda lr: g(lr).clamp(0, 1)), f"generator {args.model}"
    # A random LPIPS trunk is the model's backbones.seed (the one its trainer scored with), else 0.
    seed = args.backbone_seed if args.backbone_seed is not None else (cfg.backbones.seed if cfg else 0)
    lpips = _lpips(args, seed)
    if lpips is not None:
        lpips = lpips.to(device)
    if video or (args.model and cfg.data.kind == "video"):
        from trainables.video_train import eval_video

        print(eval_video(args.dataset, args.scale, upscale, what, cfg if args.model else None, lpips, device))
        return 0
    with torch.no_grad():
        rows = evaluate(upscale, items, args.scale, lpips=lpips, device=device)
    print(
        format_table(rows, f"{args.dataset} x{args.scale}, {what}; Y channel, {args.scale}px border shaved")
    )
    return 0


def train(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from sweeper.tracking import MLflowReporter, Tracker, default_tracking_uri
    from trainables.checkpoint import safe_child
    from trainables.config_files import config_path, load_config, to_dict
    from trainables.train import PrintReporter, Reporters, Trainer, TrainingDiverged

    cfg = load_config(args.config, args.set, ["tiny_cpu"] if args.tiny else None)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out).resolve() if args.out else safe_child("runs", f"{cfg.name}-{stamp}")
    ckpt, run_file = out / "last.pt", out / "mlflow_run_id"
    if args.resume and not ckpt.is_file():  # never a fresh start that looks like a resume
        raise ConfigError(f"--resume: {out} holds no last.pt to resume (leave out --resume to start a run)")
    # Build everything that can fail on bad input (data, weights) before touching MLflow.
    trainer = Trainer(cfg, out)
    if args.resume:  # a mismatch or a bad file refuses here, before anything is written
        trainer.resume(ckpt)
    tracker = Tracker(args.tracking_uri or default_tracking_uri())
    if args.resume and run_file.is_file():
        run_id = run_file.read_text().strip()
        tracker.reopen(run_id)
        print(f"resuming {out} at step {trainer.step} (MLflow run {run_id})")
    else:
        if ckpt.exists() and not args.resume:  # (resumed without a run id: a new run from the checkpoint)
            raise SystemExit(f"srsweep: error: {out} already holds a run; use --resume or another --out")
        run_id = tracker.start_run(
            tracker.experiment(args.experiment),
            cfg.name,
            {**trainer.info, "config_file": str(config_path(args.config)), "out_dir": str(out)},
        )
        out.mkdir(parents=True, exist_ok=True)
        from sweeper import atomic

        atomic.write_text(run_file, run_id)
        tracker.log_config(run_id, to_dict(cfg))
    if trainer.info["backbones"] == "random-init":
        print("note: backbones are random-init (weights: random): perceptual numbers are plumbing checks")
    trainer.reporter = Reporters(PrintReporter(), MLflowReporter(tracker, run_id))
    try:
        trainer.run()
    except (TrainingDiverged, KeyboardInterrupt) as exc:
        tracker.end_run(run_id, "FAILED" if isinstance(exc, TrainingDiverged) else "KILLED")
        if isinstance(exc, KeyboardInterrupt):
            raise
        print(f"srsweep: error: {exc}", file=sys.stderr)
        return 1
    tracker.end_run(run_id, "FINISHED")
    from sweeper.sqlite_uri import sqlite_path

    print(f"done: {out} (MLflow run {run_id} in {sqlite_path(tracker.uri) or tracker.uri})")
    return 0
