"""GPU figures at paper size: RRDB-23 G, HR 128 px, batch 16 (ready; untested on a GPU so far).

- ``it/s`` of the trainer's own G+D step (SA (Canny) + DP + FM + SA feature, the objective as
  the trainer runs it) fed by the trainer's own loader (DIV2K256, Canny in the workers);
- ``MFU``: FLOPs of one step, counted by ``torch.utils.flop_counter.FlopCounterMode``
  (forward + backward of G, D and the frozen backbones), times it/s, over the card's dense
  bf16 peak (PEAK_TFLOPS, by device name; ``--peak`` overrides). Target >= 40%;
- the data-wait fraction: time blocked on the loader / wall time of the timed steps;
- 4 fractional trials on one GPU (``resources: {gpu: 0.25}``: Ray only sets
  CUDA_VISIBLE_DEVICES, so 4 processes sharing the card is what Ray runs): their summed
  it/s and the GPU utilisation sampled by NVML every 0.2 s while all 4 run. Target >= 90%.
On CPU (``--quick``) a tiny version runs end to end and the GPU columns say "no GPU".
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import _common  # noqa: F401  (puts the repository on sys.path)
from _common import parser, sync, table, write

DATA = _common.ROOT.parent / "shared" / "data"
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), from the vendors' data sheets.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "A100": 312.0,
    "A10G": 70.0,
    "A10": 125.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
    "RTX 6000 Ada": 364.0,
    "RTX A6000": 155.0,
    "GH200": 989.0,
    "B200": 2250.0,
}


def peak_tflops(name: str) -> float | None:
    """The longest table key contained in the device name (``NVIDIA H100 80GB HBM3`` -> H100)."""
    hits = [k for k in PEAK_TFLOPS if k.lower() in name.lower()]
    return PEAK_TFLOPS[max(hits, key=len)] if hits else None


def build(args):
    from trainables.config_files import load_config
    from trainables.train import Trainer

    g = "model.generator.num_feat=64 model.generator.num_blocks=23 model.generator.rrdbnet.grow_ch=32"
    if args.quick:
        g = "model.generator.num_feat=8 model.generator.num_blocks=1 model.generator.rrdbnet.grow_ch=4"
    over = [
        f"data.train={DATA / 'DIV2K256'}",
        f"data.val={DATA / 'Set14'}",
        f"data.batch_size={args.batch}",
        f"data.patch_size={args.patch}",
        f"data.num_workers={args.workers}",
        *g.split(),
        "model.discriminator.num_feat=64" if not args.quick else "model.discriminator.num_feat=8",
        "loss.dp.mu=0.5",
        "loss.dp.resnet_stage=3",
        "loss.fm.blocks=[0,1,2,3,4,5,6,7,8,9]",
        "loss.sa_feature.weight=0.1",
        "loss.sa_feature.mode=add",
        "loss.pixel.sa.sa_share_target=null",  # the paper's fixed beta2, as measured before
        "loss.pixel.sa.beta2=20",
        "train.pretrain_steps=0",
        "train.val_images=1",
        f"train.device={args.device}",
        f"train.amp={args.amp}",
        f"train.channels_last={str(args.channels_last).lower()}",
        f"train.compile={str(args.compile).lower()}",
    ]
    t = Trainer(
        load_config("sa_esrgan_canny", overlays=["tiny_cpu"], overrides=over),
        tempfile.mkdtemp(prefix="bench_gpu_"),
    )
    t.objective.term("fm").fm_scale.fill_(1.0)
    return t


def timed_steps(t, args) -> dict:
    it, wait, n = t.batches(0), 0.0, args.warmup + args.steps
    for k in range(n):
        if k == args.warmup:
            sync(args.device)
            t0, wait = time.perf_counter(), 0.0
        w0 = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - w0
        t.gan_step(batch)
    sync(args.device)
    wall = time.perf_counter() - t0
    del it
    return {"it_s": args.steps / wall, "data_wait": wait / wall}


def step_flops(t, args) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    batch = next(t.batches(0))
    with FlopCounterMode(display=False) as fc:
        t.gan_step(batch)
    return float(fc.get_total_flops())


class Sampler(threading.Thread):
    """GPU utilisation (%) by NVML every 0.2 s (nvidia-smi when pynvml is missing)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples, self.stop = [], threading.Event()

    def read(self) -> float:
        try:
            import pynvml

            pynvml.nvmlInit()
            return float(pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByIndex(0)).gpu)
        except ImportError:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            return float(out.split()[0])

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.samples.append(self.read())


