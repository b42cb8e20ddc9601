"""Evaluation speed: the project's batched metrics vs a per-image numpy/scikit-image loop.

Both score the same bicubic x4 outputs of a benchmark set (default Set14) with PSNR-Y,
SSIM-Y (4 px shaved, MATLAB conventions) and LPIPS (AlexNet trunk, random-init here:
no ImageNet weights offline; the speed does not depend on the weights):
- ``project``: ``trainables.metrics`` on images batched by size (one call per size);
- ``reference``: per image, numpy Y conversion, ``skimage.metrics`` PSNR and SSIM
  (Gaussian window, sigma 1.5), the ``lpips`` package called once per image.
Values must agree to 1e-4; the speed-up target is >= 3x.
"""

from __future__ import annotations

import _common  # noqa: F401  (puts the repository on sys.path)
import numpy as np
import torch
from _common import interleaved, parser, table, write


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data", default=str(_common.ROOT.parent / "shared" / "data" / "Set14"))
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from trainables.data import PairedImages, open_dataset
    from trainables.evaluate import bicubic
    from trainables.metrics import LPIPSMetric, psnr, quantize, ssim

    dev, scale = torch.device(args.device), 4
    items = [
        PairedImages(open_dataset(args.data, scale, "val"))[i]
        for i in range(len(open_dataset(args.data, scale, "val")))
    ]
    if args.quick:
        items, args.rounds = items[:3], 1
    up = bicubic(scale)
    pairs = [(quantize(up(it["lr"][None])).to(dev), it["hr"][None].to(dev)) for it in items]
    lp = LPIPSMetric("random", seed=0).to(dev)
    groups: dict[tuple, list[int]] = {}
    for i, (_, hr) in enumerate(pairs):
        groups.setdefault(tuple(hr.shape), []).append(i)

    def project() -> np.ndarray:
        out = np.zeros((len(pairs), 3))
        for idx in groups.values():
            sr = torch.cat([pairs[i][0] for i in idx])
            hr = torch.cat([pairs[i][1] for i in idx])
            vals = torch.stack([psnr(sr, hr, scale), ssim(sr, hr, scale), lp(sr, hr).double()], 1)
            out[idx] = vals.cpu().numpy()
        return out

    net = lp.net  # the same lpips.LPIPS module, called the package's way, per image

    def y_round(x: torch.Tensor) -> np.ndarray:
        a = x[0].permute(1, 2, 0).double().cpu().numpy() * 255
        return np.round(16 + a @ np.array([65.481, 128.553, 24.966]) / 255)[scale:-scale, scale:-scale]

    def reference() -> np.ndarray:
        out = np.zeros((len(pairs), 3))
        for i, (sr, hr) in enumerate(pairs):
            ys, yh = y_round(sr), y_round(hr)
            out[i, 0] = peak_signal_noise_ratio(yh, ys, data_range=255)
            out[i, 1] = structural_similarity(
                yh, ys, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
            )
            with torch.no_grad():
                out[i, 2] = float(net(sr, hr, normalize=True))
        return out

    a, b = project(), reference()
    diff = np.abs(a - b).max(axis=0)
    t = interleaved({"project": project, "reference": reference}, args.rounds, args.device)
    print(f"{args.data}: {len(pairs)} images in {len(groups)} size groups, {args.rounds} interleaved rounds")
    print(table(["path", "s per set", "x project"], [[k, v, v / t["project"]] for k, v in t.items()]))
    print(f"max |diff|: PSNR {diff[0]:.2e} dB, SSIM {diff[1]:.2e}, LPIPS {diff[2]:.2e}")
    val = validation(args, items, lp)
    write(
        "eval",
        args,
        {
            "images": len(pairs),
            "seconds": t,
            "speedup": t["reference"] / t["project"],
            "max_abs_diff": {"psnr": diff[0], "ssim": diff[1], "lpips": diff[2]},
            "validation": val,
        },
    )


def validation(args, items: list[dict], lp) -> dict:
    """Training-time validation (trainables/evaluate.py): a tiny RRDBNet on the trainer's
    96 px centre crops, one image at a time (before) vs equal sizes batched (after)."""
    from trainables.config import RRDBNetConfig
    from trainables.evaluate import center_crop, evaluate
    from trainables.models import build_generator

    torch.manual_seed(0)
    g = build_generator(RRDBNetConfig(num_feat=16, num_blocks=2), 4).to(args.device).eval()
    crops = [center_crop(it, 96, 4) for it in items]

    def run(batch: int):
        return evaluate(lambda lr: g(lr).clamp(0, 1), crops, 4, lpips=lp, device=args.device, batch=batch)

    a, b = run(1), run(8)
    diff = max(
        abs(x - y) for r, q in zip(a, b) for x, y in zip((r.psnr, r.ssim, r.lpips), (q.psnr, q.ssim, q.lpips))
    )
    t = interleaved({"per_image": lambda: run(1), "batched_8": lambda: run(8)}, args.rounds, args.device)
    print(f"training validation, {len(crops)} crops of 96 px, RRDBNet 16ch x 2:")
    print(table(["validation", "s", "x batched"], [[k, v, v / t["batched_8"]] for k, v in t.items()]))
    print(f"max |diff| batched vs per image: {diff:.2e}")
    return {"seconds": t, "speedup": t["per_image"] / t["batched_8"], "max_abs_diff": diff}


if __name__ == "__main__":
    main()
