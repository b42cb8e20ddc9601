"""Training-step cost: plain ESRGAN vs the full SA+DP+FM stack vs a naive composition.

One G+D step (the trainer's ``gan_step``: G forward, the objective, G update, D update) on
one fixed batch of real patches (Canny maps made by the data code, as the workers do):
- ``a_esrgan``: plain ESRGAN (L1 pixel + VGG conv5_4 + RaGAN);
- ``b_full``: SA (Canny) + DP (ResNet stage 3) + FM (10 blocks) + SA feature, as the trainer
  runs it (per-step feature cache, targets without autograd);
- ``c_naive``: the same loss composed naively: separate VGG/ResNet forwards of sr and hr in
  every term, the Canny map computed inside the step, FM through a second D pass;
- with ``--options bf16,channels_last,compile``: ``b_full`` again under each GPU option.
Targets: b/a <= 1.30, c/b >= 1.5. Then a torch.profiler table of b's top ops.
"""

from __future__ import annotations

import statistics
import tempfile

import _common  # noqa: F401  (puts the repository on sys.path)
import torch
from _common import interleaved, parser, table, write

SIZES = {
    "tiny": dict(batch=4, patch=32, feat=16, blocks=2),
    "medium": dict(batch=4, patch=64, feat=32, blocks=2),  # the former `srsweep bench` defaults
    "paper": dict(batch=4, patch=64, feat=64, blocks=23),
}  # RRDB-23 G (paper), small batch


def config(full: bool, size: dict, device: str, **train) -> dict:
    loss = {
        "pixel": {"criterion": "l1", "beta1": 0.01},
        "perceptual": {"layer": "conv5_4", "weight": 1.0},
        "adv": {"kind": "ragan", "weight": 0.005},
    }
    if full:
        loss["pixel"]["sa"] = {"edge": "canny", "beta2": 20.0}
        loss["dp"] = {"mu": 0.5, "resnet_stage": 3}
        loss["sa_feature"] = {"alpha3": 1.0, "beta3": 1.0, "weight": 0.1, "mode": "add"}
        loss["fm"] = {"blocks": list(range(10)), "weight": 1.0}
    return {
        "data": {"patch_size": size["patch"], "batch_size": size["batch"], "num_workers": 0},
        "backbones": {"weights": "random"},
        "loss": loss,
        "model": {
            "generator": {"arch": "rrdbnet", "num_feat": size["feat"], "num_blocks": size["blocks"]},
            "discriminator": {"arch": "vgg", "num_feat": size["feat"]},
        },
        "train": {
            "pretrain_steps": 0,
            "steps": 10,
            "val_images": 1,
            "val_crop": 64,
            "device": device,
            **train,
        },
    }


def trainer(cfg: dict, out: str):
    from trainables.config import validate
    from trainables.train import Trainer

    t = Trainer(validate(cfg), out)
    if t.objective.term("fm") is not None:
        t.objective.term("fm").fm_scale.fill_(1.0)  # calibrated, as after stage-2 start
    return t


def naive_step(t, batch: dict) -> None:
    """The full loss with every term fetching its own features (bench/naive.py)."""
    from naive import naive_terms

    from trainables.objective import d_loss

    sr = t.G(batch["lr"])
    t.D.requires_grad_(False)
    loss = naive_terms(t.objective, t.D, sr, batch["hr"], t.cfg.loss)
    t.opt_g.zero_grad(set_to_none=True)
    loss.backward()
    t.opt_g.step()
    t.D.requires_grad_(True)
    l_d = d_loss(t.D, sr, batch["hr"], t.cfg.loss.adv.kind)
    t.opt_d.zero_grad(set_to_none=True)
    l_d.backward()
    t.opt_d.step()


def profile(fn, device: str, rows: int = 12, steps: int = 3) -> list[list]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with prof(activities=acts) as p:
        for _ in range(steps):
            fn()
    _common.sync(device)
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    ev = sorted(p.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in ev) or 1.0
    return [
        [e.key, e.count // steps, getattr(e, key) / steps / 1e3, 100 * getattr(e, key) / total]
        for e in ev[:rows]
    ]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--sizes", default="tiny,medium,paper")
    p.add_argument("--options", default="", help="comma list of bf16, channels_last, compile: extra b rows")
    args = p.parse_args()
    sizes = ["tiny"] if args.quick else args.sizes.split(",")
    rounds = 1 if args.quick else args.rounds
    opts = {"bf16": {"amp": "bf16"}, "channels_last": {"channels_last": True}, "compile": {"compile": True}}
    figures, tmp = {}, tempfile.mkdtemp(prefix="bench_step_")
    for name in sizes:
        size = SIZES[name]
        ta = trainer(config(False, size, args.device), tmp)
        tb = trainer(config(True, size, args.device), tmp)
        batch = _batch(tb, size["batch"])
        fns = {
            "a_esrgan": lambda: ta.gan_step(batch),
            "b_full": lambda: tb.gan_step(batch),
            "c_naive": lambda: naive_step(tb, batch),
        }
        for o in filter(None, args.options.split(",")):
            to = trainer(config(True, size, args.device, **opts[o]), tmp)
            fns[f"b_{o}"] = (lambda t: lambda: t.gan_step(batch))(to)
        n = rounds if name != "paper" or args.device == "cuda" else max(2, rounds // 3)
        raw: dict[str, list[float]] = {}
        t = interleaved(fns, n, args.device, warmup=1 if args.quick else 2, per_round=raw)
        ms = {k: v * 1e3 for k, v in t.items()}
        print(
            f"\n[{name}] G+D step, RRDBNet {size['feat']}ch x {size['blocks']}, batch {size['batch']}, "
            f"HR {size['patch']} px, {args.device}, {n} interleaved rounds"
        )
        print(table(["step", "median ms", "x a_esrgan"], [[k, v, v / ms["a_esrgan"]] for k, v in ms.items()]))
        ratios = {"b/a": ms["b_full"] / ms["a_esrgan"], "c/b": ms["c_naive"] / ms["b_full"]}
        # Per-round ratios cancel load that drifts slower than one round (this box is shared).
        ratios["b/a paired"] = _paired(raw["b_full"], raw["a_esrgan"])
        ratios["c/b paired"] = _paired(raw["c_naive"], raw["b_full"])
        print(f"b/a = {ratios['b/a']:.3f} (target <= 1.30)   c/b = {ratios['c/b']:.3f} (target >= 1.5)")
        print(
            f"median of per-round ratios: b/a = {ratios['b/a paired']:.3f}   c/b = {ratios['c/b paired']:.3f}"
        )
        top = profile(lambda: tb.gan_step(batch), args.device, steps=1 if args.quick else 3)
        print(f"top ops of b_full ({'self CUDA' if args.device == 'cuda' else 'self CPU'} time per step):")
        print(table(["op", "calls", "ms", "%"], top))
        figures[name] = {"size": size, "ms": ms, "ratios": ratios, "top_ops": top}
    write("step", args, {"sizes": figures})


def _paired(num: list[float], den: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(num, den))


def _batch(t, n: int) -> dict:
    """The first ``n`` patches of the trainer's stream, collated and on its device."""
    items = [t.patches[k] for k in range(n)]
    return {k: torch.stack([it[k] for it in items]).to(t.device) for k in items[0]}


if __name__ == "__main__":
    main()
