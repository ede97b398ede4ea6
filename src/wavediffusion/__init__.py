"""WaveDiffusion: joint latent diffusion for physically consistent seismic and velocity generation."""

__version__ = "0.1.0"
