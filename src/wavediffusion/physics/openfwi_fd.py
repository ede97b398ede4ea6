"""OpenFWI's published forward-modelling scheme as a batched torch stencil.

OpenFWI describes its generator as 2nd-order-in-time, 4th-order-in-space finite
differences of the constant-density acoustic wave equation with a 120-cell absorbing
layer. That is the CSIM/KAUST Matlab code ``a2d_mod_abc24`` (Xin Wang, 2012) that the
OpenFWI group's own PyTorch re-implementation (UPFWI, Jin et al., ICLR 2022:
``FWIForward.FWM`` with ``nbc=120``) ports line by line. Per step, on the velocity map
padded by ``nbc`` cells of replicated edge values:

    p_next = (2 - 5 alpha - kappa) p - (1 - kappa) p_prev
             + alpha * (4/3 (4 nearest neighbours) - 1/12 (4 next-nearest neighbours))
    p_next[source] += (v dt)^2 * w[step]
    record p_next at the receivers

with alpha = (v dt / dx)^2 and kappa = d dt, where d is the damping profile of
:func:`damping_profile`: zero at the model edge, growing quadratically to
3 v_min ln(1e7) / (2 a) at the outer edge, a = (nbc - 1) dx. This is the damped wave
equation p_tt + d p_t = v^2 lap p + v^2 w delta_cell, i.e. a sponge layer, not a PML.

Neighbours are taken periodically, as the Matlab ``circshift`` and UPFWI's
``torch.roll`` do: a wave that crosses the absorbing layer re-enters on the opposite side.
That matters more than one might expect. In this damped (not perfectly matched) layer
the amplitude falls as exp(-d t / 2), so a wave crossing 120 cells of a fast
(4500 m/s) layer in a model whose minimum is 1500 m/s keeps ~26 % of its amplitude; and
CSIM's layout damps the corners by lateral distance only, so the columns just outside
the model's sides are almost undamped through the whole top and bottom layers. Such
waves wrap around and come back late in the record. A zero (Dirichlet) edge instead
changes the data of a CurveVel-A map by 2.8e-3 relative, so the periodic wrap is kept to
stay faithful to OpenFWI's data (docs/physics.md quantifies the leak).

Runs on any device in float32, batched over models (B) and shots (S).
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
