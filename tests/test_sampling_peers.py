"""Our fast samplers against a peer: diffusers' schedulers driving the same network.

The same betas, the same initial noise (and the same per-step noise for the stochastic
variants), the same model: the images must agree to float tolerance. diffusers is a
test-only dependency (the ``test`` extra); these tests are skipped without it.
"""

from __future__ import annotations

import pytest
import torch

from ddpm_lib.models import build_model
from ddpm_lib.sampling import ddim_sample, dpm_solver_sample, dpm_solver_timesteps
from ddpm_lib.schedule import make_schedule

diffusers = pytest.importorskip("diffusers")

T = 1000
SCHEDULE = make_schedule("linear", T)
TOL = dict(atol=5e-4, rtol=1e-4)   # float32 arithmetic over tens of steps


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_model(arch="unet", base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention=False,
                      num_timesteps=T, image_size=8)
    with torch.no_grad():          # a random network predicts ~0; scale its output so the samplers' paths bend
        net.conv_out.weight.mul_(5.0)
    return net.eval()


def _x_T(n=4, seed=1):
    return torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(seed))


def _peer_loop(scheduler, model, x, noises=None, **step_kwargs):
    for i, t in enumerate(scheduler.timesteps):
        with torch.no_grad():
            eps = model(x, torch.full((x.shape[0],), int(t), dtype=torch.long))
        kwargs = dict(step_kwargs)
        if noises is not None:
            kwargs["variance_noise"] = noises[i]
        x = scheduler.step(eps, t, x, **kwargs).prev_sample
    return x


def _ours_kwargs():
    return dict(batch_size=64)


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_matches_diffusers(model, steps, clip):
    sched = diffusers.DDIMScheduler(num_train_timesteps=T, trained_betas=SCHEDULE.betas.numpy(), clip_sample=clip,
                                    set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon")
    sched.set_timesteps(steps)
    x_T = _x_T()
    # use_clipped_model_output: diffusers' DDIMPipeline option that re-derives eps from the clipped x_0, as we do
    theirs = _peer_loop(sched, model, x_T.clone(), eta=0.0, use_clipped_model_output=True)
    ours = ddim_sample(model, SCHEDULE, 4, timesteps=sched.timesteps.tolist(), eta=0.0, clip_x0=clip, x_T=x_T,
                       **_ours_kwargs())
    torch.testing.assert_close(ours, theirs, **TOL)
    if clip:    # the clip matters on this path: keeping the unclipped eps (diffusers' default) lands elsewhere
        sched.set_timesteps(steps)
        unclipped_eps = _peer_loop(sched, model, x_T.clone(), eta=0.0)
        assert (unclipped_eps - ours).abs().max() > 0.1


def test_ddim_eta_one_matches_diffusers_with_the_same_noise(model):
    steps = 20
    sched = diffusers.DDIMScheduler(num_train_timesteps=T, trained_betas=SCHEDULE.betas.numpy(), clip_sample=False,
                                    set_alpha_to_one=True, prediction_type="epsilon")
    sched.set_timesteps(steps)
    seed = 5
    g = torch.Generator().manual_seed(seed)    # our draw order: x_T, then one z per step
    x_T = torch.randn((4, 1, 8, 8), generator=g)
    noises = [torch.randn((4, 1, 8, 8), generator=g) for _ in range(steps)]
    theirs = _peer_loop(sched, model, x_T.clone(), noises=noises, eta=1.0)
    ours = ddim_sample(model, SCHEDULE, 4, timesteps=sched.timesteps.tolist(), eta=1.0, seed=seed, **_ours_kwargs())
    torch.testing.assert_close(ours, theirs, **TOL)


@pytest.mark.parametrize("steps", [5, 10, 20, 50])
def test_dpm_solver_pp_matches_diffusers(model, steps):
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, trained_betas=SCHEDULE.betas.numpy(),
                                                  algorithm_type="dpmsolver++", solver_order=2,
                                                  prediction_type="epsilon")
    sched.set_timesteps(steps)
    x_T = _x_T()
    theirs = _peer_loop(sched, model, x_T.clone())
    ours_default_steps = dpm_solver_sample(model, SCHEDULE, 4, steps=steps, x_T=x_T, **_ours_kwargs())
    assert [int(t) for t in sched.timesteps] == dpm_solver_timesteps(T, steps)
    torch.testing.assert_close(ours_default_steps, theirs, **TOL)


@pytest.mark.parametrize("steps", [10, 20])
def test_sde_dpm_solver_pp_matches_diffusers_with_the_same_noise(model, steps):
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, trained_betas=SCHEDULE.betas.numpy(),
                                                  algorithm_type="sde-dpmsolver++", solver_order=2,
                                                  prediction_type="epsilon")
    sched.set_timesteps(steps)
    seed = 3
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn((4, 1, 8, 8), generator=g)
    noises = [torch.randn((4, 1, 8, 8), generator=g) for _ in range(steps)]
    theirs = _peer_loop(sched, model, x_T.clone(), noises=noises)
    ours = dpm_solver_sample(model, SCHEDULE, 4, steps=steps, stochastic=True, seed=seed, **_ours_kwargs())
    torch.testing.assert_close(ours, theirs, **TOL)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "logsnr"])
def test_dpm_solver_pp_spacings_match_diffusers(model, spacing):
    """The timesteps of each spacing are diffusers' (timestep_spacing, or use_lu_lambdas for uniform log-SNR) at
    5 to 20 steps (more repeat a timestep near t = 0 with uniform log-SNR), and a 10-step run draws the same images,
    but for uniform log-SNR: there diffusers takes each step's coefficients from the unrounded lambda while the
    network sees the rounded timestep; ours come from the timestep the network sees (dpm_solver_timesteps)."""
    options = {"use_lu_lambdas": True} if spacing == "logsnr" else {"timestep_spacing": spacing}
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, trained_betas=SCHEDULE.betas.numpy(),
                                                  algorithm_type="dpmsolver++", solver_order=2,
                                                  prediction_type="epsilon", **options)
    for steps in (5, 10, 20):
        sched.set_timesteps(steps)
        assert [int(t) for t in sched.timesteps] == dpm_solver_timesteps(T, steps, spacing, SCHEDULE), steps
    if spacing == "logsnr":
        return
    sched.set_timesteps(10)
    x_T = _x_T()
    theirs = _peer_loop(sched, model, x_T.clone())
    ours = dpm_solver_sample(model, SCHEDULE, 4, steps=10, spacing=spacing, x_T=x_T, **_ours_kwargs())
    torch.testing.assert_close(ours, theirs, **TOL)


def test_a_spacing_that_does_not_exist_or_repeats_a_timestep_is_refused():
    with pytest.raises(ValueError, match="unknown spacing 'uniform'"):
        dpm_solver_timesteps(T, 10, "uniform")
    with pytest.raises(ValueError, match="needs the schedule"):
        dpm_solver_timesteps(T, 10, "logsnr")
    with pytest.raises(ValueError, match="repeat a timestep on this schedule: use fewer steps"):
        dpm_solver_timesteps(T, 500, "logsnr", SCHEDULE)
