"""Coverage of validate's 95 % intervals on synthetic populations of known truth (issue 21 item 4).

For each of Gaussian and heavy-tailed (Student t, 5 degrees of freedom, scaled to unit variance)
traits, draws ``--populations`` populations and counts how often each statistic's interval holds
the truth:

- h2_mean, h2_log_var, rho, rho_v, mu (``validate.decomposition.decompose``): a two-iteration run of 8
  captions x 2 axes, 40 images per caption and set, whose models follow the inheritance law with
  known rho, rho_v, mu from their training set's sample moments and whose guided images add a known
  selection (the construction of tests/test_validate_decomposition.py); iteration 0's values. The
  truth of h2 is the mean true response over the designed selection (of the mean, of ln var). With
  ``--finetune continue`` each model is finetuned from the previous one (its prior is model t - 1,
  which the decomposition measures by its CFG-1 samples) over three iterations; rho, rho_v and mu
  are read at iteration 2 (``@2``) and pooled over the iterations (``@all``).
- finetune_mean, finetune_excess, finetune_log_var (``validate.decomposition.finetune_noise``, pooled rows): 5
  finetunes of 8 captions x 2 axes, 15 images per caption, whose caption means differ by 0.3 and whose log
  variances by 0.3 between the models. The truth is conditional on the 5 models drawn (the resamples are of
  images, not of models): the spread of their true caption means over their mean true variance, without
  (excess) and with (mean) the expected sampling variance of a caption mean, and the spread of their true log
  variances with the expected sampling variance of a log variance of 15 images (by simulation, per tails).
- within_var (``validate.statistics.grouped_statistics``, studentised): the mean over 8 captions of 30
  images of the within-caption variance; the truth is the mean of the true variances.
- precision, recall, density, coverage, vendi (``validate.diversity.diversity_metrics``,
  half-sampling without replacement): 60 real against 60 generated 4-d points (the generated set
  narrowed to 0.8 of the real spread; ``--sets`` gives another design). These metrics have no
  size-free population value; the truth is their expectation at these set sizes, the mean of the
  point estimates over all populations (its own Monte-Carlo error is the SD over sqrt(populations),
  small beside an interval).

Prints one table: coverage, its Monte-Carlo standard error sqrt(p (1 - p) / N), the miss from
the 93-97 % goal, and why an interval misses: ``bias/SD`` (the estimates' mean error over their
SD; 0 by construction for the set metrics) and ``width`` (the interval's half-length over z against
that SD; 1 is right). Run: ``python benchmarks/interval_calibration.py --populations 1000 --resamples 200``.
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np

from validate.decomposition import RunTraits, TraitSet, decompose, finetune_noise
from validate.diversity import diversity_metrics
from validate.statistics import WITHIN_CAPTIONS, grouped_statistics

RHO, RHO_V, MU, S_MEAN, S_LOG = 0.7, 0.5, 0.2, 0.8, -0.5
CAPTIONS = [f"c{i}" for i in range(8)]
DECOMPOSITION = ("h2_mean", "h2_log_var", "rho", "rho_v", "mu")
DIVERSITY = ("precision", "recall", "density", "coverage", "vendi")


def noise(rng, shape, tails):
    """Unit-variance noise: Gaussian, or Student t with 5 degrees of freedom scaled by sqrt(3/5)."""
    return rng.standard_normal(shape) if tails == "gaussian" else rng.standard_t(5, shape) * np.sqrt(3 / 5)


def draw(rng, means, variances, n, tails):
    pairs = zip(means, variances, strict=True)
    traits = np.concatenate([m + np.sqrt(v) * noise(rng, (n, len(m)), tails) for m, v in pairs])
    return TraitSet(traits, np.repeat(CAPTIONS, n))


def decomposition_population(rng, tails, n_boot, n=40, finetune="base"):
    """The decomposition's statistics and their intervals, with their true values: iteration 0's of a
    two-iteration run, or with ``finetune`` "continue" (each model finetuned from the previous one) rho, rho_v
    and mu of iteration 2 and pooled over the three iterations of a three-iteration run."""
    k = 2
    base_mean = rng.normal(0, 2, (len(CAPTIONS), k))
    base_var = np.exp(rng.normal(0, 0.3, (len(CAPTIONS), k)))
    data_mean = base_mean + rng.normal(0, 1.5, base_mean.shape)
    data = draw(rng, data_mean, base_var * np.exp(rng.normal(0, 0.8, base_var.shape)), n, tails)
    run = RunTraits("sim", 5.0, guided={}, cfg1={}, data=data, base_cond=draw(rng, base_mean, base_var, n, tails),
                    finetune=finetune)
    train, means, log_vars = data, [], []
    prior_mean, prior_log_var = base_mean, np.log(base_var)
    for t in range(2 if finetune == "base" else 3):
        m_d = np.array([train.traits[train.captions == c].mean(axis=0) for c in CAPTIONS])
        v_d = np.array([train.traits[train.captions == c].var(axis=0, ddof=1) for c in CAPTIONS])
        mean = prior_mean + RHO * (m_d - prior_mean)
        log_var = prior_log_var + RHO_V * (np.log(v_d) - prior_log_var) + MU
        means.append(mean), log_vars.append(log_var)
        run.cfg1[t] = draw(rng, mean, np.exp(log_var), n, tails)
        run.guided[t] = draw(rng, mean + S_MEAN, np.exp(log_var + S_LOG), n, tails)
        train = run.guided[t]
        if finetune == "continue":
            prior_mean, prior_log_var = mean, log_var
    response = means[1] - means[0]
    truth = {"h2_mean": response.mean() / S_MEAN, "h2_log_var": (log_vars[1] - log_vars[0]).mean() / S_LOG,
             "rho": RHO, "rho_v": RHO_V, "mu": MU}
    table = decompose([run], n_boot=n_boot, random_state=rng)
    table = table[(table.caption == "(all)") & (table.axis == -1)]
    if finetune == "base":
        wanted = {quantity: (quantity, 0) for quantity in DECOMPOSITION}
    else:
        wanted = {f"{quantity}@{name}": (quantity, iteration) for iteration, name in ((2, "2"), (-1, "all"))
                  for quantity in ("rho", "rho_v", "mu")}
    found = {}
    for name, (quantity, iteration) in wanted.items():
        row = table[(table.quantity == quantity) & (table.iteration == iteration)].iloc[0]
        found[name] = (row.value, row.lo, row.hi, truth[quantity])
    return found


@functools.cache
def log_variance_noise(tails: str, n: int) -> float:
    """The sampling variance of the log variance of ``n`` unit-variance draws (200 000 sets, fixed seed)."""
    rng = np.random.default_rng([2026, n, tails == "t5"])
    return float(np.log(noise(rng, (200_000, n), tails).var(axis=1, ddof=1)).var())


def finetune_population(rng, tails, n_boot, models=5, n=15, spread=0.3, log_spread=0.3):
    offsets = spread * rng.standard_normal((models, len(CAPTIONS), 2))
    log_vars = log_spread * rng.standard_normal((models, len(CAPTIONS), 2))
    sets = [draw(rng, offsets[m], np.exp(log_vars[m]), n, tails) for m in range(models)]
    table = finetune_noise(sets, n_boot=n_boot, random_state=rng)
    pooled = table[table.caption == "(all)"].set_index("quantity")
    within = np.exp(log_vars).mean(axis=0)
    between = offsets.var(axis=0, ddof=1)
    truth = {"finetune_noise_mean": np.sqrt(np.mean((between + within / n) / within)),
             "finetune_noise_excess": np.sqrt(np.mean(between / within)),
             "finetune_noise_log_var": np.sqrt(np.mean(log_vars.var(axis=0, ddof=1)) + log_variance_noise(tails, n))}
    return {name.replace("_noise", ""): (pooled.loc[name, "value"], pooled.loc[name, "lo"], pooled.loc[name, "hi"],
                                         truth[name]) for name in truth}


def within_population(rng, tails, n_boot, n=30):
    variances = np.exp(rng.normal(0, 0.5, len(CAPTIONS)))
    x = np.concatenate([np.sqrt(v) * noise(rng, (n, 1), tails) for v in variances])
    rows = grouped_statistics(x, x, np.repeat(CAPTIONS, n), n_boot=n_boot, random_state=rng)
    row = next(r for r in rows if r["caption"] == WITHIN_CAPTIONS and r["statistic"] == "var")
    return {"within_var": (row["value"], row["ci_low"], row["ci_high"], variances.mean())}


def diversity_population(rng, tails, n_boot, sets=(60, 60, 4, 0.8)):
    n, m, d, narrowing = sets
    real, generated = noise(rng, (n, d), tails), narrowing * noise(rng, (m, d), tails)
    rows = diversity_metrics(real, generated, bootstrap=n_boot, random_state=int(rng.integers(2**31)))
    return {r["statistic"]: (r["value"], r["ci_low"], r["ci_high"], None) for r in rows if r["statistic"] in DIVERSITY}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--populations", type=int, default=1000)
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--finetune", choices=("base", "continue"), default="base",
                        help="The decomposition's design: each model finetuned from the base model (two "
                        "iterations, iteration 0's rows) or from the previous one (three iterations; rows at "
                        "iteration 2 and pooled).")
    parser.add_argument("--sets", default="60,60,4,0.8", help="The set metrics' design: real images, generated "
                        "images, dimension, generated spread as a fraction of the real one.")
    options = parser.parse_args(argv)
    n, m, d, narrowing = options.sets.split(",")
    sets = (int(n), int(m), int(d), float(narrowing))
    print(f"{options.populations} populations per distribution, {options.resamples} resamples each, 95 % intervals")
    print(f"{'statistic':<16} {'tails':<9} {'coverage':>8} {'MC SE':>6} {'miss':>6} {'contains':>8} {'bias/SD':>7} "
          f"{'width':>6}")
    for tails in ("gaussian", "t5"):
        rng = np.random.default_rng([options.seed, tails == "t5"])
        found: dict[str, list] = {}
        start = time.perf_counter()
        for _ in range(options.populations):
            for simulate in (functools.partial(decomposition_population, finetune=options.finetune),
                             finetune_population, within_population,
                             functools.partial(diversity_population, sets=sets)):
                for name, value in simulate(rng, tails, options.resamples).items():
                    found.setdefault(name, []).append(value)
        for name, values in found.items():
            value, low, high, truth = (np.array(column, dtype=float) for column in zip(*values, strict=True))
            if name in DIVERSITY:
                truth = np.full(len(value), value.mean())
            coverage = np.mean((low <= truth) & (truth <= high))
            se = np.sqrt(coverage * (1 - coverage) / len(value))
            miss = min(coverage - 0.93, 0.0) + max(coverage - 0.97, 0.0)
            contains = np.mean((low <= value) & (value <= high))
            # Why an interval misses: the estimate's bias in units of its spread, and the interval's width as an
            # SD (half its length over z) against the estimates' actual SD.
            spread = np.std(value - truth, ddof=1)
            bias = np.mean(value - truth) / spread
            width = np.nanmean((high - low) / (2 * 1.959964)) / spread
            print(f"{name:<16} {tails:<9} {coverage:8.3f} {se:6.3f} {miss:+6.3f} {contains:8.3f} {bias:+7.2f} "
                  f"{width:6.2f}")
        print(f"# {tails}: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