def fractional(args, n: int) -> dict:
    """n worker processes (one trial each) on the same device; summed it/s, sampled util."""
    cmd = (
        [
            sys.executable,
            __file__,
            "--worker",
            "--device",
            args.device,
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--batch",
            str(args.batch),
            "--patch",
            str(args.patch),
            "--workers",
            str(args.workers),
            "--amp",
            args.amp,
        ]
        + (["--quick"] if args.quick else [])
        + (["--channels-last"] if args.channels_last else [])
        + (["--compile"] if args.compile else [])
    )
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    sampler = Sampler() if args.device == "cuda" else None
    if sampler:
        sampler.start()
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    util = None
    if sampler:
        sampler.stop.set()
        sampler.join()
        busy = sorted(sampler.samples)[len(sampler.samples) // 10 :]  # drop start-up (lowest 10%)
        util = statistics.mean(busy) if busy else None
    return {"trials": n, "it_s_sum": sum(o["it_s"] for o in outs), "gpu_util": util}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--amp", default="bf16", choices=["none", "bf16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument(
        "--peak", type=float, default=None, help="bf16 peak TFLOP/s, if the card is not in the table"
    )
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--worker", action="store_true", help=argparse_suppress())
    args = p.parse_args()
    if args.quick:
        args.batch, args.patch, args.workers, args.steps, args.warmup, args.trials = 2, 32, 0, 2, 1, 2
    if args.device == "cpu":
        args.amp = "none" if args.quick else args.amp
    t = build(args)
    if args.worker:  # one fractional trial: print its figures as the last line
        print(json.dumps(timed_steps(t, args)))
        return
    flops = step_flops(t, args)
    r = timed_steps(t, args)
    gpu = args.device == "cuda"
    import torch

    name = torch.cuda.get_device_name(0) if gpu else "no GPU"
    peak = args.peak or (peak_tflops(name) if gpu else None)
    mfu = flops * r["it_s"] / (peak * 1e12) if peak else None
    del t
    frac = fractional(args, args.trials)
    size = "RRDB-23 64ch" if not args.quick else "tiny RRDB (smoke run)"
    print(
        f"{size}, HR {args.patch} px, batch {args.batch}, amp {args.amp}, "
        f"channels_last {args.channels_last}, compile {args.compile}, {args.workers} loader workers, {name}"
    )
    print(
        table(
            ["figure", "value", "target"],
            [
                ["it/s (one trial)", r["it_s"], ""],
                ["TFLOP per step (FlopCounterMode)", flops / 1e12, ""],
                ["bf16 peak TFLOP/s", peak if peak else "no GPU", ""],
                ["MFU", mfu if mfu is not None else "no GPU", ">= 0.40"],
                ["data-wait fraction", r["data_wait"], "< 0.05"],
                [f"{frac['trials']} fractional trials: summed it/s", frac["it_s_sum"], ""],
                [
                    f"{frac['trials']} fractional trials: GPU util %",
                    frac["gpu_util"] if gpu else "no GPU",
                    ">= 90",
                ],
            ],
        )
    )
    write(
        "gpu",
        args,
        {
            "device_name": name,
            "batch": args.batch,
            "patch": args.patch,
            "amp": args.amp,
            "flops_per_step": flops,
            "peak_tflops": peak,
            "mfu": mfu,
            **r,
            "fractional": frac,
        },
    )


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
