"""The project's random streams, all in one place.

Seeded draws take their seed from `derive_seed(seed, Stream.X, *keys)`: the stream says what
is drawn and the keys say which one of those draws (a rank, an epoch, a shard...), so two
uses of one config seed never share random numbers. A new use gets a new Stream member.
"""

from __future__ import annotations

import enum

import numpy as np


@enum.unique
class Stream(enum.IntEnum):
    """One independent random stream per use; the values only need to be distinct (and must
    not change, or every result drawn from them changes)."""

    # training loop (training/loop.py)
    TRAIN = 0  # each rank's global generators (the task's own draws) when a run starts, per rank
    VALIDATION = 1  # every generator and the loader during one validation, per (rank, epoch, step)
    PERMUTATION = 2  # the order of the training set in one epoch, per epoch
    LOADER = 3  # the DataLoader's worker seeds, per (rank, epoch, first batch)
    INIT = 4  # a model's initial weights (loop.seeded_init)
    # InversionNet's data (training/inversionnet.py)
    INVERSIONNET_REAL_SUBSET = 5  # the real training samples an arm keeps (real_subset)
    INVERSIONNET_FINETUNE_SPLIT = 6  # generated pairs into fine-tune and test (split_by_fraction)
    INVERSIONNET_GENERATED_DRAW = 7  # the generated pairs a filter arm draws (drawn_pairs)
    # generated pairs (sampling/shard.py)
    SAMPLING_SHARD = 8  # a pairs-store shard's start and step noise, per shard index
    # FID (evaluation/fid_scores.py, evaluation/sampler_fid.py)
    FID_REFERENCE = 9  # the real rows of the FID reference when fid.num_reference caps it
    FID_BASELINE = 10  # the Stage-1 random latents of the FID baseline (fid_table and sampler_fid alike)
    # Table 8 (evaluation/joint_vs_separate.py)
    SEPARATE_SAMPLES = 11  # a single-modality model's start and step noise, per modality index
    # diffusion-refined inversion (evaluation/refine.py), per (family code, batch index)
    REFINE_STAGE1 = 12  # Stage 1 alone (draws nothing; its generator exists for uniformity)
    REFINE_REFINED = 13  # the diffusion candidates of refine_latents
    REFINE_PERTURBED = 14  # the Gaussian perturbations of the ablation (perturb_latents)
    # Stage 1's Table 5 (evaluation/stage1.py)
    TABLE5_LATENTS = 15  # its training, Gaussian and interpolated latents (latent_space_rows)
    # the diffusion trajectory (evaluation/trajectory.py)
    TRAJECTORY_FORWARD = 16  # the training latents noised along the grid, and their noise
    TRAJECTORY_START = 17  # the pure-noise starts shared by DDPM and every other sampler setting
    TRAJECTORY_DDPM = 18  # DDPM's step noise
    TRAJECTORY_DDIM = 19  # DDIM's step noise at η > 0


def derive_seed(seed: int, stream: Stream, *keys: int) -> int:
    """A 63-bit seed for draw `keys` of `stream` under the config seed `seed`, e.g.
    (seed, Stream.VALIDATION, rank, epoch, step).

    SeedSequence mixes the words, so nearby keys give unrelated seeds. It also ignores
    trailing zero words, so the number of keys is mixed in too: (seed, stream, k) and
    (seed, stream, k, 0) are different draws. The stream must be a Stream member, so a call
    written for another scheme (a bare key where the stream goes) fails instead of
    silently sharing numbers with another use."""
    if not isinstance(stream, Stream):
        raise TypeError(f"stream must be a seeds.Stream member, got {stream!r}")
    state = np.random.SeedSequence([seed, int(stream), len(keys), *keys]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1
