"""The SA share each paper preset reaches with its paper beta2, on real images (issue 20, 8).

The SA paper (IV-C) chose beta2 "so that the SA loss part took up around 15% of the total
training loss": 20 for SA-ESRGAN (lv and Canny alike), 5 (lv) and 1.5 (Canny) for
SA-VSRResFeatGAN; it gives no local-variance window or delta and no Canny thresholds.
This script measures share = beta2 S / total (S = mean(W * rho), SA eq. 12-13) at the
start of the GAN stage, where the paper's generator starts: a PSNR-pretrained generator
(this project's own pretraining stage, a small RRDBNet on DIV2K256 crops, CPU) on held-out
DIV2K256 crops (x4 MATLAB-bicubic LR), 128 px patches as the presets train on, a fresh D.

Caveats, said again in the README: backbones are random-init offline (no ImageNet
weights here), so the VGG term's magnitude, hence the total and the share, is not the
ImageNet one; the pixel-side numbers (S, lv vs Canny) do not depend on it. The VSR rows
use the image generator's output as a proxy for VSRResFeatGAN's (training it is too
costly here): same loss weights as the VSR presets, not the same residuals.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from _common import ROOT, parser, table, write

PAPER_BETA2 = {"sa_esrgan_lv": 20.0, "sa_esrgan_canny": 20.0, "sa_vsr_lv": 5.0, "sa_vsr_canny": 1.5}  # IV-C
DATA = Path(os.environ.get("SRSWEEP_SHARED_DATA", ROOT.parent / "shared" / "data")) / "DIV2K256" / "HR"


def _subset(files: list[Path], folder: Path) -> str:
    folder.mkdir(parents=True)
    for f in files:
        shutil.copy(f, folder / f.name)
    return str(folder)


def pretrain(files: list[Path], steps: int, work: Path):
    """This project's PSNR pretraining stage (L1), a small RRDBNet: returns G (eval)."""
    from trainables.config_files import load_config
    from trainables.train import Trainer

    over = [
        f"data.train={_subset(files[2:], work / 'train')}",
        f"data.val={_subset(files[:2], work / 'val')}",
        "data.patch_size=64",
        "data.batch_size=8",
        f"train.pretrain_steps={steps}",
        "train.steps=1",
        "train.lr=2e-4",
        "train.val_images=2",
        "train.device=cpu",
    ]
    t = Trainer(load_config("esrgan", over, ["tiny_cpu"]), work / "run")
    last = t.run(until=steps)
    return t.G.eval(), last


