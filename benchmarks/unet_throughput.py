"""How fast the Stage-2 UNet runs one denoising step, by precision, compilation and
attention layout.

    python benchmarks/unet_throughput.py [--device cuda|cpu] [--batch 256] [--iters 20]
        [--paper-only] [--eager-only] [--compare-strided]

Prints UNet sample-steps per second (forward only, as in sampling) for the paper's UNet
(UNetConfig.paper(), 131.2M parameters) and the variant without res-block resampling
(118.9M), at 32 x 32 x 32 latents: on a GPU fp32 (tf32 matmuls), bf16 autocast eager,
bf16 autocast + channels_last and bf16 autocast + torch.compile; on the CPU fp32 eager.
`--compare-strided` adds the eager rows with the attention layout used before 2026-12-01
(q, k, v with each head's features at stride N, which sends SDPA to its math kernel; see
models/attention.py). The sampler is these steps plus the decoder (docs/results.md).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time

import torch

from wavediffusion.diffusion.samplers import synchronize
from wavediffusion.models import attention
from wavediffusion.models.unet import UNet, UNetConfig


def strided_split_heads(qkv: torch.Tensor, num_heads: int):
    """The layout before 2026-12-01: a reshape of the (B, 3C, N) projection, features at stride N."""
    b, three_c, n = qkv.shape
    return qkv.reshape(b, 3, num_heads, three_c // (3 * num_heads), n).permute(1, 0, 2, 4, 3)


@contextlib.contextmanager
def attention_layout(layout: str):
    """Run the UNet's attention with the current ("unit-stride") or the old ("strided") layout."""
    current = attention.split_heads
    attention.split_heads = strided_split_heads if layout == "strided" else current
    try:
        yield
    finally:
        attention.split_heads = current


def measure(model, x, t, iters: int, bf16: bool, layout: str) -> float:
    """Sample-steps per second of `iters` forward passes after 3 warm-up passes (and compilation)."""
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    with torch.no_grad(), autocast(), attention_layout(layout):
        for _ in range(3):
            model(x, t)
        synchronize(x.device)
        start = time.perf_counter()
        for _ in range(iters):
            model(x, t)
        synchronize(x.device)
    return x.shape[0] * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--paper-only", action="store_true", help="only the paper's UNet (res-block resampling)")
    parser.add_argument("--eager-only", action="store_true", help="skip torch.compile (about a minute per UNet)")
    parser.add_argument("--compare-strided", action="store_true",
                        help="also time the eager UNet with the attention layout before 2026-12-01")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    machine = torch.cuda.get_device_name() if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"{machine}, torch {torch.__version__}, batch {args.batch}")
    print("| UNet | parameters | precision | mode | attention layout | sample-steps/s |\n|---|---|---|---|---|---|")
    configs = [("paper", UNetConfig.paper()),
               ("no res-block resampling", dataclasses.replace(UNetConfig.paper(), resblock_updown=False))]
    for name, config in configs[:1] if args.paper_only else configs:
        torch.manual_seed(0)
        model = UNet(config).to(device).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        x = torch.randn(args.batch, config.in_channels, config.image_size, config.image_size, device=device)
        t = torch.randint(0, 1000, (args.batch,), device=device)
        layouts = ["strided", "unit-stride"] if args.compare_strided else ["unit-stride"]
        # (precision, mode, layout, model, input)
        rows = [("fp32 (tf32)" if gpu else "fp32", "eager", layout, model, x) for layout in layouts]
        if gpu:
            rows += [("bf16", "eager", layout, model, x) for layout in layouts]
            channels_last = UNet(config).to(device).eval().to(memory_format=torch.channels_last)
            rows.append(("bf16", "channels_last", "unit-stride", channels_last,
                         x.to(memory_format=torch.channels_last)))
            if not args.eager_only:
                rows.append(("bf16", "torch.compile", "unit-stride", torch.compile(model), x))
        for precision, mode, layout, network, inputs in rows:
            rate = measure(network, inputs, t, args.iters, precision == "bf16", layout)
            print(f"| {name} | {params:.1f}M | {precision} | {mode} | {layout} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()
