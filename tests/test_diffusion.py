"""qtm.diffusion reproduces diffusers' DDIMScheduler: noise levels, timestep grids, step noise levels."""

import itertools

import numpy as np
import pytest

from qtm.diffusion import BETA_SCHEDULES, TIMESTEP_SPACINGS, DiffusionConfig
from qtm.errors import QTMError

CONFIGS = [
    dict(beta_schedule=b, timestep_spacing=s, steps_offset=o, set_alpha_to_one=one)
    for b, s, o, one in itertools.product(BETA_SCHEDULES, TIMESTEP_SPACINGS, (0, 1), (False, True))
]
STEP_COUNTS = (1, 2, 3, 7, 10, 25, 50, 333, 999)
# Reading the alphas off every step is slow; these grids already reach every branch of step().
STEPPED = (1, 3, 7, 50)


def _scheduler(**kwargs):
    diffusers = pytest.importorskip("diffusers")
    return diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, clip_sample=False, **kwargs)


def _step_alphas_used_by(scheduler, timestep):
    """The (abar_t, abar_prev) that ``scheduler.step`` really uses, read off its outputs.

    With a zero noise prediction and ``sample = 1``, ``step`` returns
    ``pred_original_sample = 1/sqrt(abar_t)`` and ``prev_sample = sqrt(abar_prev/abar_t)``.
    """
    import torch

    one = torch.ones(1, dtype=torch.float64)
    out = scheduler.step(0 * one, int(timestep), one)
    a = 1.0 / out.pred_original_sample.item()
    return a * a, (out.prev_sample.item() * a) ** 2


def test_defaults_are_sd15():
    config = DiffusionConfig()
    assert (config.num_train_timesteps, config.beta_schedule, config.timestep_spacing) == (
        1000,
        "scaled_linear",
        "leading",
    )
    assert (config.steps_offset, config.set_alpha_to_one) == (1, False)
    assert config.alphas_cumprod.dtype == np.float64 and config.alphas_cumprod.shape == (1000,)
    assert config.final_alpha_cumprod == config.alphas_cumprod[0] == pytest.approx(1 - 0.00085)


@pytest.mark.parametrize("kwargs", CONFIGS, ids=lambda k: "-".join(str(v) for v in k.values()))
def test_matches_diffusers(kwargs):
    scheduler = _scheduler(**kwargs)
    config = DiffusionConfig(**kwargs)
    # diffusers computes the betas in float32; ours are float64.
    np.testing.assert_allclose(config.alphas_cumprod, scheduler.alphas_cumprod.double().numpy(), rtol=5e-5)
    assert config.final_alpha_cumprod == pytest.approx(float(scheduler.final_alpha_cumprod), rel=1e-6)
    for steps in STEP_COUNTS:
        scheduler.set_timesteps(steps)
        expected = scheduler.timesteps.numpy()
        timesteps = config.timesteps(steps)
        np.testing.assert_array_equal(timesteps, expected)
        if steps in STEPPED:
            abar_t, abar_prev = config.step_alphas(steps)
            used = np.array([_step_alphas_used_by(scheduler, t) for t in expected])
            np.testing.assert_allclose(abar_t, used[:, 0], rtol=1e-4)
            np.testing.assert_allclose(abar_prev, used[:, 1], rtol=1e-4)


def test_trailing_steps_do_not_land_on_the_next_timestep():
    """diffusers' quirk, kept on purpose: step k goes to t_k - T//K, not to t_{k+1}."""
    config = DiffusionConfig(timestep_spacing="trailing")
    assert config.timesteps(3).tolist() == [999, 666, 332]
    _, abar_prev = config.step_alphas(3)
    np.testing.assert_array_equal(abar_prev[:2], config.alphas_cumprod[[666, 333]])


def test_alphas_cumprod_is_read_only():
    with pytest.raises(ValueError):
        DiffusionConfig().alphas_cumprod[0] = 0.5


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(beta_schedule="cosine"), "beta_schedule"),
        (dict(timestep_spacing="uniform"), "timestep_spacing"),
        (dict(steps_offset=-1), "steps_offset"),
        (dict(num_train_timesteps=0), "num_train_timesteps"),
        (dict(beta_start=0.0), "beta_start"),
        (dict(beta_end=1.5), "beta_end"),
        (dict(set_alpha_to_one="yes"), "set_alpha_to_one"),
    ],
)
def test_bad_config(kwargs, fragment):
    with pytest.raises(QTMError, match=fragment):
        DiffusionConfig(**kwargs)


@pytest.mark.parametrize(
    ("steps", "fragment"), [(0, ">= 1"), (1001, "<= num_train_timesteps"), (2.5, "whole")]
)
def test_bad_steps(steps, fragment):
    with pytest.raises(QTMError, match=fragment):
        DiffusionConfig().timesteps(steps)


def test_leading_offset_past_the_end_is_refused():
    with pytest.raises(QTMError, match="reaches timestep 1000"):
        DiffusionConfig().step_alphas(1000)
    assert DiffusionConfig(steps_offset=0).timesteps(1000)[0] == 999