def patches(G, files: list[Path], patch: int = 128):
    """(sr, hr, hr_uint8) 128 px patches: G on the whole LR image, then the two diagonal crops."""
    import numpy as np
    import torch

    from trainables.data import load_image, make_lr

    out = []
    for f in files:
        hr8 = load_image(f)
        lr = torch.from_numpy(make_lr(hr8, 4)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            sr = G(lr).clamp(0, 1)
        hr = torch.from_numpy(np.ascontiguousarray(hr8)).permute(2, 0, 1)[None].float() / 255
        for y in range(0, hr.shape[-2] - patch + 1, patch):
            x = y  # the 2 diagonal crops of a 256 px image: 4 would double the CPU time
            s = (..., slice(y, y + patch), slice(x, x + patch))
            out.append((sr[s], hr[s], hr8[y : y + patch, x : x + patch]))
    return out


class _Memo(torch.nn.Module):
    """One VGG pass per image tensor for all presets (they share layer and backbones.seed)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.cache = net, {}

    def forward(self, x):
        key = (x.data_ptr(), tuple(x.shape))
        if key not in self.cache:
            self.cache[key] = self.net(x)
        return self.cache[key]


def batches(items, batch: int = 8) -> list:
    """(sr, hr, [hr_uint8]) batches of ``batch`` patches."""
    import torch

    out = []
    for i in range(0, len(items) - batch + 1, batch):
        sr, hr, hr8 = (list(z) for z in zip(*items[i : i + batch]))
        out.append((torch.cat(sr), torch.cat(hr), hr8))
    return out


def measure(preset: str, items, vgg: _Memo, batch: int = 8) -> dict:
    """Mean over batches of the share and of each term, with the preset's own loss."""
    import numpy as np
    import torch

    from trainables.config_files import load_config
    from trainables.edges import canny
    from trainables.models import build_discriminator
    from trainables.objective import GeneratorObjective

    paper = [f"loss.pixel.sa.beta2={PAPER_BETA2[preset]}", "loss.pixel.sa.sa_share_target=null"]
    cfg = load_config(preset, ["backbones.weights=random", *paper])
    sa = cfg.loss.pixel.sa
    torch.manual_seed(0)
    disc = build_discriminator(cfg.model.discriminator, 128).eval()
    obj = GeneratorObjective(cfg).eval()
    obj.backbones["vgg"] = vgg
    rows = []
    for sr, hr, hr8 in items:
        edge = None
        if sa.edge == "canny":
            maps = [canny(h, sa.canny.low, sa.canny.high, sa.channels) for h in hr8]
            edge = torch.from_numpy(np.stack(maps)).permute(0, 3, 1, 2)
        with torch.no_grad():
            out = obj(sr, hr, edge, disc=disc)
        row = {k: float(v) for k, v in out.scalars().items()}
        row["sa_raw"] = float(out.extra("sa_raw"))
        rows.append(row)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    rest, raw, s = mean["loss_g_total"] - mean["loss_sa_pixel"], mean["sa_raw"], 0.15
    mean["beta2"], mean["beta2_for_0.15"] = float(sa.beta2), s * rest / ((1 - s) * raw)
    mean["sa_over_pixel"] = mean["loss_sa_pixel"] / (mean["loss_pixel"] - mean["loss_sa_pixel"])
    # backbone-free: the perceptual + adversarial total at which the paper beta2 gives 15%
    mean["rest_for_0.15"] = mean["loss_sa_pixel"] / s - mean["loss_pixel"]
    mean["batches"] = len(rows)
    return mean


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--images", type=int, default=24, help="held-out DIV2K256 crops to measure on")
    p.add_argument("--pretrain-steps", type=int, default=400)
    args = p.parse_args()
    if args.quick:
        args.images, args.pretrain_steps = 4, 5
    from trainables.backbones import VGGFeatures

    torch.set_num_threads(min(2, torch.get_num_threads()))
    files = sorted(DATA.glob("*.png"))
    held_out, train = files[: args.images], files[args.images :]
    with tempfile.TemporaryDirectory(prefix="sa_share_") as work:
        G, last = pretrain(train, args.pretrain_steps, Path(work))
    items = batches(patches(G, held_out))
    vgg = _Memo(VGGFeatures(["conv5_4"], "random", seed=0))  # = each objective's own VGG
    results = {preset: measure(preset, items, vgg) for preset in PAPER_BETA2}
    keys = [
        "beta2",
        "sa_share",
        "beta2_for_0.15",
        "sa_raw",
        "loss_sa_pixel",
        "loss_vgg",
        "loss_adv",
        "loss_g_total",
        "rest_for_0.15",
    ]
    print(table(["preset", *keys], [[k, *[r[c] for c in keys]] for k, r in results.items()]))
    lv, cn = results["sa_esrgan_lv"]["sa_raw"], results["sa_esrgan_canny"]["sa_raw"]
    print(
        f"S(canny) / S(lv) = {cn / lv:.3f}; pretrained G: val PSNR {last.get('val_psnr', float('nan')):.2f}"
    )
    write(
        "sa_share",
        args,
        {
            "images": [f.name for f in held_out],
            "patches": 8 * len(items),
            "pretrain_steps": args.pretrain_steps,
            "pretrain_val": {k: v for k, v in last.items() if k.startswith("val_")},
            "canny_over_lv": cn / lv,
            "presets": results,
        },
    )


if __name__ == "__main__":
    main()
