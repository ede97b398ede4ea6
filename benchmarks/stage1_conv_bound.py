"""How fast Stage 1's generator step could be if only its convolutions cost time.

Records every convolution the paper-size autoencoder runs in one training forward (encoder,
both decoders), times each distinct one alone on the GPU, forward and backward, in bf16, in
NCHW and in channels-last, and sums the faster layout's time over all of them. Norms,
activations, attention, the quantiser, the loss and the optimiser are taken as free, so the
samples/s this prints bounds the step from above: a training step cannot beat its own
convolutions as cuDNN runs them. (The attention blocks' 1x1 projections run as matrix
products and are left out with the attention.)

    python benchmarks/stage1_conv_bound.py --batch-size 16 --out conv_bound.csv
    python benchmarks/stage1_conv_bound.py --tiny --device cpu --out /tmp/conv_bound.csv  # a try-out
"""

from __future__ import annotations

import argparse
import csv
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wavediffusion.models.autoencoder import AutoencoderConfig, VQAutoencoder


def recorded_convolutions(config: AutoencoderConfig) -> Counter:
    """(in, out, kernel, stride, padding, height, width, needs input gradient) of every
    convolution one forward of the autoencoder runs on one sample, counted. The convolution
    that reads the seismic data itself needs no input gradient in training."""
    model = VQAutoencoder(config)
    seismic = torch.zeros(1, *config.seismic_shape)
    seen: Counter = Counter()

    def hook(module: nn.Conv2d, inputs, _output):
        _, _, height, width = inputs[0].shape
        # the input convolution runs on channels zero-padded to a multiple of 8 (InputConv2d)
        c_in = getattr(module, "padded_in_channels", module.in_channels)
        seen[(c_in, module.out_channels, module.kernel_size[0], module.stride, module.padding[0], height, width,
              inputs[0] is not seismic)] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(seismic)
    for handle in handles:
        handle.remove()
    return seen


def conv_flops(shape: tuple, batch: int) -> float:
    """Forward multiply-adds x 2 of one convolution over a batch (backward: twice this)."""
    c_in, c_out, k, stride, _, height, width, _ = shape
    return 2.0 * batch * c_out * (height // stride[0]) * (width // stride[1]) * c_in * k * k


def time_convolution(shape: tuple, batch: int, layout: str, device: str, iters: int) -> float:
    """Seconds of one forward + backward (weight gradient; input gradient where needed)."""
    c_in, c_out, k, stride, padding, height, width, input_gradient = shape
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    memory_format = torch.channels_last if layout == "channels-last" else torch.contiguous_format
    x = torch.randn(batch, c_in, height, width, device=device, dtype=dtype).to(memory_format=memory_format)
    x.requires_grad_(input_gradient)
    weight = torch.randn(c_out, c_in, k, k, device=device, dtype=dtype).to(memory_format=memory_format)
    weight.requires_grad_(True)
    grad = None

    def step():
        nonlocal grad
        y = F.conv2d(x, weight, stride=stride, padding=padding)
        if grad is None:
            grad = torch.randn_like(y)
        torch.autograd.backward(y, grad)

    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="toy sizes: a CPU try-out of this script")
    parser.add_argument("--out", type=Path, required=True, help="CSV: one row per distinct convolution, then the sum")
    args = parser.parse_args()
    config = AutoencoderConfig.tiny() if args.tiny else AutoencoderConfig.paper()
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    rows, total_seconds, total_flops = [], 0.0, 0.0
    convolutions = recorded_convolutions(config)
    for shape, count in sorted(convolutions.items(), key=lambda item: -conv_flops(item[0], 1) * item[1]):
        seconds = {layout: time_convolution(shape, args.batch_size, layout, args.device, args.iters)
                   for layout in ("nchw", "channels-last")}
        best = min(seconds, key=seconds.get)
        flops = (3 if shape[-1] else 2) * conv_flops(shape, args.batch_size)  # forward, input and weight gradients
        total_seconds += count * seconds[best]
        total_flops += count * flops
        c_in, c_out, k, stride, _, height, width, _ = shape
        rows.append({"convolution": f"{c_in}->{c_out} {k}x{k} stride {stride[0]}x{stride[1]} at {height}x{width}",
                     "count": count, "ms_nchw": 1e3 * seconds["nchw"],
                     "ms_channels_last": 1e3 * seconds["channels-last"],
                     "tflops_best": flops / seconds[best] / 1e12, "ms_all_best": 1e3 * count * seconds[best]})
        print(rows[-1], flush=True)
    rows.append({"convolution": "all (each at its faster layout)", "count": sum(r["count"] for r in rows),
                 "ms_all_best": 1e3 * total_seconds, "tflops_best": total_flops / total_seconds / 1e12,
                 "samples_per_s_bound": args.batch_size / total_seconds})
    print(rows[-1])
    fields = ["gpu", "batch", "convolution", "count", "ms_nchw", "ms_channels_last", "tflops_best", "ms_all_best",
              "samples_per_s_bound"]
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fields, restval="")
        writer.writeheader()
        writer.writerows({**row, "gpu": gpu, "batch": args.batch_size} for row in rows)
    print(f"batch {args.batch_size}, {gpu}: convolutions alone {1e3 * total_seconds:.1f} ms a step, "
          f"at most {args.batch_size / total_seconds:.1f} samples/s")


if __name__ == "__main__":
    main()
