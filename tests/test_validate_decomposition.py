"""The breeder's-equation decomposition on synthetic runs whose true S, R and rho are known.

The trait arrays are drawn directly (no images): model t's CFG-1 output per caption is
N(m_t, v_t) with m_t, v_t made from its training set's *sample* moments by the inheritance
law with known rho, rho_v, mu; its guided output adds a known selection; its unconditional
output follows rho_u. So every quantity the decomposition reports has an exact true value.
"""

import numpy as np
import pytest

from validate.decomposition import ALL_ITERATIONS, UNCOND, RunTraits, TraitSet, decompose, finetune_noise
from validate.errors import ValidateError
from validate.noisy_regression import line, pair_jackknife_se

RHO, RHO_V, MU, RHO_U = 0.7, 0.5, 0.2, 0.4
S_MEAN, S_LOG = 0.8, -0.5
CAPTIONS = [f"c{i}" for i in range(8)]


def draw(rng, means, variances, n, *, heavy=False):
    """n images per caption, caption c ~ N(means[c], variances[c]) per axis; with ``heavy`` Student's t with 5
    degrees of freedom in place of the normal, scaled to the same variance."""

    def noise(shape):
        return rng.standard_t(5, shape) * np.sqrt(3 / 5) if heavy else rng.standard_normal(shape)

    traits = np.concatenate([m + np.sqrt(v) * noise((n, len(m))) for m, v in zip(means, variances, strict=True)])
    return TraitSet(traits, np.repeat(CAPTIONS, n))


def sample_moments(sample):
    means = np.array([sample.traits[sample.captions == c].mean(axis=0) for c in CAPTIONS])
    variances = np.array([sample.traits[sample.captions == c].var(axis=0, ddof=1) for c in CAPTIONS])
    return means, variances


def synthetic_run(*, iterations=4, n=3000, seed=0, guided_is_cfg1=False):
    """A run and its true values: model means/log variances and the pooled means of the uncond branch."""
    rng = np.random.default_rng(seed)
    k = 2
    base_mean = rng.normal(0, 2, (len(CAPTIONS), k))
    base_var = np.exp(rng.normal(0, 0.3, (len(CAPTIONS), k)))
    uncond_mean, uncond_var = np.zeros(k), np.full(k, 6.0)
    data = draw(
        rng, base_mean + rng.normal(0, 1.5, base_mean.shape), base_var * np.exp(rng.normal(0, 0.8, base_var.shape)), n
    )
    train = data
    run = RunTraits(
        "synthetic",
        1.0 if guided_is_cfg1 else 5.0,
        guided={},
        cfg1={},
        uncond={},
        data=data,
        base_cond=draw(rng, base_mean, base_var, n),
        base_uncond=TraitSet(uncond_mean + np.sqrt(uncond_var) * rng.standard_normal((4 * n, k)), [""] * 4 * n),
        guided_is_cfg1=guided_is_cfg1,
    )
    truth = {"mean": [], "log_var": [], "uncond_mean": []}
    for t in range(iterations):
        m_d, v_d = sample_moments(train)
        mean = base_mean + RHO * (m_d - base_mean)
        log_var = np.log(base_var) + RHO_V * (np.log(v_d) - np.log(base_var)) + MU
        u_mean = uncond_mean + RHO_U * (train.traits.mean(axis=0) - uncond_mean)
        truth["mean"].append(mean), truth["log_var"].append(log_var), truth["uncond_mean"].append(u_mean)
        run.cfg1[t] = draw(rng, mean, np.exp(log_var), n)
        run.uncond[t] = TraitSet(u_mean + np.sqrt(uncond_var) * rng.standard_normal((4 * n, k)), [""] * 4 * n)
        run.guided[t] = run.cfg1[t] if guided_is_cfg1 else draw(rng, mean + S_MEAN, np.exp(log_var + S_LOG), n)
        train = run.guided[t]
    return run, {key: np.array(value) for key, value in truth.items()}


