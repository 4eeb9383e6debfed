"""tools/mixture_corrections.py and the shared scales of the mixture law of selection."""

import numpy as np
import pandas as pd
import pytest
from conftest import load_tool

from qtm.solvers import SchedulerConfig
from validate.selection import SamplerLaw, mixture_selection
from validate.statistics import WITHIN_CAPTIONS

LAW = SamplerLaw("ddim", 10, "constant", SchedulerConfig(), "test")
MEANS, VARIANCES = np.array([[-1.0], [1.0]]), np.array([[0.5], [0.5]])


@pytest.fixture(scope="module")
def tool():
    return load_tool("mixture_corrections")


def test_wider_separation_selects_more_at_small_w():
    # The posterior p(c | x) is steeper where the captions lie further apart: guidance narrows them more.
    s_near, s_far = (mixture_selection(MEANS, VARIANCES, [2.0], law=LAW, particles=4000, random_state=0,
                                       separation=kappa)[1] for kappa in (1.0, 2.0))
    assert np.all(s_far < s_near)
    default = mixture_selection(MEANS, VARIANCES, [2.0], law=LAW, particles=4000, random_state=0)
    same = mixture_selection(MEANS, VARIANCES, [2.0], law=LAW, particles=4000, random_state=0, separation=1.0,
                             trait_scale=1.0)
    assert all(np.array_equal(a, b) for a, b in zip(default, same, strict=True))


def _curve(log_var_s: np.ndarray, cfgs) -> pd.DataFrame:
    """A selection_curve.csv of one model, two captions and one axis whose measured S is ``log_var_s`` (C, W)."""
    rows = []
    for j, w in enumerate(cfgs):
        for c, caption in enumerate(("a", "b")):
            rows.append({"run": "r", "iteration": 0, "caption": caption, "axis": 0, "w": w,
                         "cond_mean": MEANS[c, 0], "cond_var": VARIANCES[c, 0], "S_log_var": log_var_s[c, j]})
        rows.append({"run": "r", "iteration": 0, "caption": WITHIN_CAPTIONS, "axis": 0, "w": w,
                     "S_log_var": log_var_s[:, j].mean()})
    return pd.DataFrame(rows)


def test_a_separation_the_law_made_is_found_on_small_w(tool):
    cfgs = [1.5, 2.0, 3.0, 5.0]
    made = mixture_selection(MEANS, VARIANCES, cfgs, law=LAW, particles=tool.PARTICLES, random_state=tool.SEED,
                             separation=1.7)[1][:, 0]
    models = tool.models(_curve(made, cfgs))
    assert tool.choose(models, {"r": LAW}, "separation") == pytest.approx(1.7, rel=0.01)
    rows = tool.predicted(models, {"r": LAW}, separation=1.7)
    assert rows["w"].tolist() == cfgs  # w >= 5 scored too, though it took no part in the choice
    np.testing.assert_allclose(rows["predicted"], rows["measured"], atol=1e-9)


def test_the_ideal_tilt_selects_only_where_captions_overlap(tool):
    # Tilting by (p_c / p_u)^(w-1) with p_u the captions' mixture weighs by the posterior p(c | x)^(w-1): it is flat
    # (no selection) where each caption's draws are surely its own, and narrows where the captions overlap.
    far = tool.tilt_selection(np.array([[-5.0], [5.0]]), np.full((2, 1), 0.5), [3.0])
    near = tool.tilt_selection(np.array([[-0.5], [0.5]]), np.full((2, 1), 0.5), [3.0, 10.0])
    assert np.abs(far).max() < 1e-6
    assert np.all(near[:, :, 1] < near[:, :, 0]) and np.all(near[:, :, 0] < -0.1)
