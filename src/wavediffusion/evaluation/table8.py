"""The paper's Table 8, joint vs separate diffusion: its settings and its table's columns.

The joint model generates each pair from one latent; the baselines are one model per
modality (a seismic-only and a velocity-only autoencoder, each with its own latent diffusion
model), whose samples are paired by index without any pairing information. It imports no
torch: the Snakefile imports it. evaluation/joint_vs_separate.py samples, checks and scores
them. Details: docs/ablation.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import only_known

KEY = "ablation.table8"
MODALITIES = ("seismic", "velocity")
COLUMNS = ("variant", "quantity", "modality", "n", "joint", "separate", "joint_std", "separate_std", "data_floor",
           "chance", "n_reference", "weights_sha256")


@dataclass(frozen=True)
class Table8Settings:
    """config.yaml `ablation.table8`."""

    enabled: bool = True  # train, sample and score the single-modality baselines (rule all includes the table)
    num_samples: int | None = None  # per modality; None: the FID table's count

    def __post_init__(self):
        if not isinstance(self.enabled, bool):
            raise ValueError(f"{KEY}.enabled must be true or false, got {self.enabled!r}")
        if self.num_samples is not None and (not isinstance(self.num_samples, int) or isinstance(self.num_samples, bool)
                                             or self.num_samples < 2):
            raise ValueError(f"{KEY}.num_samples must be null or an integer of at least 2 (FID needs a covariance), "
                             f"got {self.num_samples!r}")

    @classmethod
    def from_dict(cls, values: dict) -> Table8Settings:
        return cls(**only_known(values, cls, KEY))

    def sample_count(self, fid_num_generated: int | None, num_pairs: int) -> int:
        """Samples per modality: num_samples, else the FID table's count (fid.num_generated, at
        most the pairs store's sampling.num_pairs). The joint rows are the store's first pairs,
        so no more than it holds; checked only while the table is on."""
        if self.num_samples is not None:
            count = self.num_samples
        else:
            count = num_pairs if fid_num_generated is None else min(fid_num_generated, num_pairs)
        if self.enabled and count > num_pairs:
            raise ValueError(f"{KEY}.num_samples ({count}) exceeds sampling.num_pairs ({num_pairs}): the joint rows "
                             "are the first num_samples pairs of the joint pairs store")
        if self.enabled and count < 2:
            raise ValueError(f"{KEY}: {count} sample(s) per modality (sampling.num_pairs {num_pairs}); FID needs at "
                             f"least 2: raise sampling.num_pairs or set {KEY}.enabled: false")
        return count
