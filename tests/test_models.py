"""Stage-1 models: autoencoder shapes and variants, quantiser, discriminator, perceptual loss.

All on CPU with the tiny configs (the paper config is only built on the meta device:
its shapes and parameter count, no arithmetic).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from wavediffusion.models.autoencoder import (
    AutoencoderConfig,
    InputConv2d,
    VQAutoencoder,
    parameter_count,
    resampling_strides,
)
from wavediffusion.models.discriminator import (
    DiscriminatorConfig,
    PatchDiscriminator,
    adaptive_weight,
    generator_adversarial_loss,
    hinge_d_loss,
)
from wavediffusion.models.perceptual import (
    PerceptualConfig,
    PerceptualLoss,
    VGG16Features,
)
from wavediffusion.models.quantizer import VectorQuantizer

VARIANTS = ("1vq", "2vq")


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: two OpenMP threads gain ~15 %, but when the 2 cores are
    shared with other processes their spinning barriers made one step 40x slower (seen:
    the overfit test took 345 s instead of 8 s).  One thread is robust to that."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def structured_batch(batch: int, config: AutoencoderConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seismic-like and velocity-like tensors in [-1, 1]: layered velocity, a hyperbolic
    wavelet event per layer and shot (learnable structure, unlike white noise)."""
    g = torch.Generator().manual_seed(seed)
    shots, time_samples, receivers = config.seismic_shape
    size = config.velocity_size
    t = torch.linspace(0, 1, time_samples).view(time_samples, 1)
    x = torch.linspace(-1, 1, receivers).view(1, receivers)
    depth = torch.linspace(0, 1, size).view(size, 1).expand(size, size)
    seismic = torch.zeros(batch, shots, time_samples, receivers)
    velocity = torch.zeros(batch, 1, size, size)
    for i in range(batch):
        interfaces = torch.sort(torch.rand(3, generator=g)).values
        values = torch.rand(3, generator=g) * 2 - 1
        v = torch.full((size, size), -1.0)
        for d, value in zip(interfaces, values):
            v = torch.where(depth > d, value, v)
        velocity[i, 0] = v
        for s in range(shots):
            source = -1 + 2 * s / max(shots - 1, 1)
            for d in interfaces:
                arrival = torch.sqrt((0.3 * d + 0.05) ** 2 + 0.1 * (x - source) ** 2)
                seismic[i, s] += torch.exp(-(((t - arrival) / 0.03) ** 2)) * torch.cos(40 * (t - arrival))
    return seismic.clamp(-1, 1), velocity


# --- autoencoder ----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_shapes(variant):
    torch.manual_seed(0)
    config = AutoencoderConfig.tiny(variant)
    model = VQAutoencoder(config)
    seismic, _ = structured_batch(2, config)
    out = model(seismic)
    assert out.seismic.shape == (2, *config.seismic_shape)
    assert out.velocity.shape == (2, *config.velocity_shape)
    assert out.latent.shape == (2, *config.latent_shape)
    assert out.vq_loss.shape == () and out.vq_loss.item() > 0
    model.eval()
    with torch.no_grad():
        z = model.latent_for_diffusion(seismic)
        assert z.shape == (2, *config.latent_shape)
        decoded_seismic, decoded_velocity = model.decode_latent(3 * torch.randn_like(z))
    assert decoded_seismic.shape == (2, *config.seismic_shape)
    assert decoded_velocity.shape == (2, *config.velocity_shape)
    assert decoded_seismic.abs().max() <= 1 and decoded_velocity.abs().max() <= 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_diffusion_latent_is_the_continuous_encoding(variant):
    """Both variants: Stage 2 learns the encoder's output before any codebook (as LDM does),
    and it is not a code: the quantiser's snap is left to decoding."""
    torch.manual_seed(0)
    seismic, _ = structured_batch(2, AutoencoderConfig.tiny())
    model = VQAutoencoder(AutoencoderConfig.tiny(variant)).eval()
    with torch.no_grad():
        z = model.latent_for_diffusion(seismic)
        assert torch.equal(z, model.encode(seismic))
        quantizer = next(iter(model.quantizers().values()))
        assert not torch.equal(quantizer.lookup(quantizer.nearest(z)), z)