def pick(table, quantity, iteration, caption="(all)"):
    return table[(table.quantity == quantity) & (table.iteration == iteration) & (table.caption == caption)]


def test_known_selection_response_and_inheritance():
    """Every estimate lies within 5 of its own bootstrap SEs (half-width/1.96) of the truth, and within a
    small absolute tolerance: with 3000 images per caption the SEs are ~0.02-0.03, so a false failure needs a
    5-sigma deviation (probability < 1e-5 per check; fixed seeds make the test deterministic)."""
    run, truth = synthetic_run()
    table = decompose([run], n_boot=100, random_state=1)
    assert list(table.columns) == ["run", "cfg", "caption", "axis", "iteration", "quantity", "value", "lo", "hi"]

    def close(rows, true, tolerance):
        rows = rows.sort_values(["caption", "axis"])
        se = (rows.hi - rows.lo).to_numpy() / 3.92
        error = np.abs(rows.value.to_numpy() - np.ravel(true))
        assert (error < np.maximum(5 * se, 1e-9)).all() and (error < tolerance).all(), (error.max(), se.max())

    for t in range(4):
        per_caption = table[(table.iteration == t) & table.caption.isin(CAPTIONS)]
        close(per_caption[per_caption.quantity == "S_mean"], np.full((8, 2), S_MEAN), 0.15)
        close(per_caption[per_caption.quantity == "S_log_var"], np.full((8, 2), S_LOG), 0.2)
        if t < 3:
            close(per_caption[per_caption.quantity == "R_mean"], truth["mean"][t + 1] - truth["mean"][t], 0.15)
            close(per_caption[per_caption.quantity == "R_log_var"], truth["log_var"][t + 1] - truth["log_var"][t], 0.2)
        close(pick(table, "rho", t), RHO, 0.05)
        close(pick(table, "rho_v", t), RHO_V, 0.1)
        close(pick(table, "mu", t), MU, 0.1)
        close(pick(table, "rho_u", t), RHO_U, 0.1)
        drift = table[(table.quantity == "uncond_drift_mean") & (table.iteration == t)]
        assert set(drift.caption) == {UNCOND}
        close(drift, truth["uncond_mean"][t], 0.2)
    # Pooled over iterations: tighter still.
    close(pick(table, "rho", ALL_ITERATIONS), RHO, 0.03)
    close(pick(table, "rho_v", ALL_ITERATIONS), RHO_V, 0.05)
    # Realised heritability: the slope of R on S across captions and axes, against the same slope of the truth.
    s = np.full((8, 2), S_MEAN)
    for t in range(3):
        true_r = truth["mean"][t + 1] - truth["mean"][t]
        close(pick(table, "h2_mean", t), (s * true_r).sum() / (s * s).sum(), 0.1)
    assert (table.lo <= table.hi).all()
    # The t and normal intervals (rho_v, mu, pooled h2) are symmetric about the estimate; BCa's (rho) is not.
    pooled = table[(table.caption == "(all)") & (table.axis == -1)]
    for quantity, symmetric in (("rho_v", True), ("mu", True), ("h2_mean", True), ("h2_log_var", True),
                                ("rho", False)):
        rows = pooled[pooled.quantity == quantity]
        assert np.allclose(rows.hi - rows.value, rows.value - rows.lo, rtol=1e-9) == symmetric, quantity


