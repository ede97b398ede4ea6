"""Vector quantiser: nearest-code lookup with a straight-through estimator (VQ-VAE).

The paper's codebook: 8192 vectors of dimension 32 (one for 1VQ, one per modality for 2VQ).
z_q = sg[e] + (z - sg[z]); loss = ||sg[z] - e||^2 + beta * ||z - sg[e]||^2 (the paper's form).
Codes unchosen for ``dead_code_steps`` training forwards (counters start at the threshold)
are re-initialised from encoder outputs of the batch. Under torch.distributed a training
forward is a collective: every rank must run the same training forwards, in the same order.
Details: docs/architecture.md, 'The quantizer'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizerInfo:
    """What one forward pass did with the codebook (for logging; everything detached)."""

    indices: torch.Tensor  # (B, h, w) int64: the chosen code per latent position
    perplexity: torch.Tensor  # () exp(entropy) of code usage in this batch (all ranks under DDP); K = uniform use
    codes_used: torch.Tensor  # () int64: distinct codes chosen in this batch (all ranks under DDP)
    reinitialised: torch.Tensor  # () codes re-initialised from encoder outputs in this step (0 in eval mode)


class VectorQuantizer(nn.Module):
    """Codebook of ``codebook_size`` vectors of size ``dim``; quantises (B, dim, h, w) latents."""

    def __init__(
        self,
        codebook_size: int = 8192,
        dim: int = 32,
        beta: float = 0.25,
        dead_code_steps: int = 100,
        sync_distributed: bool = True,
        max_distance_elements: int = 2**24,
    ):
        """
        dead_code_steps: training forwards without being chosen after which a code is
            re-initialised from an encoder output (see the module docstring).
        max_distance_elements: the nearest-code search works on chunks of latent vectors so
            that one chunk's (rows x codebook_size) distance matrix holds at most this many
            floats (2**24 = 64 MiB): the paper's batch of 16 x 32 x 32 latents against 8192
            codes would otherwise allocate a 512 MiB matrix per call.
        """
        super().__init__()
        if dead_code_steps < 1:
            raise ValueError(f"dead_code_steps must be >= 1, got {dead_code_steps}")
        self.codebook_size = codebook_size
        self.dim = dim
        self.beta = beta
        self.dead_code_steps = dead_code_steps
        self.sync_distributed = sync_distributed
        self.max_distance_elements = max_distance_elements
        # taming-transformers' initialisation; the first training step replaces unused codes anyway
        self.embedding = nn.Parameter(torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size))
        # training forwards since each code was last chosen; starts at the threshold = "never used"
        self.register_buffer("steps_since_used", torch.full((codebook_size,), dead_code_steps, dtype=torch.int64))

    # --- lookup -------------------------------------------------------------------------

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """(B, dim, h, w) latents -> (B, h, w) indices of the nearest codes (squared L2, fp32 even under autocast)."""
        b, _, h, w = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = z.detach().float().permute(0, 2, 3, 1).reshape(-1, self.dim)  # (N, dim)
            return self._nearest_flat(flat).view(b, h, w)

    def _nearest_flat(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, dim) fp32 -> (N,) argmin_k ||z - e_k||^2, computed chunk by chunk.

        ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2 and ||z||^2 does not change the argmin, so
        each chunk costs one matmul.  Under TF32 matmul settings the distances carry TF32
        rounding, which can only swap near-ties.
        """
        codebook = self.embedding.detach().float()  # (K, dim)
        codebook_sq = (codebook * codebook).sum(dim=1).unsqueeze(0)  # (1, K)
        rows = max(1, self.max_distance_elements // self.codebook_size)
        out = torch.empty(flat.shape[0], dtype=torch.int64, device=flat.device)
        for start in range(0, flat.shape[0], rows):
            chunk = flat[start : start + rows]  # (n, dim)
            distances = torch.addmm(codebook_sq, chunk, codebook.t(), beta=1.0, alpha=-2.0)  # (n, K)
            out[start : start + rows] = distances.argmin(dim=1)
        return out

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) code indices -> (B, dim, h, w) code vectors (e.g. to decode stored indices)."""
        return F.embedding(indices, self.embedding).permute(0, 3, 1, 2).contiguous()

    # --- forward ------------------------------------------------------------------------

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, QuantizerInfo]:
        """(B, dim, h, w) continuous latents -> (z_q (B, dim, h, w), vq loss (), info).

        z_q equals the chosen codes in value and carries z's gradient (straight-through).
        Runs in fp32 even under autocast: a bf16 distance matrix would pick wrong codes.
        In training mode it also ages the usage counters and re-initialises dead codes.
        """
        if z.shape[1] != self.dim:
            raise ValueError(f"expected latents with {self.dim} channels, got shape {tuple(z.shape)}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            b, _, h, w = z.shape
            flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim)  # (N, dim)
            indices = self._nearest_flat(flat.detach())  # (N,)

            counts = torch.bincount(indices, minlength=self.codebook_size)  # (K,)
            reinitialised = torch.zeros((), dtype=torch.long, device=z.device)
            if self.training:
                if self._distributed():
                    dist.all_reduce(counts)
                reinitialised = self._expire_dead_codes(counts, flat.detach())

            z_q = F.embedding(indices, self.embedding).view(b, h, w, self.dim).permute(0, 3, 1, 2)  # (B, dim, h, w)
            codebook_loss = F.mse_loss(z_q, z.detach())
            commitment_loss = F.mse_loss(z, z_q.detach())
            loss = codebook_loss + self.beta * commitment_loss
            # straight-through: the value is exactly the code (z - sg[z] == 0), the gradient
            # w.r.t. z is the identity, and the decoder's gradient does not reach the codebook
            z_q = z_q.detach() + (z - z.detach())

            probs = counts.float() / counts.sum()
            entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
            info = QuantizerInfo(
                indices=indices.view(b, h, w),
                perplexity=entropy.exp().detach(),
                codes_used=(counts > 0).sum(),
                reinitialised=reinitialised,
            )
        return z_q, loss, info

    # --- dead codes ---------------------------------------------------------------------

    def _distributed(self) -> bool:
        return self.sync_distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    @torch.no_grad()
    def _expire_dead_codes(self, counts: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        """Age the counters with this step's usage; re-initialise codes unused for too long.

        counts (K,) usage of this step (summed over ranks under DDP); flat (N, dim) this
        rank's encoder outputs. Returns the number of re-initialised codes, as a tensor.
        Under DDP, rank 0 draws from all ranks' outputs concatenated in rank order -- the
        global batch -- with the RNG stream a single process has, so N processes
        re-initialise exactly as one process would (and their loss curves agree, not just
        their replicas). Nothing here waits for the GPU: every step draws a candidate for
        every code and keeps it only where the code is dead, instead of first asking how
        many died (a host sync in every training step).
        """
        self.steps_since_used.copy_(torch.where(counts > 0, 0, self.steps_since_used + 1))
        dead = self.steps_since_used >= self.dead_code_steps  # (K,), the same on every rank
        distributed = self._distributed()
        if distributed:  # draw from the GLOBAL batch, in rank order, as one process would
            flat = self._gather_ranks(flat)
        if not distributed or dist.get_rank() == 0:
            replacement = flat[self._candidate_rows(dead, flat.shape[0])].to(self.embedding.dtype)  # (K, dim)
        else:
            replacement = torch.empty_like(self.embedding)
        if distributed:
            dist.broadcast(replacement, src=0)
        self.embedding.copy_(torch.where(dead[:, None], replacement, self.embedding))
        self.steps_since_used.masked_fill_(dead, 0)
        return dead.sum()

    @staticmethod
    def _candidate_rows(dead: torch.Tensor, n: int) -> torch.Tensor:
        """(K,) rows of a batch of n encoder outputs, one per code: the j-th dead code (in
        index order) takes entry j of a random permutation of the rows, so dead codes get
        distinct outputs while the batch has enough, random ones beyond that."""
        draws = torch.randperm(n, device=dead.device)
        if dead.numel() > n:
            draws = torch.cat([draws, torch.randint(0, n, (dead.numel() - n,), device=dead.device)])
        position = (torch.cumsum(dead, dim=0) - 1).clamp_min(0)  # j for the j-th dead code
        return draws[position]

    @staticmethod
    def _gather_ranks(flat: torch.Tensor) -> torch.Tensor:
        """(N, dim) on each rank -> (world_size * N, dim), rank 0's rows first (equal N on every rank)."""
        parts = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, flat.contiguous())
        return torch.cat(parts)