@pytest.mark.parametrize("variant", ["1vq", "2vq"])
def test_decode_latent_decodes_what_training_feeds_each_decoder(variant):
    """A latent for diffusion, decoded as every generated latent is (decode_latent and its
    per-modality halves), gives the reconstruction of the training pass, clamped: each
    decoder reads its own codebook's codes (2vq) or the shared ones (1vq)."""
    torch.manual_seed(0)
    model = VQAutoencoder(AutoencoderConfig.tiny(variant)).eval()
    seismic, _ = structured_batch(2, model.config)
    with torch.no_grad():
        trained = model(seismic)
        z = model.latent_for_diffusion(seismic)
        decoded_seismic, decoded_velocity = model.decode_latent(z)
        # the training pass's straight-through estimator rounds (~1e-5); a codebook mix-up differs by ~0.9
        torch.testing.assert_close(decoded_seismic, trained.seismic.clamp(-1, 1), rtol=0, atol=1e-4)
        torch.testing.assert_close(decoded_velocity, trained.velocity.clamp(-1, 1), rtol=0, atol=1e-4)
        assert torch.equal(model.decode_latent_seismic(z), decoded_seismic)
        assert torch.equal(model.decode_latent_velocity(z), decoded_velocity)


def test_one_codebook_for_1vq_two_for_2vq():
    count = lambda model: sum(isinstance(m, VectorQuantizer) for m in model.modules())
    torch.manual_seed(0)
    config = AutoencoderConfig.tiny("1vq")
    one, two = VQAutoencoder(config), VQAutoencoder(dataclasses.replace(config, variant="2vq"))
    assert count(one) == 1 and count(two) == 2
    assert parameter_count(two) - parameter_count(one) == config.codebook_size * config.codebook_dim
    seismic, _ = structured_batch(2, config)
    q1 = one.quantize(one.encode(seismic))
    assert q1.z_seismic is q1.z_velocity and set(q1.info) == {"shared"}
    q2 = two.quantize(two.encode(seismic))
    assert set(q2.info) == {"seismic", "velocity"}
    assert not torch.equal(q2.z_seismic, q2.z_velocity)  # different codebooks quantise differently


def test_paper_config_size_and_latent():
    """~19M parameters (the paper's count) and a [32, 32, 32] latent; built on the meta device."""
    config = AutoencoderConfig.paper()
    assert config.encoder_strides == ((2, 2), (2, 1), (2, 1), (2, 1), (2, 1))
    assert config.velocity_strides == ((2, 2),)
    with torch.device("meta"):
        model = VQAutoencoder(config)
        seismic = torch.empty(2, 3, 1024, 64)
        z = model.encode(seismic)
        assert z.shape == (2, 32, 32, 32)
        assert model.decode_seismic(z).shape == (2, 3, 1024, 64)
        assert model.decode_velocity(z).shape == (2, 1, 64, 64)
    total = parameter_count(model)
    assert abs(total - 19e6) <= 0.25 * 19e6, total
    assert model.parameter_counts()["codebook_shared"] == 8192 * 32


def test_strides_derive_from_sizes():
    assert resampling_strides((1024, 64), (32, 32), 6) == ((2, 2), (2, 1), (2, 1), (2, 1), (2, 1))
    assert resampling_strides((64, 64), (32, 32), 2) == ((2, 2),)
    assert resampling_strides((64, 256), (16, 16), 5) == ((2, 2), (2, 2), (1, 2), (1, 2))
    with pytest.raises(ValueError, match="levels"):
        resampling_strides((1024, 64), (32, 32), 5)
    with pytest.raises(ValueError, match="power-of-two"):
        resampling_strides((1000, 64), (32, 32), 6)
    with pytest.raises(ValueError, match="levels"):
        AutoencoderConfig(channel_mult=(1, 2, 2))
    from_yaml = dataclasses.replace(AutoencoderConfig.tiny(), channel_mult=[1, 2, 2, 2], velocity_channel_mult=[1, 2])
    assert from_yaml == AutoencoderConfig.tiny()  # lists from a config file become tuples
    with pytest.raises(ValueError, match="variant"):
        AutoencoderConfig.tiny("3vq")
    with pytest.raises(ValueError, match="codebook_dim"):
        dataclasses.replace(AutoencoderConfig.tiny(), codebook_dim=4)


