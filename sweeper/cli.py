"""``srsweep`` command line: thin argument parsing over the library functions.

Errors the user can fix (bad config, missing data, missing weights) print one line
prefixed ``srsweep: error:`` and exit 2, with no traceback.
"""
from __future__ import annotations

import argparse
import sys

import yaml


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from trainables.data import PairedImages, open_dataset
    from trainables.evaluate import bicubic, evaluate, format_table
    from trainables.metrics import LPIPSMetric

    source = open_dataset(args.dataset, args.scale, split="val")
    items = PairedImages(source)
    lpips = None
    if args.lpips != "none":
        from trainables.backbones import WeightsNotFoundError, resolve_weights_dir

        try:
            lpips = LPIPSMetric(args.lpips if args.lpips != "auto" else "pretrained", args.weights_dir)
        except WeightsNotFoundError:
            if args.lpips != "auto":
                raise
            print(f"note: LPIPS skipped: no AlexNet weights in {resolve_weights_dir(args.weights_dir)} "
                  "('srsweep weights fetch DIR' on a machine with internet; '--lpips random' for a "
                  "plumbing check)", file=sys.stderr)
    if lpips is not None and args.lpips == "random":
        print("note: LPIPS uses a random-init AlexNet trunk: a plumbing check, not a perceptual score",
              file=sys.stderr)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    if lpips is not None:
        lpips = lpips.to(device)
    rows = evaluate(bicubic(args.scale), items, args.scale, lpips=lpips, device=device)
    print(format_table(rows, f"{args.dataset} x{args.scale}, bicubic (MATLAB imresize); Y channel, "
                             f"{args.scale}px border shaved"))
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
        print(f"{len(bad)} of {len(results)} weight files not usable in {folder}; "
              f"on a machine with internet run 'srsweep weights fetch DIR'", file=sys.stderr)
    return 1 if bad else 0


def _cmd_config(args: argparse.Namespace) -> int:
    from trainables.config import load_config, to_dict

    cfg = load_config(args.config)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="srsweep", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    e = sub.add_parser("eval", help="score bicubic upscaling on a data set (PSNR/SSIM on Y, LPIPS)")
    e.add_argument("dataset", help="folder (HR/ + LR_bicubic/X{scale}/, or HR images only) or 'embedded'")
    e.add_argument("--scale", type=int, default=4, choices=(2, 3, 4))
    e.add_argument("--lpips", choices=("auto", "pretrained", "random", "none"), default="auto",
                   help="auto: pretrained AlexNet if its weights are present, else skipped (default)")
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
    wv.add_argument("dir", nargs="?", default=None,
                    help="default: $SRSWEEP_WEIGHTS_DIR or the torch hub cache")
    wv.set_defaults(func=_cmd_weights_verify)

    c = sub.add_parser("config", help="validate a config file and print it with all defaults filled in")
    c.add_argument("config")
    c.set_defaults(func=_cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from trainables.backbones import WeightsNotFoundError
    from trainables.config import ConfigError
    from trainables.data import DataError

    try:
        return args.func(args)
    except (ConfigError, DataError, WeightsNotFoundError) as exc:
        for line in str(exc).splitlines():
            print(f"srsweep: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