def test_inheritance_and_heritability_are_unbiased_at_small_sets():
    """At 40 images per caption the prior's sample ln var sits on both sides of the rho_v regression, and the CFG-1
    set's sample mean in both S and R of h2_mean. Over these 400 runs (point estimates, iteration 0) rho_v's mean
    error was +0.030 without its correction and is -0.008 with it (SD 0.086, so a Monte-Carlo SE of 0.0043),
    mu's -0.009 and +0.002; each must be within 0.02: the uncorrected rho_v fails, the corrected one lies 2.8 SEs
    inside (a false-failure rate of about 5e-3). h2_mean's error against its target (the slope of the true
    response on the guided sample's selection) was +0.0106 without its correction and is -0.0050 with it (SD
    0.062, SE 0.0031); it must lie in [-0.015, +0.004]: the uncorrected one fails, the corrected one lies 2.9 and
    3.2 SEs inside (about 3e-3). Fixed seeds."""
    errors = []
    for seed in range(400):
        run, truth = synthetic_run(iterations=2, n=40, seed=1000 + seed)
        table = decompose([run], n_boot=0)
        selected = sample_moments(run.guided[0])[0] - truth["mean"][0]
        target = np.sum(selected * (truth["mean"][1] - truth["mean"][0])) / np.sum(selected**2)
        errors.append((pick(table, "rho_v", 0).value.item() - RHO_V, pick(table, "mu", 0).value.item() - MU,
                       pick(table, "h2_mean", 0).value.item() - target))
    bias = np.mean(errors, axis=0)
    assert np.all(np.abs(bias[:2]) < 0.02), bias
    assert -0.015 <= bias[2] <= 0.004, bias


