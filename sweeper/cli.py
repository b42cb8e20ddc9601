"""``srsweep`` command line: thin argument parsing over the library functions.

Errors the user can fix (bad config, missing data, missing weights) and what the
environment refuses (a full disk, a permission, a locked or damaged file: sweeper/errors.py)
print one line prefixed ``srsweep: error:`` and exit 2, with no traceback; bad options too.
Anything else is a bug: its traceback, then a line asking to report it (exit 1).
"""

from __future__ import annotations

import argparse
import sys
import traceback

import yaml

from trainables.errors import SrsweepError


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


def _cmd_eval(args: argparse.Namespace) -> int:
    from sweeper.cli_train import evaluate

    return evaluate(args)


def _cmd_train(args: argparse.Namespace) -> int:
    from sweeper.cli_train import train

    return train(args)


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
    from sweeper.errors import read_state
    from sweeper.sharing import local_dir

    state = read_state(args.sweep_dir)
    sent, left = flush(local_dir(state.sweep_dir), state.tracking_uri)
    print(f"{state.sweep_dir}: tracking buffer {'sent' if sent else f'not sent ({left} records left)'}")
    return 0 if sent else 1


def _cmd_best(args: argparse.Namespace) -> int:
    from sweeper.best import choose_winner, find_sweep
    from sweeper.cli_sweep import after_best
    from sweeper.sharing import local_view, publish
    from sweeper.statecheck import check_sweep

    try:
        state = find_sweep(args.target, args.tracking_uri)
    except UnicodeDecodeError:  # a damaged sweep.json: said in one line naming it
        from sweeper.errors import read_state

        read_state(args.target)
        raise
    check_sweep(state, "best")  # damaged, missing or locked state files: one line each
    view = local_view(state)  # a sweep on S3: a local mirror, winner.yaml uploaded back
    after_best(view, choose_winner(view, n_resamples=args.resamples, verbose=args.verbose))
    publish(view, state.sweep_dir)
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from sweeper.cli_sweep import ui

    return ui(args)


def _cmd_config(args: argparse.Namespace) -> int:
    from trainables.config_files import load_config, to_dict

    cfg = load_config(args.config, args.set, ["tiny_cpu"] if args.tiny else None)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


class _Parser(argparse.ArgumentParser):
    """Bad options are one line too (no usage block: ``srsweep COMMAND --help`` has it)."""

    def error(self, message: str):
        command = self.prog.removeprefix("srsweep").strip()
        self.exit(2, f"srsweep: error: {command + ': ' if command else ''}{message}\n")


def _bounded(low: int, high: int):
    """An argparse type: an int in [low, high] (argparse prints the one-line error, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:80]!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in [{low}, {high}]")
        return value

    return parse


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
    p = _Parser(
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
    e.add_argument(
        "--backbone-seed",
        type=int,
        default=None,
        help="seed of the random LPIPS trunk (--lpips random); default: the model's backbones.seed, else 0",
    )
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
        type=_bounded(0, 10**7),
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
    u.add_argument("--port", type=_bounded(1, 65535), default=5000)
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

    c = sub.add_parser("config", help="validate a config file and print it with all defaults filled in")
    _config_args(c)
    c.set_defaults(func=_cmd_config)
    return p


def user_errors() -> tuple[type[Exception], ...]:
    """The project's own errors: input a user can fix, reported in one line. Anything else
    is an environmental failure (``sweeper.errors.describe``: one line) or a bug (traceback)."""
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
    from sweeper.errors import BUG_LINE, describe

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except user_errors() as exc:
        for line in str(exc).splitlines():
            print(f"srsweep: error: {line}", file=sys.stderr)
        return 130 if type(exc).__name__ == "SweepInterrupted" else 2
    except KeyboardInterrupt:
        print("srsweep: error: interrupted by SIGINT", file=sys.stderr)
        return 130
    except Exception as exc:  # the environment's refusal in one line; anything else is our bug
        line = describe(exc)
        if line is None:
            traceback.print_exc()
            print(BUG_LINE, file=sys.stderr)
            return 1
        print(f"srsweep: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