def test_decoders_expose_last_layer():
    model = VQAutoencoder(AutoencoderConfig.tiny())
    assert model.seismic_decoder.last_layer is model.seismic_decoder.conv_out.weight
    assert model.velocity_decoder.last_layer.shape[0] == 1


def test_input_convolution_pads_channels_and_computes_the_plain_convolution():
    """The encoder's first convolution runs on 8 channels (3 shots + 5 zero channels, a fast
    cuDNN kernel) and gives the 3-channel convolution's output and weight gradient; its
    parameters keep the 3-channel shape, so every trained checkpoint loads."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    conv = InputConv2d(3, 16, 3, padding=1).double()
    plain = torch.nn.Conv2d(3, 16, 3, padding=1).double()
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 12, 8, dtype=torch.float64)
    counter = FlopCounterMode(display=False)
    with counter:
        out = conv(x)
    assert counter.get_total_flops() == 2 * 2 * 16 * 12 * 8 * (8 * 3 * 3)  # the convolution ran on 8 channels
    torch.testing.assert_close(out, plain(x), rtol=0, atol=1e-12)
    out.square().sum().backward()
    plain(x).square().sum().backward()
    torch.testing.assert_close(conv.weight.grad, plain.weight.grad, rtol=1e-12, atol=1e-12)
    assert conv.weight.shape == (16, 3, 3, 3) and conv.padded_in_channels == 8
    assert isinstance(VQAutoencoder(AutoencoderConfig.tiny()).encoder.conv_in, InputConv2d)


@pytest.mark.parametrize("variant", VARIANTS)
def test_overfit_one_batch(variant):
    """120 Adam steps (lr 1e-3) on one batch of 4: reconstruction MSE (seismic + velocity)
    falls from ~0.7 to below 0.03.  Measured: 0.0068-0.0124 over torch seeds 0-2 and both
    variants (6 runs), so the bound has a >2x margin; ~10 s each on one thread."""
    torch.manual_seed(0)
    config = AutoencoderConfig.tiny(variant)
    model = VQAutoencoder(config)
    seismic, velocity = structured_batch(4, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(120):
        out = model(seismic)
        rec = F.mse_loss(out.seismic, seismic) + F.mse_loss(out.velocity, velocity)
        optimizer.zero_grad()
        (rec + out.vq_loss).backward()
        optimizer.step()
        losses.append(rec.item())
    assert losses[0] > 0.4
    assert losses[-1] < 0.03, losses[-10:]
    for info in out.info.values():  # the codebook stays in use (dead codes are recycled)
        assert info.codes_used >= config.codebook_size // 2


# --- quantiser ------------------------------------------------------------------------------


def test_nearest_matches_brute_force_in_chunks():
    torch.manual_seed(0)
    q = VectorQuantizer(codebook_size=50, dim=6, max_distance_elements=50 * 7)  # 7 rows per chunk
    q.embedding.data.normal_()
    z = torch.randn(3, 6, 5, 4)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 6)
    expected = torch.cdist(flat, q.embedding).argmin(dim=1).view(3, 5, 4)
    assert torch.equal(q.nearest(z), expected)
    assert torch.equal(q.lookup(expected), q.embedding[expected].permute(0, 3, 1, 2))


def test_straight_through_and_codebook_gradients():
    torch.manual_seed(0)
    q = VectorQuantizer(codebook_size=16, dim=4, beta=0.25).eval()  # eval: no re-initialisation
    q.embedding.data.normal_()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    z_q, loss, info = q(z)
    assert torch.equal(z_q.detach(), q.lookup(info.indices))  # values are the codes
    # decoder side: the gradient reaches the encoder unchanged, the codebook gets none
    upstream = torch.randn_like(z_q)
    (z_q * upstream).sum().backward(retain_graph=True)
    assert torch.allclose(z.grad, upstream)
    assert q.embedding.grad is None or q.embedding.grad.abs().sum() == 0
    # VQ loss: the codebook term moves the chosen codes (only those) toward z
    z.grad = None
    loss.backward()
    used = torch.zeros(16, dtype=torch.bool)
    used[info.indices.unique()] = True
    grad_norms = q.embedding.grad.norm(dim=1)
    assert (grad_norms[used] > 0).all() and (grad_norms[~used] == 0).all()
    # ... and the commitment term pulls z toward its codes with weight beta
    chosen = q.lookup(info.indices)
    assert torch.allclose(z.grad, 0.25 * 2 * (z - chosen).detach() / z.numel(), atol=1e-7)


def test_perplexity_and_codes_used():
    q = VectorQuantizer(codebook_size=8, dim=8).eval()
    q.embedding.data = torch.eye(8)
    each_once = torch.eye(8).view(8, 8, 1, 1)  # (B=8, C=8, 1, 1): every code exactly once
    _, _, info = q(each_once)
    assert info.codes_used == 8 and math.isclose(info.perplexity.item(), 8.0, rel_tol=1e-5)
    _, _, info = q(torch.eye(8)[:1].view(1, 8, 1, 1).expand(4, 8, 2, 2))  # one code only
    assert info.codes_used == 1 and math.isclose(info.perplexity.item(), 1.0, rel_tol=1e-5)


def test_fp32_lookup_under_autocast():
    torch.manual_seed(0)
    q = VectorQuantizer(codebook_size=256, dim=8).eval()
    q.embedding.data.normal_()
    z = torch.randn(2, 8, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, _, info = q(z)
        indices_autocast = q.nearest(z)
    assert torch.equal(info.indices, q.nearest(z)) and torch.equal(indices_autocast, info.indices)
    assert z_q.dtype == torch.float32


def test_dead_codes_are_reinitialised_from_encoder_outputs():
    def step_codebook(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        q = VectorQuantizer(codebook_size=32, dim=4, dead_code_steps=3)
        z = torch.randn(2, 4, 4, 4)  # 32 encoder outputs
        rows = z.permute(0, 2, 3, 1).reshape(-1, 4)
        # first training step: never-used codes count as dead -> replaced by encoder outputs
        _, _, info = q(z)
        assert info.reinitialised == 32 - info.codes_used
        replaced = torch.cdist(q.embedding.detach(), rows, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values == 0
        assert replaced.sum() == info.reinitialised
        # eval mode never touches the codebook
        before = q.embedding.detach().clone()
        q.eval()
        for _ in range(5):
            q(z + 10)
        assert torch.equal(q.embedding, before)
        # train on outputs that all sit on code 0: the others die after 3 steps and come back
        q.train()
        target = q.embedding.detach()[0].view(1, 4, 1, 1).expand(2, 4, 4, 4).clone()
        counts = [int(q(target)[2].reinitialised) for _ in range(3)]
        assert counts == [0, 0, 31]
        assert torch.allclose(q.embedding[1:], target[0, :, 0, 0].expand(31, 4))
        return before

    assert torch.equal(step_codebook(0), step_codebook(0))  # deterministic given the torch RNG
    assert not torch.equal(step_codebook(0), step_codebook(1))


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    q = VectorQuantizer(codebook_size=64, dim=4, dead_code_steps=2)  # identical start on every rank
    torch.manual_seed(100 + rank)  # rank-specific data and RNG
    used = []
    for _ in range(4):
        _, _, info = q(torch.randn(2, 4, 3, 3) + rank)
        used.append(int(info.codes_used))
    torch.save({"embedding": q.embedding.detach(), "steps": q.steps_since_used, "used": used}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_dead_code_reinit_stays_in_sync_across_ranks(tmp_path):
    """Under a process group the re-initialised rows come from rank 0 and are identical
    everywhere, although each rank saw different encoder outputs and has its own RNG."""
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(r0["embedding"], r1["embedding"])
    assert torch.equal(r0["steps"], r1["steps"])
    assert r0["used"] == r1["used"]  # usage counted over both ranks


# --- discriminator --------------------------------------------------------------------------


def test_patch_discriminator_shapes():
    seismic_d = PatchDiscriminator(DiscriminatorConfig.tiny(3))
    velocity_d = PatchDiscriminator(DiscriminatorConfig.tiny(1))
    config = AutoencoderConfig.tiny()
    assert seismic_d(torch.randn(2, *config.seismic_shape)).shape == (2, 1, 14, 2)
    assert velocity_d(torch.randn(2, *config.velocity_shape)).shape == (2, 1, 2, 2)
    with pytest.raises(ValueError, match="too small"):
        velocity_d(torch.randn(2, 1, 8, 8))


def test_hinge_losses():
    ones = torch.ones(2, 1, 3, 3)
    assert hinge_d_loss(2 * ones, -2 * ones) == 0  # confident and right: nothing to learn
    assert hinge_d_loss(0 * ones, 0 * ones) == 1.0
    assert hinge_d_loss(-ones, ones) == 2.0
    assert generator_adversarial_loss(torch.tensor([1.0, 3.0])) == -2.0


def test_adaptive_weight_is_gradient_norm_ratio():
    weight = torch.tensor([1.0, 2.0], requires_grad=True)
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([0.6, 0.8])
    lam = adaptive_weight((weight * a).sum(), (weight * b).sum(), weight)
    assert math.isclose(lam.item(), 5.0 / (1.0 + 1e-4), rel_tol=1e-6) and not lam.requires_grad
    assert adaptive_weight((weight * a).sum(), (weight * b * 1e-9).sum(), weight, max_weight=100.0) == 100.0
    # on the real decoder: both losses reach its last layer
    torch.manual_seed(0)
    config = AutoencoderConfig.tiny()
    model, disc = VQAutoencoder(config), PatchDiscriminator(DiscriminatorConfig.tiny(1))
    seismic, velocity = structured_batch(2, config)
    out = model(seismic)
    rec = F.l1_loss(out.velocity, velocity)
    g = generator_adversarial_loss(disc(out.velocity))
    assert adaptive_weight(rec, g, model.velocity_decoder.last_layer) > 0


# --- perceptual loss ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """Randomly initialised VGG16 features saved as torchvision names them (no download)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    features = VGG16Features().features.state_dict()
    torch.save({f"features.{k}": v for k, v in features.items()}, path)
    return path