def test_jackknife_se_leaves_out_each_caption_axis_pair_across_iterations():
    """Against np.polyfit on the points left after deleting a pair: 8 captions x 2 axes x 2 iterations, where pair j
    is the points j and j + 16 (the same caption and axis in both iterations); a non-finite point is skipped."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=32)
    y = 0.4 * x + 0.3 + rng.normal(0, 0.2, 32)
    y[5] = np.nan  # pair 5 keeps one point
    fits = []
    for pair in range(16):
        keep = (np.arange(32) % 16 != pair) & np.isfinite(y)
        fits.append(np.polyfit(x[keep], y[keep], 1))
    spread = np.sqrt(15 / 16 * ((np.array(fits) - np.mean(fits, axis=0)) ** 2).sum(axis=0))
    for index, expected in ((0, spread[0]), (1, spread[1])):
        found = pair_jackknife_se(lambda *xyn, i=index: line(*xyn)[i], x[None], y[None], None, 16)
        assert found[0] == pytest.approx(expected, rel=1e-9) and found[1] == 16


def test_log_variance_line_interval_covers_the_truth_with_heavy_tails():
    """200 populations of iteration 0 (8 captions x 2 axes, 40 images per caption and set, Student t5 traits scaled
    to unit variance; the benchmark's design): the 95 % intervals of rho_v and mu each hold the truth in 180-199 of
    them. benchmarks/interval_calibration.py measures 0.957 +- 0.006 for both in this design (1000 populations);
    a binomial(200, 0.957) falls below 180 with probability 1.7e-4 and reaches 200 with 1.5e-4, so the
    false-failure rate of the two checks is below 1e-3 (the seed is fixed; they cover 194 and 195). BCa's
    interval, which this replaced, held rho_v's truth in 86 %: 180 or more with probability 0.05."""
    rng = np.random.default_rng(22)
    covered = np.zeros(2, dtype=int)
    for _ in range(200):
        base_mean, base_var = rng.normal(0, 2, (8, 2)), np.exp(rng.normal(0, 0.3, (8, 2)))
        data = draw(rng, base_mean + rng.normal(0, 1.5, (8, 2)), base_var * np.exp(rng.normal(0, 0.8, (8, 2))), 40,
                    heavy=True)
        log_var = np.log(base_var) + RHO_V * (np.log(sample_moments(data)[1]) - np.log(base_var)) + MU
        run = RunTraits("t5", 1.0, guided={}, cfg1={0: draw(rng, base_mean, np.exp(log_var), 40, heavy=True)},
                        data=data, base_cond=draw(rng, base_mean, base_var, 40, heavy=True))
        table = decompose([run], n_boot=2, random_state=rng)
        for i, (quantity, truth) in enumerate((("rho_v", RHO_V), ("mu", MU))):
            row = pick(table, quantity, 0)
            covered[i] += row.lo.item() <= truth <= row.hi.item()
    assert np.all((180 <= covered) & (covered <= 199)), covered


def test_log_variance_line_interval_covers_the_truth_when_each_model_continues_the_last():
    """60 three-iteration runs finetuned with "continue" (model t's prior is model t - 1, measured by its CFG-1
    samples; 8 captions x 2 axes, 40 Gaussian images per caption and set): rho_v's 95 % interval at iteration 2
    holds the truth in at least 49. benchmarks/interval_calibration.py --finetune continue measures 0.935 +- 0.008
    (1000 populations); a binomial(60, 0.935) falls below 49 with probability 4e-4 (the seed is fixed; it covers
    55). BCa's interval, which this replaced, covered 61.5 % there: 49 or more with probability 6e-4."""
    rng = np.random.default_rng(23)
    covered = 0
    for _ in range(60):
        mean, var = rng.normal(0, 2, (8, 2)), np.exp(rng.normal(0, 0.3, (8, 2)))
        data = draw(rng, mean + rng.normal(0, 1.5, (8, 2)), var * np.exp(rng.normal(0, 0.8, (8, 2))), 40)
        run = RunTraits("c", 5.0, guided={}, cfg1={}, data=data, base_cond=draw(rng, mean, var, 40),
                        finetune="continue")
        train = data
        for t in range(3):
            train_mean, train_var = sample_moments(train)
            mean = mean + RHO * (train_mean - mean)
            var = np.exp(np.log(var) + RHO_V * (np.log(train_var) - np.log(var)) + MU)
            run.cfg1[t] = draw(rng, mean, var, 40)
            if t < 2:  # the training sets of models 1 and 2
                run.guided[t] = train = draw(rng, mean + S_MEAN, var * np.exp(S_LOG), 40)
        row = pick(decompose([run], n_boot=2, random_state=rng), "rho_v", 2)
        covered += row.lo.item() <= RHO_V <= row.hi.item()
    assert covered >= 49, covered


def test_a_cfg1_run_has_no_selection_and_no_heritability():
    run, _ = synthetic_run(iterations=3, n=500, guided_is_cfg1=True)
    table = decompose([run], n_boot=20, random_state=2)
    selection = table[table.quantity.str.startswith("S_")]
    assert (selection.value == 0).all() and (selection.lo == 0).all() and (selection.hi == 0).all()
    assert not table.quantity.str.startswith("h2").any()
    assert pick(table, "rho", ALL_ITERATIONS).value.between(0.6, 0.8).all()


def test_continue_finetuning_measures_from_the_previous_model():
    """With finetune=continue the prior of model t is model t-1: rho is the slope of (m_t - m_{t-1}) on
    (m_D - m_{t-1}); built that way, the estimate is RHO (tolerance 0.05 against SEs ~0.01)."""
    rng = np.random.default_rng(3)
    n, k = 3000, 2
    prior_mean = rng.normal(0, 2, (8, k))
    train_mean = prior_mean + rng.normal(0, 1.5, prior_mean.shape)
    var = np.ones((8, k))
    previous = draw(rng, prior_mean, var, n)
    guided = draw(rng, train_mean, var, n)  # D_1: what model 0 generated under guidance
    model = draw(rng, prior_mean + RHO * (sample_moments(guided)[0] - prior_mean), var, n)
    run = RunTraits("c", 5.0, guided={0: guided}, cfg1={0: previous, 1: model}, finetune="continue")
    table = decompose([run], n_boot=0)
    assert pick(table, "rho", 1).value.iloc[0] == pytest.approx(RHO, abs=0.05)
    assert pick(table, "rho", 0).empty  # no real data and no base reference: iteration 0 has no prior


def test_finetune_noise_recovers_the_seed_spread():
    """K = 12 finetunes whose caption means differ by 0.3 within-caption SDs, 400 images each: the excess
    spread estimates 0.3 with an SE of ~0.07; the tolerance 0.2 is ~3 SE (false failure < 1%, fixed seed)."""
    rng = np.random.default_rng(4)
    sets = []
    for _ in range(12):
        offsets = 0.3 * rng.standard_normal((8, 1))
        sets.append(draw(rng, offsets, np.ones((8, 1)), 400))
    table = finetune_noise(sets, run="r", iteration=2, n_boot=30, random_state=5)
    pooled = table[(table.caption == "(all)") & (table.quantity == "finetune_noise_excess")]
    assert pooled.value.iloc[0] == pytest.approx(0.3, abs=0.2)
    assert set(table.iteration) == {2}
    with pytest.raises(ValidateError, match="at least 2 finetunes"):
        finetune_noise(sets[:1])


def test_finetune_noise_intervals_hold_their_point_and_cover_the_spread_of_these_models():
    """K = 5 finetunes, 8 captions of 15 images each (as in the study), Gaussian traits: the pooled excess
    spread's interval covers the spread of these models' true caption means (in their mean within-caption SD)
    in 192-196 of 200 sets on seeds 101, 202 and 303 (rate 0.97; the percentile intervals in 189-191); fewer than
    175 of 200 happens with probability < 1e-4. Before the resamples' added sampling noise was subtracted, the
    reversed interval lay below its point and covered 101-112 of 200."""
    rng = np.random.default_rng(11)
    covered = 0
    for _ in range(200):
        offsets = 0.3 * rng.standard_normal((5, 8, 1))
        variances = np.exp(0.3 * rng.standard_normal((5, 8, 1)))
        sets = [draw(rng, offsets[m], variances[m], 15) for m in range(5)]
        table = finetune_noise(sets, n_boot=100, random_state=rng)
        row = table[(table.caption == "(all)") & (table.quantity == "finetune_noise_excess")].iloc[0]
        truth = np.sqrt(np.mean(offsets.var(axis=0, ddof=1) / variances.mean(axis=0)))
        assert row.lo <= row.value <= row.hi
        covered += row.lo <= truth <= row.hi
    assert covered >= 175


def test_finetune_noise_intervals_are_not_biased_up_with_heavy_tails():
    """As above with t5 traits (2 axes; the pooled mean spread, sampling noise included): the percentile intervals
    of the raw resamples were too wide and lay above the truth in 24-31 of 300 sets (seeds 12-14; covering
    269-276), the basic intervals of the shrunk world in 9-13 (covering 280-281). At most 20 above (about 2.5 SD
    of the ~11.5 expected: false failure < 1 %) and at least 268 covering (< 0.2 %)."""
    rng = np.random.default_rng(12)
    covered = above = 0
    for _ in range(300):
        offsets = 0.3 * rng.standard_normal((5, 8, 2))
        variances = np.exp(0.3 * rng.standard_normal((5, 8, 2)))
        sets = [draw(rng, offsets[m], variances[m], 15, heavy=True) for m in range(5)]
        table = finetune_noise(sets, n_boot=100, random_state=rng)
        row = table[(table.caption == "(all)") & (table.quantity == "finetune_noise_mean")].iloc[0]
        within = variances.mean(axis=0)
        truth = np.sqrt(np.mean((offsets.var(axis=0, ddof=1) + within / 15) / within))
        assert row.lo <= row.value <= row.hi
        covered += row.lo <= truth <= row.hi
        above += row.lo > truth
    assert above <= 20
    assert covered >= 268


def test_bad_input():
    with pytest.raises(ValidateError, match="3 trait rows but 2 captions"):
        TraitSet(np.zeros((3, 1)), ["a", "b"])
    run = RunTraits("x", 3.0, guided={}, cfg1={0: TraitSet(np.zeros((4, 1)), [""] * 4)})
    with pytest.raises(ValidateError, match="no captions"):
        decompose([run])
