"""qtm.schedules: each schedule's scales, the text form and its round trip, and bad specs."""

import numpy as np
import pytest

from qtm.diffusion import DiffusionConfig
from qtm.errors import QTMError
from qtm.schedules import SCHEDULE_KINDS, CFGSchedule


def scales(spec, cfg=7.0, steps=5, **kwargs):
    return CFGSchedule.parse(spec).scales(cfg, steps, **kwargs)


def test_constant():
    np.testing.assert_array_equal(scales("constant"), np.full(5, 7.0))


def test_linear_decays_to_its_end():
    np.testing.assert_allclose(scales("linear"), [7.0, 5.5, 4.0, 2.5, 1.0])
    np.testing.assert_allclose(scales("linear:3"), [7.0, 6.0, 5.0, 4.0, 3.0])


def test_cosine_decays_smoothly_to_its_end():
    out = scales("cosine:2", steps=5)
    expected = 2 + 5 * (1 + np.cos(np.pi * np.arange(5) / 4)) / 2
    np.testing.assert_allclose(out, expected)
    assert out[0] == 7.0 and out[2] == pytest.approx(4.5) and out[-1] == pytest.approx(2.0)
    assert np.all(np.diff(out) < 0)


def test_one_step_decays_use_the_peak():
    for spec in ("linear", "cosine", "constant"):
        np.testing.assert_array_equal(scales(spec, steps=1), [7.0])


@pytest.mark.parametrize(
    ("fraction", "steps", "guided"), [(0.5, 4, 2), (0.5, 5, 3), (0.3, 10, 3), (0.0, 6, 0), (1.0, 6, 6)]
)
def test_cutoff_guides_the_first_ceil_fraction_of_steps(fraction, steps, guided):
    # 0.3 * 10 is 3.0000000000000004 in floating point: still exactly 3 guided steps.
    out = scales(f"cutoff:{fraction}", cfg=4.0, steps=steps)
    np.testing.assert_array_equal(out, [4.0] * guided + [1.0] * (steps - guided))


def test_interval_guides_where_the_noise_level_is_inside():
    abar_t, _ = DiffusionConfig().step_alphas(20)
    sigma = np.sqrt((1 - abar_t) / abar_t)
    out = scales("interval:0.5:3", cfg=5.0, steps=20, alphas_cumprod=abar_t)
    inside = (sigma >= 0.5) & (sigma <= 3)
    assert 0 < inside.sum() < 20
    np.testing.assert_array_equal(out, np.where(inside, 5.0, 1.0))
    np.testing.assert_array_equal(
        scales("interval:0:inf", cfg=5.0, steps=20, alphas_cumprod=abar_t), np.full(20, 5.0)
    )


def test_interval_needs_one_noise_level_per_step():
    with pytest.raises(QTMError, match="noise level"):
        scales("interval:0.5:3")
    with pytest.raises(QTMError, match="expected 5 noise levels"):
        scales("interval:0.5:3", alphas_cumprod=np.full(4, 0.5))


@pytest.mark.parametrize(
    "spec", ["constant", "linear", "linear:2", "cosine:0.5", "cutoff:0.4", "interval:0.3:5"]
)
def test_an_array_of_peaks_gives_one_schedule_each(spec):
    cfg = np.array([[1.0, 3.0], [5.0, 7.5]])
    abar = np.linspace(0.1, 0.9, 6)
    out = CFGSchedule.parse(spec).scales(cfg, 6, alphas_cumprod=abar)
    assert out.shape == (2, 2, 6)
    for index in np.ndindex(2, 2):
        np.testing.assert_array_equal(
            out[index], CFGSchedule.parse(spec).scales(cfg[index], 6, alphas_cumprod=abar)
        )


def test_a_peak_of_one_is_neutral_for_every_schedule():
    """Every schedule interpolates between the peak and 1 (END = 1), so a peak of 1 means no guidance."""
    abar = np.linspace(0.01, 0.99, 8)
    for kind in SCHEDULE_KINDS:
        spec = {"cutoff": "cutoff:0.5", "interval": "interval:0.5:2"}.get(kind, kind)
        np.testing.assert_allclose(scales(spec, cfg=1.0, steps=8, alphas_cumprod=abar), np.ones(8))


@pytest.mark.parametrize(
    "spec",
    [
        "constant",
        "linear",
        "linear:2",
        "cosine",
        "cosine:0.5",
        "cutoff:0.4",
        "interval:0.3:5",
        "interval:0:inf",
    ],
)
def test_spec_round_trip(spec):
    schedule = CFGSchedule.parse(spec)
    assert schedule.spec == spec
    assert CFGSchedule.parse(schedule.spec) == schedule
    assert CFGSchedule.parse(schedule) is schedule


def test_spec_round_trip_keeps_every_digit():
    schedule = CFGSchedule.parse("linear:0.123456789")
    assert CFGSchedule.parse(schedule.spec) == schedule


def test_default_end_is_written_short():
    assert CFGSchedule.parse("linear:1").spec == "linear"
    assert CFGSchedule.parse(" cosine ").kind == "cosine"


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("exponential", "unknown CFG schedule 'exponential'"),
        ("linear:x", "must be numbers"),
        ("linear:", "must be numbers"),
        ("constant:2", "exactly 0 numbers"),
        ("linear:1:2", "at most 1 number"),
        ("cutoff", "exactly 1 number"),
        ("interval:1", "exactly 2 numbers"),
        ("cutoff:1.5", "cutoff fraction"),
        ("cutoff:nan", "cutoff fraction"),
        ("linear:-1", "final scale"),
        ("interval:3:1", "LO <= HI"),
        ("interval:-1:1", "LO <= HI"),
    ],
)
def test_bad_specs(spec, fragment):
    with pytest.raises(QTMError, match=fragment):
        CFGSchedule.parse(spec)


@pytest.mark.parametrize("spec", ["linear:nan", "cosine:inf"])
def test_non_finite_end_is_refused(spec):
    with pytest.raises(QTMError, match="final scale"):
        CFGSchedule.parse(spec)


def test_bad_kind_and_steps():
    with pytest.raises(QTMError, match="unknown CFG schedule"):
        CFGSchedule("warmup")
    with pytest.raises(QTMError, match="number of steps"):
        scales("constant", steps=0)
