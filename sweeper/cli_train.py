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

    from sweeper.preflight import check_run_folder, check_tracking
    from trainables.config_files import load_config

    cfg = load_config(args.config, args.set, ["tiny_cpu"] if args.tiny else None)
    # A read-only or unusable folder fails here, in seconds, before torch, MLflow and the data load.
    check_run_folder(Path(args.out or "runs").resolve())
    from sweeper.tracking import default_tracking_uri
    from trainables.checkpoint import safe_child

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out).resolve() if args.out else safe_child("runs", f"{cfg.name}-{stamp}")
    ckpt = out / "last.pt"
    if args.resume and not ckpt.is_file():  # never a fresh start that looks like a resume
        raise ConfigError(f"--resume: {out} holds no last.pt to resume (leave out --resume to start a run)")
    if ckpt.exists() and not args.resume:
        raise ConfigError(f"{out} already holds a run; use --resume or another --out")
    uri = args.tracking_uri or default_tracking_uri()
    check_tracking(uri)
    return _train(args, cfg, out, uri)


def _train(args: argparse.Namespace, cfg, out, uri: str) -> int:
    from sweeper import atomic
    from sweeper.tracking import MLflowReporter, Tracker
    from trainables.config_files import config_path, to_dict
    from trainables.train import PrintReporter, Reporters, Trainer, TrainingDiverged

    ckpt, run_file = out / "last.pt", out / "mlflow_run_id"
    # Build everything that can fail on bad input (data, weights) before touching MLflow.
    trainer = Trainer(cfg, out)
    if args.resume:  # a mismatch or a bad file refuses here, before anything is written
        trainer.resume(ckpt)
    tracker = Tracker(uri)
    if args.resume and run_file.is_file():
        run_id = run_file.read_text().strip()
        tracker.reopen(run_id)
        print(f"resuming {out} at step {trainer.step} (MLflow run {run_id})")
    else:  # (resumed without a run id: a new run from the checkpoint)
        run_id = tracker.start_run(
            tracker.experiment(args.experiment),
            cfg.name,
            {**trainer.info, "config_file": str(config_path(args.config)), "out_dir": str(out)},
        )
        try:
            out.mkdir(parents=True, exist_ok=True)
            atomic.write_text(run_file, run_id)
            tracker.log_config(run_id, to_dict(cfg))
        except BaseException as exc:
            _close(tracker, run_id, exc)
            raise
    if trainer.info["backbones"] == "random-init":
        print("note: backbones are random-init (weights: random): perceptual numbers are plumbing checks")
    trainer.reporter = Reporters(PrintReporter(), MLflowReporter(tracker, run_id))
    try:
        trainer.run()
    except TrainingDiverged as exc:
        tracker.end_run(run_id, "FAILED")
        print(f"srsweep: error: {exc}", file=sys.stderr)
        return 1
    except BaseException as exc:  # never left RUNNING: the run says why it ended
        _close(tracker, run_id, exc)
        raise
    tracker.end_run(run_id, "FINISHED")
    from sweeper.sqlite_uri import sqlite_path

    print(f"done: {out} (MLflow run {run_id} in {sqlite_path(tracker.uri) or tracker.uri})")
    return 0


def _close(tracker, run_id: str, exc: BaseException) -> None:
    """End a run after a failure: KILLED for a signal, FAILED with a ``failure`` tag otherwise."""
    from sweeper.errors import describe

    killed = isinstance(exc, KeyboardInterrupt)
    reason = "interrupted" if killed else (describe(exc) or f"{type(exc).__name__}: {str(exc)[:300]}")
    try:
        tracker.set_tags(run_id, {"failure": reason})
        tracker.end_run(run_id, "KILLED" if killed else "FAILED")
    except Exception:  # noqa: BLE001  (the store itself failing must not hide the first error)
        pass
