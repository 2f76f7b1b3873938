"""ddpm_lib: the small library behind the DDPM tutorial book.

One module per concept, named after the paper (Ho et al. 2020):

* :mod:`ddpm_lib.schedule`   -- beta schedules and the forward process q (Eqs. 2, 4, 6, 7)
* :mod:`ddpm_lib.data`       -- MNIST, verified, scaled to [-1, 1]
* :mod:`ddpm_lib.models`     -- the noise predictors eps_theta: ``SimpleUNet`` and ``UNet``
* :mod:`ddpm_lib.training`   -- Algorithm 1 with EMA, checkpoints and exact resume
* :mod:`ddpm_lib.sampling`   -- Algorithm 2 (``p_sample``, ``ddpm_sample``) and DDIM
* :mod:`ddpm_lib.checkpoint` -- safetensors checkpoints with their config inside
* :mod:`ddpm_lib.metrics`    -- sample quality: a Frechet distance on MNIST-classifier features
* :mod:`ddpm_lib.viz`        -- plotting helpers for the notebooks

Command line: ``python -m ddpm_lib --help``.
"""

__version__ = "0.1.0"
