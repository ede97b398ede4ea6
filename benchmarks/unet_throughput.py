"""How fast the Stage-2 UNet runs one denoising step, by precision and compilation.

    python benchmarks/unet_throughput.py [--batch 256] [--iters 20]

Prints UNet sample-steps per second (forward only, as in sampling) for the paper's UNet
(UNetConfig.paper(), 131.2M parameters) and the variant without res-block resampling
(118.9M), at 32 x 32 x 32 latents: fp32 (tf32 matmuls), bf16 autocast eager, bf16
autocast + torch.compile, bf16 autocast + channels_last. The sampler is these steps plus
the decoder (docs/results.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from wavediffusion.models.unet import UNet, UNetConfig


def measure(model, x, t, iters: int, autocast: bool) -> float:
    context = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if autocast else torch.no_grad
    with torch.no_grad(), context():
        for _ in range(3):  # warm-up (and compilation)
            model(x, t)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iters):
            model(x, t)
        torch.cuda.synchronize()
    return x.shape[0] * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, batch {args.batch}")
    print("| UNet | parameters | precision | mode | sample-steps/s |\n|---|---|---|---|---|")
    for name, config in (("paper", UNetConfig.paper()),
                         ("no res-block resampling", dataclasses.replace(UNetConfig.paper(), resblock_updown=False))):
        model = UNet(config).cuda().eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        x = torch.randn(args.batch, config.in_channels, config.image_size, config.image_size, device="cuda")
        t = torch.randint(0, 1000, (args.batch,), device="cuda")
        rows = [("fp32 (tf32)", "eager", lambda: measure(model, x, t, args.iters, False)),
                ("bf16", "eager", lambda: measure(model, x, t, args.iters, True))]
        channels_last = UNet(config).cuda().eval().to(memory_format=torch.channels_last)
        rows.append(("bf16", "channels_last", lambda: measure(channels_last, x.to(memory_format=torch.channels_last),
                                                              t, args.iters, True)))
        compiled = torch.compile(model)
        rows.append(("bf16", "torch.compile", lambda: measure(compiled, x, t, args.iters, True)))
        for precision, mode, run in rows:
            print(f"| {name} | {params:.1f}M | {precision} | {mode} | {run():.0f} |", flush=True)


if __name__ == "__main__":
    main()
