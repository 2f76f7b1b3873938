"""ddpm_lib: the small library behind the DDPM tutorial book.

One module per concept, named after the paper (Ho et al. 2020), with the chapter that teaches it:

The maths
* :mod:`ddpm_lib.schedule`   -- beta schedules and the forward process q (Eqs. 2, 4, 6, 7); ch. 1-2
* :mod:`ddpm_lib.likelihood` -- the variational bound in bits/dim (Eq. 5); ch. 3
* :mod:`ddpm_lib.models`     -- the noise predictors eps_theta: ``UNet`` and ``SimpleUNet``; ch. 5
* :mod:`ddpm_lib.losses`     -- the training objectives: L_simple (Eq. 14), its x0/v forms, cold diffusion's, flow
  matching's; ch. 6, 11
* :mod:`ddpm_lib.optim`      -- one optimisation step of Algorithm 1 (``train_step``); ch. 6
* :mod:`ddpm_lib.ema`        -- the moving average of the weights, and BatchNorm statistics for it; ch. 6, 11
* :mod:`ddpm_lib.training`   -- Algorithm 1's loop (``train``): checkpoints, exact resume, clean stops; ch. 6
* :mod:`ddpm_lib.presets`    -- ``TrainConfig`` and the named recipes behind every checkpoint; ch. 6
* :mod:`ddpm_lib.sampling`   -- Algorithm 2, DDIM, DPM-Solver++, the EDM sampler, cold diffusion's sampler, a flow's
  ODE solvers; ch. 7, 9, 11, 14
* :mod:`ddpm_lib.guidance`   -- classifier-free guidance; ch. 10
* :mod:`ddpm_lib.cold`       -- cold diffusion's forward process, a blur (Bansal et al. 2022); ch. 11
* :mod:`ddpm_lib.flow`       -- flow matching's straight path (Lipman et al. 2023) and its conversions to eps, x0,
  score; ch. 14
* :mod:`ddpm_lib.toy2d`      -- the whole loop on points in the plane: data with exact answers (the score of
  ch. 4), a small MLP; ch. 7, 9, 14

Measuring
* :mod:`ddpm_lib.classifier` -- the book's MNIST classifier, the judge of sample quality; ch. 8
* :mod:`ddpm_lib.metrics`    -- FD, its floor, KID, precision/recall, the paired comparison of two generators; ch. 8

Engineering
* :mod:`ddpm_lib.data`        -- MNIST (verified by SHA-256) and other image folders, scaled to [-1, 1]; ch. 1
* :mod:`ddpm_lib.checkpoint`  -- every file format: model checkpoints and training states (safetensors); ch. 6
* :mod:`ddpm_lib.numerics`    -- fp32 or bf16, contiguous or channels_last: chosen by measurement; ch. 6
* :mod:`ddpm_lib.distributed` -- data-parallel training under torchrun; ch. 13
* :mod:`ddpm_lib.viz`         -- plots, image grids and the kernel-free players of the notebooks
* :mod:`ddpm_lib.cli`         -- the command line: ``python -m ddpm_lib --help``
"""

__version__ = "0.1.0"
