"""What the training loop does to run fast on a GPU changes rounding, never results:
data held on the device batches like the DataLoader, compiled blocks compute what the
eager blocks compute and keep the state_dict keys, the bf16 GroupNorm keeps float32
statistics, the fused optimiser step is Adam's step. CPU tests exercise each piece
directly (the loop switches them on only on a GPU); the GPU-marked tests run the loop."""

from __future__ import annotations

import pytest
import torch
import toy_training as toy
from torch.utils.data import DataLoader, Dataset

from wavediffusion.models.autoencoder import AutoencoderConfig, VQAutoencoder
from wavediffusion.models.norm import GroupNorm32
from wavediffusion.models.unet import UNet, UNetConfig
from wavediffusion.training import checkpoint as ckpt
from wavediffusion.training import train
from wavediffusion.training.device_data import DeviceData, map_tensors, sample_bytes
from wavediffusion.models.discriminator import adaptive_weight
from wavediffusion.gpu_speed import channels_last, compile_module, use_fused_step
from wavediffusion.training.loop import TrainConfig, train_batches

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class Pairs(Dataset):
    """Fixed image-like pairs with a label: the structure of the project's datasets."""

    def __init__(self, n: int):
        generator = torch.Generator().manual_seed(0)
        self.seismic = torch.randn(n, 3, 8, 4, generator=generator)
        self.velocity = torch.randn(n, 1, 4, 4, generator=generator)

    def __len__(self):
        return len(self.seismic)

    def __getitem__(self, i):
        return {"seismic": self.seismic[i], "velocity": self.velocity[i], "family": torch.tensor(i % 3)}


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_device_data_batches_are_the_dataloaders_batches(memory_format):
    dataset = Pairs(600)  # more than one read batch of 256, and a partial last one
    held = DeviceData(dataset, torch.device("cpu"), memory_format=memory_format)
    assert len(held) == 600
    batches = train_batches(600, 32, world_size=1, rank=0, seed=3, epoch=1)
    for got, expected in zip(held.batches(batches), DataLoader(dataset, batch_sampler=batches)):
        assert got.keys() == expected.keys()
        for key in expected:
            assert torch.equal(got[key], expected[key])
        assert got["seismic"].is_contiguous(memory_format=memory_format)
    assert sample_bytes(dataset) == 4 * (3 * 8 * 4 + 16) + 8  # float32 fields and an int64 label


def test_device_data_refuses_samples_that_are_not_tensors():
    class Named(Pairs):
        def __getitem__(self, i):
            return {"x": self.seismic[i], "name": f"sample {i}"}

    with pytest.raises(TypeError, match="str"):
        DeviceData(Named(4), torch.device("cpu"))


def test_channels_last_converts_only_four_dimensional_tensors():
    batch = map_tensors(channels_last, {"seismic": torch.randn(2, 3, 4, 5), "family": torch.arange(2),
                                        "pair": [torch.randn(1, 2, 3, 4)]})
    assert batch["seismic"].is_contiguous(memory_format=torch.channels_last)
    assert batch["pair"][0].is_contiguous(memory_format=torch.channels_last)
    assert batch["family"].is_contiguous()


