"""``srsweep`` command line: thin argument parsing over the library functions.

Errors the user can fix (bad config, missing data, missing weights) print one line
prefixed ``srsweep: error:`` and exit 2, with no traceback.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from trainables.config import ConfigError, SrsweepError


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from trainables.data import PairedImages, open_dataset
    from trainables.evaluate import bicubic, evaluate, format_table
    from trainables.metrics import LPIPSMetric
    from trainables.video_train import looks_like_video

    video = looks_like_video(args.dataset, args.scale)  # embedded-video or a Vid4-layout folder
    if not video:
        items = PairedImages(open_dataset(args.dataset, args.scale, split="val"))
    lpips = None
    if args.lpips != "none":
        from trainables.backbones import WeightsNotFoundError, resolve_weights_dir

        try:
            lpips = LPIPSMetric(args.lpips if args.lpips != "auto" else "pretrained", args.weights_dir)
        except WeightsNotFoundError:
            if args.lpips != "auto":
                raise
            print(
                f"note: LPIPS skipped: no AlexNet weights in {resolve_weights_dir(args.weights_dir)} "
                "('srsweep weights fetch DIR' on a machine with internet; '--lpips random' for a "
                "plumbing check)",
                file=sys.stderr,
            )
    if lpips is not None and args.lpips == "random":
        print(
            "note: LPIPS uses a random-init AlexNet trunk: a plumbing check, not a perceptual score",
            file=sys.stderr,
        )
    from trainables.train import load_generator, resolve_device

    device = resolve_device(args.device)
    if lpips is not None:
        lpips = lpips.to(device)
    upscale, what = bicubic(args.scale), "bicubic (MATLAB imresize)"
    if args.model:
        g, cfg = load_generator(args.model, device)
        if cfg.scale != args.scale:
            raise ConfigError(f"{args.model}: generator is x{cfg.scale}, --scale is {args.scale}")
        upscale, what = (lambda lr: g(lr).clamp(0, 1)), f"generator {args.model}"
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


def _cmd_weights_fetch(args: argparse.Namespace) -> int:
    from trainables.backbones import fetch

    for path in fetch(args.dir, keys=args.only or None):
        print(f"ok  {path}")
    print(f"copy {args.dir} to the offline machine and set backbones.weights_dir (or SRSWEEP_WEIGHTS_DIR)")
    return 0


def _cmd_weights_verify(args: argparse.Namespace) -> int:
    from trainables.backbones import resolve_weights_dir, verify

    folder = resolve_weights_dir(args.dir)
    results = verify(folder)
    for r in results:
        print(f"{r.status:<13} {r.path}")
    bad = [r for r in results if r.status != "ok"]
    if bad:
        print(
            f"{len(bad)} of {len(results)} weight files not usable in {folder}; "
            f"on a machine with internet run 'srsweep weights fetch DIR'",
            file=sys.stderr,
        )
    return 1 if bad else 0


def _cmd_train(args: argparse.Namespace) -> int:
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
        run_file.write_text(run_id)
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
    print(f"done: {out} (MLflow run {run_id} in {tracker.uri})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from sweeper.terminal import quiet

    quiet(args.verbose)
    if args.dry_run:
        from sweeper.cli_sweep import dry_run

        return dry_run(args)
    from sweeper.sweep import run_sweep

    run_sweep(
        args.sweep,
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        address=args.address,
        overrides=tuple(args.set),
        tiny=args.tiny,
    )
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from sweeper.cli_sweep import check_resume_flags
    from sweeper.terminal import quiet

    quiet(args.verbose)
    if check_resume_flags(args):  # --dry-run: the plan printed, nothing run
        return 0
    from sweeper.sweep import resume_sweep

    resume_sweep(args.sweep_dir, address=args.address)
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    from sweeper.buffered import flush
    from sweeper.sharing import local_dir
    from sweeper.state import SweepState

    state = SweepState.load(args.sweep_dir)
    sent, left = flush(local_dir(state.sweep_dir), state.tracking_uri)
    print(f"{state.sweep_dir}: tracking buffer {'sent' if sent else f'not sent ({left} records left)'}")
    return 0 if sent else 1


def _cmd_best(args: argparse.Namespace) -> int:
    from sweeper.best import choose_winner, find_sweep
    from sweeper.cli_sweep import after_best
    from sweeper.sharing import local_view, publish

    state = find_sweep(args.target, args.tracking_uri)
    view = local_view(state)  # a sweep on S3: a local mirror, winner.yaml uploaded back
    after_best(view, choose_winner(view, n_resamples=args.resamples, verbose=args.verbose))
    publish(view, state.sweep_dir)
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from sweeper.cli_sweep import ui

    return ui(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from trainables.bench import run

    run(args)
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from trainables.config_files import load_config, to_dict

    cfg = load_config(args.config, args.set, ["tiny_cpu"] if args.tiny else None)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML, or a preset name (esrgan, sa_esrgan_lv, fm_pcsva, ...)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config value (repeatable), e.g. --set train.steps=200",
    )
    p.add_argument("--tiny", action="store_true", help="apply the tiny_cpu overlay (CPU-test sizes)")


def _sweep_args(p: argparse.ArgumentParser, resume: bool = False) -> None:
    again = " (resume: must repeat the launch's values)" if resume else ""
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a sweep key (budget.num_samples=2, scheduler.grace_period=1) or, for any "
        "other key, an experiment value (train.steps=20; set.KEY for an experiment key named "
        f"like a sweep key); repeatable{again}",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help=f"the tiny_cpu overlay (tiny_cpu_video for video presets), CPU only{again}",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (trials, space, resources, compute estimate); run nothing",
    )
    p.add_argument("--verbose", action="store_true", help="keep Ray, Tune, Optuna and MLflow log output")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="srsweep",
        description="Hyperparameter sweeps for GAN super-resolution "
        "losses (SA pixel, dual perceptual, feature matching). See README.md.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    e = sub.add_parser(
        "eval", help="score bicubic or a trained generator on a data set (PSNR/SSIM on Y, LPIPS)"
    )
    e.add_argument(
        "dataset",
        help="folder (HR/ + LR_bicubic/X{scale}/, or HR images only), 'embedded', "
        "a Vid4-layout video folder (HR/<seq>/ frames) or 'embedded-video'",
    )
    e.add_argument("--scale", type=int, default=4, choices=(2, 3, 4))
    e.add_argument(
        "--model", help="a checkpoint from srsweep train / a sweep (last.pt, pretrain_g.pt); default bicubic"
    )
    e.add_argument(
        "--lpips",
        choices=("auto", "pretrained", "random", "none"),
        default="auto",
        help="auto: pretrained AlexNet if its weights are present, else skipped (default)",
    )
    e.add_argument("--weights-dir", default=None, help="folder holding torchvision weight files")
    e.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    e.set_defaults(func=_cmd_eval)

    w = sub.add_parser("weights", help="fetch or verify ImageNet backbone weights (VGG19, ResNet50, AlexNet)")
    wsub = w.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    wf = wsub.add_parser("fetch", help="download torchvision's weight files into DIR (needs internet)")
    wf.add_argument("dir")
    wf.add_argument("--only", nargs="*", choices=("vgg19", "resnet50", "alexnet"))
    wf.set_defaults(func=_cmd_weights_fetch)
    wv = wsub.add_parser("verify", help="check weight files against torchvision's hash prefixes")
    wv.add_argument(
        "dir", nargs="?", default=None, help="default: $SRSWEEP_WEIGHTS_DIR or the torch hub cache"
    )
    wv.set_defaults(func=_cmd_weights_verify)

    r = sub.add_parser(
        "run", help="run a sweep: Ray Tune trials, Optuna search, ASHA, MLflow, automatic winner"
    )
    r.add_argument("sweep", help="sweep YAML, e.g. search_spaces/demo.yaml")
    r.add_argument(
        "--address", help="existing Ray cluster: auto, HOST:PORT or ray://HOST:10001; default: local Ray"
    )
    r.add_argument(
        "--storage",
        default="ray_results",
        help="where sweep folders go: a folder (shared, e.g. NFS, on clusters) or s3://bucket/prefix",
    )
    r.add_argument(
        "--tracking-uri", help="MLflow URI; default $MLFLOW_TRACKING_URI or a SQLite store in this folder"
    )
    _sweep_args(r)
    r.set_defaults(func=_cmd_run)

    rs = sub.add_parser("resume", help="continue an interrupted sweep from its folder")
    rs.add_argument("sweep_dir", help="the sweep folder, or its s3://bucket/prefix/NAME")
    rs.add_argument("--address", help="the Ray cluster to resume on (default: the one the sweep started on)")
    _sweep_args(rs, resume=True)
    rs.set_defaults(func=_cmd_resume)

    sy = sub.add_parser("sync", help="send a sweep's tracking writes buffered during a store outage")
    sy.add_argument("sweep_dir")
    sy.set_defaults(func=_cmd_sync)

    be = sub.add_parser("best", help="rank a sweep's trials, write the winner config, tag its MLflow run")
    be.add_argument("target", help="sweep folder, or the MLflow experiment name of a sweep")
    be.add_argument("--tracking-uri", help="MLflow URI (when TARGET is an experiment name)")
    be.add_argument(
        "--resamples",
        type=int,
        default=9999,
        help="random sign patterns of the paired test beyond 16 images (exact below)",
    )
    be.add_argument("--verbose", action="store_true", help="also show where each trial ran (host, node, GPU)")
    be.set_defaults(func=_cmd_best)

    u = sub.add_parser(
        "ui", help="start the MLflow dashboard (mlflow server on 127.0.0.1) over the sweep store"
    )
    u.add_argument("--tracking-uri", help="default $MLFLOW_TRACKING_URI or a SQLite store in this folder")
    u.add_argument("--host", default="127.0.0.1", help="bind address (keep 127.0.0.1 unless behind auth)")
    u.add_argument("--port", type=int, default=5000)
    u.add_argument(
        "--background",
        action="store_true",
        help="return once the server answers (prints URL and PID; output to mlflow-ui.log)",
    )
    u.add_argument("--stop", action="store_true", help="stop the background dashboard of this store")
    u.add_argument("--dry-run", action="store_true", help="print the command only")
    u.set_defaults(func=_cmd_ui)

    t = sub.add_parser("train", help="one training run (PSNR pretraining, then GAN) logged to MLflow")
    _config_args(t)
    t.add_argument("--out", help="run folder (checkpoints); default runs/NAME-TIMESTAMP")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument(
        "--tracking-uri", help="MLflow URI; default $MLFLOW_TRACKING_URI or a SQLite store in this folder"
    )
    t.add_argument("--experiment", default="srsweep-train", help="MLflow experiment name")
    t.set_defaults(func=_cmd_train)

    b = sub.add_parser(
        "bench", help="time one generator step: plain ESRGAN vs SA+DP+FM vs a naive composition"
    )
    b.add_argument("--batch", type=int, default=4)
    b.add_argument("--patch", type=int, default=64, help="HR patch side (multiple of 32)")
    b.add_argument("--feat", type=int, default=32, help="generator / discriminator width")
    b.add_argument("--blocks", type=int, default=2, help="RRDB blocks")
    b.add_argument("--rounds", type=int, default=10)
    b.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    b.set_defaults(func=_cmd_bench)

    c = sub.add_parser("config", help="validate a config file and print it with all defaults filled in")
    _config_args(c)
    c.set_defaults(func=_cmd_config)
    return p


def user_errors() -> tuple[type[Exception], ...]:
    """The project's own errors: input a user can fix, reported in one line. Anything
    else (a plain ValueError included) is a bug and keeps its traceback."""
    # The last three predate SrsweepError; listed until they derive from it.
    from sweeper.interrupts import SweepInterrupted
    from sweeper.preflight import PreflightError
    from sweeper.select import NoWinnerError
    from trainables.backbones import WeightsNotFoundError
    from trainables.checkpoint import CheckpointError, PathEscapeError
    from trainables.data import DataError

    return (
        SrsweepError,
        DataError,
        WeightsNotFoundError,
        NoWinnerError,
        PreflightError,
        CheckpointError,
        PathEscapeError,
        SweepInterrupted,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except user_errors() as exc:
        for line in str(exc).splitlines():
            print(f"srsweep: error: {line}", file=sys.stderr)
        return 130 if type(exc).__name__ == "SweepInterrupted" else 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
