import sys, torch
sys.path.insert(0, 'benchmarks')
from torch import nn
from stage1_throughput import measure
from wavediffusion.models import autoencoder
padded = autoencoder.InputConv2d.forward
for name, fwd in (("3 channels (before)", nn.Conv2d.forward), ("padded to 8 (after)", padded), ("3 channels (before)", nn.Conv2d.forward), ("padded to 8 (after)", padded)):
    autoencoder.InputConv2d.forward = fwd
    r = measure("1vq", adversarial=False, precision="bf16", steps=60, batch_size=16)
    print(f"G only, batch 16, eager, bf16, {name}: {r['samples_per_s']:.1f} samples/s, peak {r['peak_gib']:.1f} GiB", flush=True)