@pytest.mark.parametrize("name", ["unet", "autoencoder"])
def test_compiled_networks_compute_the_eager_network_and_keep_the_keys(name):
    """compile_module through Dynamo and AOTAutograd (the "aot_eager" backend generates no
    kernels, so this runs on CPU in seconds): forward and gradients equal the eager ones."""
    torch.manual_seed(0)
    if name == "unet":
        model, make_input = UNet(UNetConfig.tiny()), lambda: (torch.randn(2, 4, 8, 8), torch.tensor([3, 700]))
    else:
        model, make_input = VQAutoencoder(AutoencoderConfig.tiny()).eval(), lambda: (torch.randn(2, 3, 64, 16),)
    for p in model.parameters():  # zero-initialised layers would hide most of the network
        torch.nn.init.normal_(p, std=0.1) if p.ndim > 1 else None
    eager = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = make_input()

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = model(*inputs)
        out = out if isinstance(out, torch.Tensor) else out.seismic.sum() + out.velocity.sum()
        model.zero_grad()
        out.float().square().mean().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    expected_out, expected_grads = run()
    compile_module(model, backend="aot_eager")
    compiled = [m for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    if name == "unet":
        assert compiled == [model]
    else:  # the encoder, and each decoder up to its output conv
        assert compiled == [model.encoder]
        for decoder in (model.seismic_decoder, model.velocity_decoder):
            assert "features" in vars(decoder)  # the compiled function in place of the method
    got_out, got_grads = run()
    torch.testing.assert_close(got_out, expected_out, rtol=1e-5, atol=1e-6)
    for got, expected in zip(got_grads, expected_grads):  # summed in another order: fp32 rounding of the largest
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
    assert model.state_dict().keys() == eager.keys()


def test_adaptive_weight_through_the_compiled_autoencoder_needs_only_the_output_conv():
    """Stage 1's adaptive GAN weight differentiates with respect to each decoder's output
    conv: that conv stays outside the compiled graph (else every such gradient reruns the
    decoder's whole backward), and the weight equals the eager one."""
    torch.manual_seed(0)
    model = VQAutoencoder(AutoencoderConfig.tiny()).eval()
    seismic = torch.randn(2, 3, 64, 16)

    def weight() -> torch.Tensor:
        out = model(seismic)
        rec, adversarial = out.seismic.square().mean(), -out.seismic.mean()
        return adaptive_weight(rec, adversarial, model.seismic_decoder.last_layer), out

    expected, _ = weight()
    compile_module(model, backend="aot_eager")
    got, out = weight()
    assert type(out.seismic.grad_fn).__name__ == "ConvolutionBackward0"  # an eager conv, not a compiled graph
    assert "CompiledFunction" in type(out.seismic.grad_fn.next_functions[0][0]).__name__
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_group_norm_32_keeps_float32_statistics_for_bf16_input():
    norm = GroupNorm32(4, 16)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = (torch.randn(2, 16, 8, 8) * 30 + 100).bfloat16()  # a large mean: bf16 statistics would lose it
    reference = torch.nn.functional.group_norm(x.double(), 4, norm.weight.double(), norm.bias.double(), norm.eps)
    got = norm(x)
    assert got.dtype == torch.bfloat16
    # bf16 output rounding (and the affine weights rounded to bf16): a few 2^-8 at most
    torch.testing.assert_close(got.double(), reference, rtol=2e-2, atol=2e-2)
    assert torch.equal(norm(x.float()), torch.nn.GroupNorm.forward(norm, x.float()))


def test_fused_adam_takes_the_foreach_step():
    def trained(fused: bool) -> torch.Tensor:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4)
        if fused:
            use_fused_step(optimizer)
        for _ in range(20):
            optimizer.zero_grad()
            net(torch.randn(32, 8)).square().mean().backward()
            optimizer.step()
        return torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    torch.testing.assert_close(trained(True), trained(False), rtol=1e-5, atol=1e-6)


def test_speed_settings_are_checked():
    with pytest.raises(ValueError, match="data_on_device"):
        TrainConfig(data_on_device="sometimes")
    with pytest.raises(ValueError, match="compile"):
        TrainConfig(compile="yes")


@pytest.mark.gpu
@gpu
def test_data_on_device_trains_exactly_what_the_dataloader_trains(tmp_path):
    """fp32 on the GPU: held data and read data give bit-identical weights."""
    finals = {}
    for held in (True, False):
        config = toy.toy_config(device="cuda", precision="fp32", data_on_device=held)
        train(*toy.build("regression", config), config, tmp_path / str(held))
        finals[held] = ckpt.load(tmp_path / str(held) / "final.pt")["modules"]["net"]
    for key in finals[True]:
        assert torch.equal(finals[True][key], finals[False][key])


@pytest.mark.gpu
@gpu
def test_compiled_training_follows_eager_training(tmp_path):
    """fp32 on the GPU: the loop with compiled modules ends at the eager run's weights, up
    to the rounding of fused kernels (the paper-size comparison in bf16 is the benchmark's)."""
    finals = {}
    for compiled in (True, False):
        config = toy.toy_config(device="cuda", precision="fp32", compile=compiled)
        train(*toy.build("gan", config), config, tmp_path / str(compiled))
        finals[compiled] = ckpt.load(tmp_path / str(compiled) / "final.pt")["modules"]
    for module, state in finals[True].items():
        for key, value in state.items():
            torch.testing.assert_close(value, finals[False][module][key], rtol=1e-4, atol=1e-5)


def test_convolution_bound_counts_every_convolution_flop_of_the_autoencoder():
    """benchmarks/stage1_conv_bound.py records each convolution one forward runs: their
    multiply-adds add up to what torch's FLOP counter counts for the whole forward's
    convolutions, and only the one reading the seismic data needs no input gradient."""
    from torch.utils.flop_counter import FlopCounterMode

    from test_workflow import load_benchmark

    bound = load_benchmark("stage1_conv_bound")
    config = AutoencoderConfig.tiny()
    recorded = bound.recorded_convolutions(config)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        VQAutoencoder(config)(torch.zeros(1, *config.seismic_shape))
    conv_flops = counter.get_flop_counts()["Global"][torch.ops.aten.convolution]
    assert sum(bound.conv_flops(shape, 1) * n for shape, n in recorded.items()) == conv_flops
    assert sum(n for shape, n in recorded.items() if not shape[-1]) == 1