def test_perceptual_loss_with_local_weights(vgg_file, tmp_path):
    heads = tmp_path / "heads.pth"
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 128, 256, 512, 512))}, heads)
    for config in (PerceptualConfig(str(vgg_file)), PerceptualConfig(str(vgg_file), str(heads))):
        loss = PerceptualLoss(config)
        x = torch.rand(2, 3, 64, 16) * 2 - 1
        y = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
        assert torch.allclose(loss(x, x), torch.zeros(2), atol=1e-6)
        value = loss(x, y)
        assert value.shape == (2,) and (value > 0).all()
        value.sum().backward()
        assert y.grad.abs().sum() > 0 and all(p.grad is None for p in loss.parameters())
        # velocity: one channel is a grey image, i.e. the same as replicating it into RGB
        v, w = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
        assert torch.allclose(loss(v, w), loss(v.expand(-1, 3, -1, -1), w.expand(-1, 3, -1, -1)))


def test_perceptual_loss_names_missing_or_wrong_files(vgg_file, tmp_path):
    missing = tmp_path / "nowhere" / "vgg16.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        PerceptualLoss(PerceptualConfig(str(missing)))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(ValueError, match=str(wrong)):
        PerceptualLoss(PerceptualConfig(str(wrong)))
    with pytest.raises(ValueError, match=str(wrong)):
        PerceptualLoss(PerceptualConfig(str(vgg_file), lpips_heads=str(wrong)))
    with pytest.raises(FileNotFoundError, match=str(missing)):
        PerceptualLoss(PerceptualConfig(str(vgg_file), lpips_heads=str(missing)))
