"""The guided sampler's law for Gaussian-mixture p_c and p_u, by particles (qtm.mixture_law)."""

import numpy as np
import pytest

from qtm.errors import QTMError
from qtm.mixture_law import mixture_law
from qtm.sampler_map import prepare_sampler
from qtm.solvers import SchedulerConfig
from validate.selection import SamplerLaw, mixture_selection, predicted_selection

PARTICLES = 50_000


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_one_gaussian_each_is_the_exact_law(sampler):
    """With one component per model the particles' moments are the exact Gaussian law's.

    Fixed seed, so deterministic; the tolerance is 5 Monte Carlo SDs (sqrt(v / N) for the mean,
    v sqrt(2 / N) for the variance), which a correct sampler misses with probability about 6e-7 per value.
    """
    cfgs = np.array([1.0, 2.0, 5.0, 9.0])
    law = mixture_law([[1.0]], [[[1.5]]], [[[0.4]]], [[1.0]], [[[-0.5]]], [[[2.0]]], cfg=cfgs, sampler=sampler,
                      steps=15, particles=PARTICLES, random_state=3)
    exact = prepare_sampler(sampler, cfg=cfgs, steps=15).moments(1.5, 0.4, -0.5, 2.0)
    mean, var = law.mean[0, :, 0], law.var[0, :, 0]
    np.testing.assert_array_less(np.abs(mean - exact.mean), 5 * np.sqrt(exact.var / PARTICLES))
    np.testing.assert_array_less(np.abs(var - exact.var), 5 * exact.var * np.sqrt(2 / PARTICLES))


def test_a_mixture_p_u_makes_selection_saturate():
    """Two well-separated concepts: p(c | x) <= 1 bounds the tilt, so S on ln var grows slowly with w (about
    logarithmically: -1.09 at w = 3, -2.29 at w = 20), while the law with a single Gaussian p_u of the mixture's
    moments selects over ten times harder at w = 5 (-15.8 against -1.45). Deterministic (fixed seed); the
    margins are wide against the particles' error (about 0.02)."""
    law = SamplerLaw("ddim", 20, "constant", SchedulerConfig(), "test")
    _, mixture = mixture_selection([[-3.0], [3.0]], [[0.5], [0.5]], [3.0, 5.0, 20.0], law=law, random_state=0)
    _, gaussian = predicted_selection(-3.0, 0.5, 0.0, 9.5, [5.0], law=law)
    at_3, at_5, at_20 = mixture[0, 0]
    assert 2.5 * at_3 < at_20 < at_5 < at_3 < 0
    assert gaussian[0] < 5 * at_5


def test_same_seed_same_law_and_common_noise_across_w():
    args = ([[0.5, 0.5]], [[[-1.0], [1.0]]], [[[0.3], [0.3]]], [[1.0]], [[[0.0]]], [[[1.3]]])
    one = mixture_law(*args, cfg=[1.0, 3.0], steps=10, particles=500, random_state=7)
    two = mixture_law(*args, cfg=[1.0, 3.0], steps=10, particles=500, random_state=7)
    alone = mixture_law(*args, cfg=[3.0], steps=10, particles=500, random_state=7)
    assert np.array_equal(one.var, two.var) and np.array_equal(one.var[:, 1:], alone.var)


@pytest.mark.parametrize(("change", "message"), [
    ({"sampler": "ode"}, "samples with ddim or ddpm"),
    ({"cond_weights": [[0.5]]}, "sum to 1"),
    ({"cond_vars": [[[-1.0]]]}, "cond_vars"),
    ({"uncond_means": [[[0.0, 1.0]]], "uncond_vars": [[[1.0, 1.0]]]}, "same cases and axes"),
    ({"cond_means": [[1.0]]}, "(R, M, d) expected"),
])
def test_bad_input_is_one_clear_error(change, message):
    args = {"cond_weights": [[1.0]], "cond_means": [[[1.0]]], "cond_vars": [[[0.5]]], "uncond_weights": [[1.0]],
            "uncond_means": [[[0.0]]], "uncond_vars": [[[1.0]]]}
    options = {"cfg": [2.0], "steps": 5, "particles": 10}
    args.update({k: v for k, v in change.items() if k in args})
    options.update({k: v for k, v in change.items() if k not in args})
    with pytest.raises(QTMError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mixture_law(**args, **options)
