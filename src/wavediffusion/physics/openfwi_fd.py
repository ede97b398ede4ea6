"""OpenFWI's published forward-modelling scheme as a batched torch stencil.

2nd order in time, 4th in space, constant-density acoustic, on the velocity map padded by
``nbc`` (120) replicated cells with a quadratic sponge (:func:`damping_profile`; not a PML):
the CSIM Matlab ``a2d_mod_abc24``, as UPFWI's ``FWIForward.FWM`` ports it. Neighbours wrap
periodically, as there, so waves leaking through the sponge return late in the record; kept
on purpose, to stay faithful to OpenFWI's data. Float32 on any device, batched over models
(B) and shots (S). Details: docs/physics.md, 'The openfwi backend'.
"""

from __future__ import annotations

import math

import torch

from .acquisition import OPENFWI_ACQUISITION, Acquisition

# 4th-order central second-derivative coefficients: centre, +-1, +-2 cells.
C0, C1, C2 = -5.0 / 2.0, 4.0 / 3.0, -1.0 / 12.0
HALO = 2  # the stencil's reach: cells copied periodically around the grid each step


def damping_profile(n_cells: int, dx: float, min_velocity: torch.Tensor) -> torch.Tensor:
    """Damping rate d (1/s) across the absorbing layer, from its inner edge outwards.

    CSIM's ``AbcCoef2D``: d_i = kappa (i dx / a)^2, i = 0..n_cells-1, a = (n_cells-1) dx,
    kappa = 3 v_min ln(1e7) / (2 a) -- Collino & Tsogka's PML profile for a target
    reflection of 1e-7, used here as a simple sponge. v_min is each model's minimum
    velocity, so the profile is per model.

    min_velocity: (B,) m/s.  Returns (B, n_cells).
    """
    a = (n_cells - 1) * dx
    kappa = 3.0 * min_velocity * math.log(1e7) / (2.0 * a)  # (B,)
    distance = torch.arange(n_cells, dtype=min_velocity.dtype, device=min_velocity.device)
    return kappa[:, None] * (distance * dx / a)[None, :] ** 2  # (B, n_cells)


def damping_map(velocity: torch.Tensor, n_cells: int, dx: float) -> torch.Tensor:
    """Damping rate on the padded grid, laid out as CSIM's ``AbcCoef2D`` does.

    The left and right strips (corners included) damp by lateral distance, the top and
    bottom strips between them by depth distance; the model itself is undamped. The
    corner rule leaves the columns next to the model's sides nearly undamped from top to
    bottom of the padded grid; it is kept because it is OpenFWI's.

    velocity: (B, 1, nz, nx) m/s, unpadded.  Returns (B, 1, nz + 2 n, nx + 2 n).
    """
    b, _, nz, nx = velocity.shape
    profile = damping_profile(n_cells, dx, velocity.flatten(1).amin(dim=1))  # (B, n)
    outward = profile[:, None, None, :]  # (B, 1, 1, n): inner edge -> outer edge
    inward = outward.flip(-1)
    damp = velocity.new_zeros(b, 1, nz + 2 * n_cells, nx + 2 * n_cells)
    damp[:, :, :, :n_cells] = inward  # left strip, every row
    damp[:, :, :, -n_cells:] = outward  # right strip, every row
    lateral_interior = slice(n_cells, n_cells + nx)
    damp[:, :, :n_cells, lateral_interior] = inward.transpose(-1, -2)  # top strip
    damp[:, :, -n_cells:, lateral_interior] = outward.transpose(-1, -2)  # bottom strip
    return damp


