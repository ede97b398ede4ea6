"""Networks of the workflow, one model per file.

Stage 1 (the shared-latent VQ autoencoder): :mod:`.quantizer`, :mod:`.autoencoder`,
:mod:`.discriminator` (PatchGAN + hinge/adaptive-weight losses) and the optional
:mod:`.perceptual` loss. Stage 2: :mod:`.unet`, the ε-prediction UNet (its diffusion
process lives in :mod:`wavediffusion.diffusion`). The inversion experiments:
:mod:`.inversionnet`, OpenFWI's InversionNet (native and in the model representation).
"""