def _laplacian_times_dx2(p: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """dx^2 times the 4th-order Laplacian, without the centre term, periodic edges.

    p: (..., H, W).  out: (..., H, W), overwritten. The centre coefficient (2 * C0) is
    folded into the update's ``2 - 5 alpha`` term, as in the Matlab code.
    """
    h, w = p.shape[-2:]
    # One periodic copy with a 2-cell halo replaces the eight circshifts of the Matlab code.
    wrapped = torch.nn.functional.pad(p, (HALO,) * 4, mode="circular")

    def shifted(rows: int, cols: int) -> torch.Tensor:
        """p moved by (rows, cols) cells, periodically."""
        return wrapped[..., HALO + rows : HALO + rows + h, HALO + cols : HALO + cols + w]

    torch.add(shifted(-1, 0), shifted(1, 0), out=out)
    out.add_(shifted(0, -1)).add_(shifted(0, 1)).mul_(C1)
    far = shifted(-2, 0) + shifted(2, 0)
    far.add_(shifted(0, -2)).add_(shifted(0, 2))
    out.add_(far, alpha=C2)
    return out


@torch.no_grad()
def simulate(
    velocity: torch.Tensor,
    acquisition: Acquisition = OPENFWI_ACQUISITION,
) -> torch.Tensor:
    """Shot gathers of a batch of velocity maps with OpenFWI's scheme.

    velocity: (B, 1, nz, nx) float32 m/s, any device (validated by forward_model).
    Returns (B, S, nt, R) float32 on the same device: the first
    ``acquisition.dropped_samples`` recorded steps are dropped, as OpenFWI does.
    Memory: about 5 float32 grids of (nz + 2*120) x (nx + 2*120) per model and shot plus
    4 per model (~11 MB per OpenFWI model); callers chunk the batch.
    """
    acq = acquisition
    n_pad = acq.absorbing_cells
    b = velocity.shape[0]
    s = acq.n_shots
    dt, dx = acq.dt, acq.dx

    # Coefficients on the padded grid, shared by all shots of a model: (B, 1, H, W).
    v = torch.nn.functional.pad(velocity, (n_pad,) * 4, mode="replicate")
    h, w = v.shape[-2:]
    alpha = (v * dt / dx) ** 2
    kappa = damping_map(velocity, n_pad, dx) * dt
    coef_current = 2.0 + 2.0 * C0 * alpha - kappa
    coef_previous = 1.0 - kappa

    # Sources and receivers in padded-grid indices.
    shot = torch.arange(s, device=velocity.device)  # (S,)
    src_z = acq.source_depth + n_pad
    src_x = torch.tensor(acq.source_columns, device=velocity.device) + n_pad  # (S,)
    rec_z = acq.receiver_depth + n_pad
    rec_x = torch.tensor(acq.receivers, device=velocity.device) + n_pad  # (R,)
    # Injected amplitude per model, shot and step: (v_source dt)^2 * wavelet, (B, S, T).
    v_source = v[:, 0, src_z, src_x]  # (B, S)
    wavelet = acq.wavelet(dtype=velocity.dtype, device=velocity.device)  # (T,)
    injection = ((v_source * dt) ** 2)[:, :, None] * wavelet[None, None, :]

    p_prev = velocity.new_zeros(b, s, h, w)  # (B, S, H, W)
    p_curr = torch.zeros_like(p_prev)
    lap = torch.empty_like(p_prev)

    seismic = velocity.new_empty(b, s, acq.nt, acq.n_receivers)  # (B, S, T_rec, R)
    for step in range(acq.n_steps):
        _laplacian_times_dx2(p_curr, out=lap)
        # p_next overwrites p_prev (no longer needed):
        #   coef_current * p_curr - coef_previous * p_prev + alpha * lap
        p_next = p_prev
        p_next.mul_(-coef_previous).addcmul_(coef_current, p_curr).addcmul_(alpha, lap)
        p_next[:, shot, src_z, src_x] += injection[:, :, step]
        recorded = step - acq.dropped_samples
        if recorded >= 0:
            seismic[:, :, recorded, :] = p_next[:, :, rec_z, rec_x]
        p_prev, p_curr = p_curr, p_next
    return seismic
