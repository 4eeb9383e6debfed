"""Each iteration of a chain split into selection and response, as a breeder measures a population.

Price's and the breeder's equation separate what one generation does: guidance *selects*
within the current model's output, finetuning *transmits* the selected set to the next model.
Per iteration ``t`` of a run this module measures, from trait arrays alone (numpy only):

- the selection differential ``S_t``: the guided samples (the run's own images) minus the
  CFG-1 samples of the same model ``t``, per caption and trait axis, for the mean
  (``S_mean``) and the log variance (``S_log_var``);
- the response ``R_t``: the CFG-1 moments of model ``t + 1`` minus those of model ``t``
  (``R_mean``, ``R_log_var``), and the realised heritability ``h2 = R / S`` per caption and
  axis, and pooled (the slope through the origin of R on S across captions and axes);
- the unconditional drift: model ``t``'s unconditional samples (empty prompt) minus the
  base model's (``uncond_drift_mean``, ``uncond_drift_log_var``, per axis);
- the inheritance slopes against the training set ``D_t`` (the real data at ``t = 0``,
  else iteration ``t - 1``'s images, mixed with the real data by ``real_fraction``),
  regressions across captions and axes of the model's moments on the training set's,
  both measured from the finetuning's prior (the base model, or model ``t - 1`` with
  ``finetune=continue``): ``rho`` from the CFG-1 means, ``rho_v`` (slope) and ``mu``
  (intercept) from the CFG-1 log variances (``ln v = ln v_prior + rho_v (ln v_D - ln v_prior) + mu``,
  corrected for the sampling noise of ``ln v_prior``, which both sides share: :func:`~validate.noisy_regression.line`),
  ``rho_u`` from the unconditional means against the pooled training set.

Every value has a BCa bootstrap interval: the images of every set are resampled within
captions, all sets independently, and every quantity is recomputed from the same resample, so
the intervals carry the sampling noise of all the sets a quantity uses. The slopes of log
variances (``rho_v``, ``mu``, pooled ``h2_log_var``) instead have a t interval whose standard
error is the jackknife over the regression's caption-axis pairs
(:func:`~validate.noisy_regression.pair_jackknife_se`): their noise is that of log variances,
which the bootstrap understates when the traits' tails are heavy; pooled ``h2_mean`` has a
normal interval from the bootstrap's spread.
Iteration ``-1`` rows pool all iterations. :func:`finetune_noise` measures the spread of
the caption means of K finetunes of one training set, in within-caption SDs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import ndtri, stdtrit

from qtm.random import check_random_state
from validate.errors import ValidateError
from validate.intervals import bca_interval
from validate.noisy_regression import jackknife_se, line, origin_slope, pair_jackknife_se, pair_left_out
from validate.statistics import ALL_CAPTIONS, MIN_GROUP_SIZE

#: ``caption`` of the rows that describe the unconditional branch (it has no caption).
UNCOND = "(uncond)"
#: ``iteration`` of the rows pooled over all iterations.
ALL_ITERATIONS = -1
COLUMNS = ("run", "cfg", "caption", "axis", "iteration", "quantity", "value", "lo", "hi")
#: The pooled h2's intervals. The slope of log variances takes the jackknife's (see pair_jackknife_se); h2_mean a
#: normal one from the bootstrap's spread: the resamples' S also carries the guided set's resampling noise, which
#: its correction does not subtract, so they scatter about a slope nearer 0 than the point's, and BCa reads that
#: as a bias and shifts the interval away (on development seeds BCa covered 90.5-94.3 %, the normal 92.7-95.7 %).
_H2_INTERVALS = {"h2_mean": "normal", "h2_log_var": "jackknife"}


@dataclass
class TraitSet:
    """Trait coordinates ``traits`` (n, k) of one image set and each image's caption ("" without one)."""

    traits: np.ndarray
    captions: np.ndarray

    def __post_init__(self):
        self.traits = np.atleast_2d(np.asarray(self.traits, dtype=float))
        self.captions = np.asarray([str(c) for c in self.captions])
        if len(self.captions) != len(self.traits):
            raise ValidateError(f"{len(self.traits)} trait rows but {len(self.captions)} captions")


@dataclass
class RunTraits:
    """The image sets of one run that the decomposition reads, by iteration.

    ``guided`` are the run's own images; ``cfg1`` and ``uncond`` the same models sampled at
    CFG 1 and with the empty prompt. ``guided_is_cfg1``: the run itself sampled at CFG 1
    (constant schedule), so its images are its CFG-1 samples and ``S`` is zero by construction.
    """

    run: str
    cfg: float
    guided: dict[int, TraitSet]
    cfg1: dict[int, TraitSet]
    uncond: dict[int, TraitSet] = field(default_factory=dict)
    data: TraitSet | None = None
    base_cond: TraitSet | None = None
    base_uncond: TraitSet | None = None
    finetune: str = "base"
    real_fraction: float = 0.0
    guided_is_cfg1: bool = False


class _Moments:
    """Per-caption and pooled moments of one set, row 0 the point estimate, rows 1.. bootstrap resamples.

    With ``rng`` None, rows 1.. are the jackknife instead, one image left out per row (in the order of the
    caption groups, whose row ranges ``strata`` holds); with ``n_boot`` 0, row 0 alone.
    """

    def __init__(self, sample: TraitSet, captions: list[str], n_boot: int, rng: np.random.Generator | None):
        x = sample.traits - sample.traits.mean(axis=0)  # centred: the sums of squares stay well conditioned
        shift = sample.traits.mean(axis=0)
        k = x.shape[1]
        groups = _groups(sample.captions, captions)
        rows = 1 + (sum(len(index) for index in groups.values()) if rng is None else n_boot)
        self.mean = np.full((rows, len(captions), k), np.nan)
        self.var = np.full_like(self.mean, np.nan)
        sizes, fourth, squared = np.zeros(len(captions)), np.zeros(k), np.zeros(k)
        self.strata, offset = [], 1
        total_n, total_s, total_q = np.zeros((rows, 1)), np.zeros((rows, k)), np.zeros((rows, k))
        for c, index in groups.items():
            n = len(index)
            if rng is None:  # leave-one-out rows of this group (closed form); the other groups' rows keep all
                self.strata.append(slice(offset, offset + n))
                offset += n
                size = np.full((rows, 1), float(n))
                size[self.strata[-1]] -= 1
                sums = np.broadcast_to(x[index].sum(axis=0), (rows, k)).copy()
                squares = np.broadcast_to((x[index] ** 2).sum(axis=0), (rows, k)).copy()
                sums[self.strata[-1]] -= x[index]
                squares[self.strata[-1]] -= x[index] ** 2
            else:
                counts = np.vstack([np.ones(n), rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)])
                size = counts.sum(axis=1, keepdims=True)
                sums, squares = counts @ x[index], counts @ x[index] ** 2
            total_n, total_s, total_q = total_n + size, total_s + sums, total_q + squares
            if c is not None and n >= MIN_GROUP_SIZE:  # fewer: no per-caption moments (NaN), as in statistics
                self.mean[:, c] = shift + sums / size
                self.var[:, c] = (squares - sums**2 / size) / (size - 1)
                deviations = x[index] - x[index].mean(axis=0)
                second = (deviations**2).mean(axis=0)
                sizes[c], fourth, squared = n, fourth + (deviations**4).sum(axis=0), squared + n * second**2
        if total_n[0, 0] < 2:
            raise ValidateError("an image set of the decomposition has fewer than 2 images")
        self.pooled_mean = shift + total_s / total_n
        self.pooled_var = (total_q - total_s**2 / total_n) / (total_n - 1)
        # The sampling variance of each caption's ln var, 2/(n-1) + kurtosis/n (the excess kurtosis pooled over
        # captions, per axis): the noise a set's log variances carry into a regression (noisy_regression.line).
        with np.errstate(invalid="ignore", divide="ignore"):
            excess = fourth / squared - 3.0
            noise = 2.0 / (sizes[:, None] - 1.0) + excess[None, :] / sizes[:, None]
        self.log_var_noise = np.where(sizes[:, None] >= MIN_GROUP_SIZE, np.maximum(noise, 0.0), np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.mean_noise = self.var[0] / sizes[:, None]  # each caption's sampling variance of its mean

    def point(self) -> _Moments:
        """The point estimate alone (row 0), which broadcasts against any other set's rows."""
        point = object.__new__(_Moments)
        point.mean, point.var, point.strata = self.mean[:1], self.var[:1], []
        point.pooled_mean, point.pooled_var = self.pooled_mean[:1], self.pooled_var[:1]
        point.log_var_noise, point.mean_noise = self.log_var_noise, self.mean_noise
        return point


def _groups(labels: np.ndarray, captions: list[str]) -> dict:
    """Image indices per caption position; images of captions not in ``captions`` under key None."""
    out = {}
    for label in np.unique(labels):
        index = np.flatnonzero(labels == label)
        key = captions.index(label) if label in captions else None
        out[key] = np.concatenate([out[key], index]) if key in out else index
    return out


def _mixture(a: _Moments, b: _Moments, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-caption moments of a set that is ``a`` with the fraction ``fraction`` replaced by ``b``."""
    mean = (1 - fraction) * a.mean + fraction * b.mean
    var = (1 - fraction) * a.var + fraction * b.var + fraction * (1 - fraction) * (a.mean - b.mean) ** 2
    return mean, var


def _pooled_mixture(a: _Moments, b: _Moments, fraction: float) -> np.ndarray:
    return (1 - fraction) * a.pooled_mean + fraction * b.pooled_mean


def decompose(runs: list[RunTraits], *, n_boot: int = 200, level: float = 0.95, random_state=None) -> pd.DataFrame:
    """The decomposition of every run's iterations as a tidy table (see the module docstring).

    Parameters
    ----------
    runs : list of RunTraits
    n_boot : int
        Bootstrap resamples (0: no intervals, ``lo`` and ``hi`` NaN).
    level : float
        Coverage of the percentile intervals.
    random_state : int or Generator, optional

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COLUMNS`: ``caption`` is a caption, ``(all)`` (pooled over captions)
        or ``(uncond)``; ``axis`` -1 for pooled over axes; ``iteration`` -1 for pooled over iterations.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> def sample(shift):
    ...     return TraitSet(rng.standard_normal((400, 1)) + shift, ["a", "b"] * 200)
    >>> run = RunTraits("r", 3.0, guided={0: sample(1.0)}, cfg1={0: sample(0.0), 1: sample(0.5)})
    >>> table = decompose([run], n_boot=0)
    >>> row = table[(table.quantity == "h2_mean") & (table.caption == "(all)") & (table.iteration == 0)]
    >>> round(float(row.value.iloc[0]), 1)
    0.5
    """
    rng = check_random_state(random_state)
    rows = []
    for run in runs:
        # A resample of identical images has a zero variance: its log is -inf, left out of the intervals.
        with np.errstate(divide="ignore", invalid="ignore"):
            rows += _decompose_run(run, n_boot, level, rng)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _decompose_run(run: RunTraits, n_boot: int, level: float, rng) -> list[dict]:
    captions = sorted({c for s in run.cfg1.values() for c in s.captions.tolist()} - {""})
    if not captions:
        raise ValidateError(f"{run.run}: the CFG-1 samples have no captions; the decomposition is per caption")
    # Measured in the order the bootstrap draws have always been made.
    sets = {("cfg1", t): s for t, s in sorted(run.cfg1.items())}
    if not run.guided_is_cfg1:
        sets.update({("guided", t): s for t, s in sorted(run.guided.items())})
    sets.update({("uncond", t): s for t, s in sorted(run.uncond.items())})
    sets.update({name: getattr(run, name) for name in ("data", "base_cond", "base_uncond")})
    sets = {name: sample for name, sample in sets.items() if sample is not None}
    moments = {name: _Moments(sample, captions, n_boot, rng) for name, sample in sets.items()}
    entries = _quantities(run, moments, captions)
    jackknives = [[] for _ in entries]
    if n_boot:
        # The jackknife of the BCa acceleration: one set's images left out one at a time, the other sets whole.
        points = {name: m.point() for name, m in moments.items()}
        for name, sample in sets.items():
            left_out = _Moments(sample, captions, 0, None)
            found_all = _quantities(run, {**points, name: left_out}, captions, standard_errors=False)
            for found, jackknife in zip(found_all, jackknives, strict=True):
                if len(found["values"]) > 1:
                    jackknife += [found["values"][stratum] for stratum in left_out.strata]
    return [row for entry, jack in zip(entries, jackknives, strict=True) for row in _rows(run, entry, jack, level)]


def _rows(run: RunTraits, entry: dict, jackknife: list, level: float) -> list[dict]:
    """Rows of one quantity with their intervals (NaN where under 90% of the resamples give a finite value).

    The entry's ``interval``: None for BCa, ``"normal"`` for the point plus or minus z times the resamples' SD,
    or (standard error, pairs) from :func:`~validate.noisy_regression.pair_jackknife_se` for a t interval with
    pairs - 1 degrees of freedom.
    """
    values = entry["values"]
    boot = values[1:]
    if entry["interval"] is None:
        low, high = bca_interval(values[0], boot, jackknife, level=level)
    else:
        half = _half_width(entry["interval"], boot, level)
        low, high = values[0] - half, values[0] + half
    if entry["exact"]:
        low = high = values[0]
    else:
        enough = len(boot) > 0 and np.isfinite(boot).sum(axis=0) >= 0.9 * len(boot)
        low, high = np.where(enough, low, np.nan), np.where(enough, high, np.nan)
    return [
        {
            "run": run.run,
            "cfg": run.cfg,
            "caption": name,
            "axis": a if entry["axis"] is None else entry["axis"],
            "iteration": entry["iteration"],
            "quantity": entry["quantity"],
            "value": float(values[0, c, a]),
            "lo": float(low[c, a]),
            "hi": float(high[c, a]),
        }
        for c, name in enumerate(entry["names"])
        for a in range(values.shape[2])
    ]


def _half_width(interval, boot, level: float):
    """Half the length of a symmetric interval: ``"normal"``, z times the resamples' SD; (standard error, pairs),
    Student's t with pairs - 1 degrees of freedom times the standard error."""
    if interval == "normal":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # no finite resample: NaN
            return ndtri((1 + level) / 2) * np.nanstd(boot, axis=0, ddof=1)
    se, pairs = interval
    return stdtrit(pairs - 1, (1 + level) / 2) * se if pairs > 1 else np.nan


def _quantities(run: RunTraits, moments: dict, captions: list[str], *, standard_errors: bool = True) -> list[dict]:
    """Every quantity of the decomposition, each with its values (rows, captions, axes) from the sets' moments;
    without ``standard_errors`` (the leave-one-out passes of BCa's acceleration) no jackknife over pairs."""
    out = []

    def emit(quantity, iteration, values, *, caption=None, axis=None, exact=False, interval=None):
        """One quantity: values (B+1,) pooled, (B+1, k) per axis or (B+1, C, k) per caption and axis; ``interval``
        as :func:`_rows` reads it."""
        values = np.asarray(values, dtype=float)
        if values.ndim == 1:
            values = values[:, None, None]
        elif values.ndim == 2:
            values = values[:, None, :]
        names = captions if values.shape[1] == len(captions) and caption is None else [caption or ALL_CAPTIONS]
        out.append(
            {"quantity": quantity, "iteration": iteration, "values": values, "names": names, "axis": axis,
             "exact": exact, "interval": interval}
        )

    block = len(captions) * next(iter(moments.values())).mean.shape[2]  # a regression's points per iteration

    def jackknife(statistic, x, y, noise):
        return pair_jackknife_se(statistic, x, y, noise, block) if standard_errors else None

    def emit_slope(quantity, iteration, x, y, noise=None, interval=None):
        if interval == "jackknife":
            interval = jackknife(origin_slope, x, y, noise)
        emit(quantity, iteration, origin_slope(x, y, noise), caption=ALL_CAPTIONS, axis=-1, interval=interval)

    def emit_line(iteration, x, y, noise):
        slope, intercept = line(x, y, noise)
        left_out = pair_left_out(line, x, y, noise, block) if standard_errors else None
        for name, value, index in (("rho_v", slope, 0), ("mu", intercept, 1)):
            interval = None if left_out is None else jackknife_se(left_out[index] if left_out.ndim == 2 else left_out)
            emit(name, iteration, value, caption=ALL_CAPTIONS, axis=-1, interval=interval)

    cfg1 = {key[1]: m for key, m in moments.items() if key[:1] == ("cfg1",)}
    guided = cfg1 if run.guided_is_cfg1 else {key[1]: m for key, m in moments.items() if key[:1] == ("guided",)}
    uncond = {key[1]: m for key, m in moments.items() if key[:1] == ("uncond",)}
    data, base_cond, base_uncond = (moments.get(name) for name in ("data", "base_cond", "base_uncond"))
    selection, response, inherit_x, inherit_y, var_x, var_y, var_noise, uncond_x, uncond_y = ([] for _ in range(9))
    selection_noise = []  # per selection: the CFG-1 set's sampling variance of its means and ln variances
    for t in cfg1:
        if t in guided:
            s_mean = guided[t].mean - cfg1[t].mean
            s_log = np.log(guided[t].var) - np.log(cfg1[t].var)
            emit("S_mean", t, s_mean, exact=run.guided_is_cfg1)
            emit("S_log_var", t, s_log, exact=run.guided_is_cfg1)
        if t + 1 in cfg1:
            r_mean = cfg1[t + 1].mean - cfg1[t].mean
            r_log = np.log(cfg1[t + 1].var) - np.log(cfg1[t].var)
            emit("R_mean", t, r_mean)
            emit("R_log_var", t, r_log)
            if t in guided and not run.guided_is_cfg1:
                with np.errstate(divide="ignore", invalid="ignore"):
                    emit("h2_mean", t, r_mean / s_mean)
                    emit("h2_log_var", t, r_log / s_log)
                noise = (cfg1[t].mean_noise[None], cfg1[t].log_var_noise[None])
                emit_slope("h2_mean", t, s_mean, r_mean, noise[0], _H2_INTERVALS["h2_mean"])
                emit_slope("h2_log_var", t, s_log, r_log, noise[1], _H2_INTERVALS["h2_log_var"])
                selection.append((s_mean, s_log))
                response.append((r_mean, r_log))
                selection_noise.append(noise)
        if t in uncond and base_uncond is not None:
            emit("uncond_drift_mean", t, uncond[t].pooled_mean - base_uncond.pooled_mean, caption=UNCOND)
            drift = np.log(uncond[t].pooled_var) - np.log(base_uncond.pooled_var)
            emit("uncond_drift_log_var", t, drift, caption=UNCOND)
        # The training set D_t and the prior the finetuning starts from.
        source = data if t == 0 else guided.get(t - 1)
        if source is None or (t > 0 and run.real_fraction > 0 and data is None):
            continue
        mixed = run.real_fraction if t > 0 and data is not None else 0.0
        train_mean, train_var = _mixture(source, data, mixed) if mixed else (source.mean, source.var)
        continuing = run.finetune == "continue" and t > 0 and t - 1 in cfg1
        prior = cfg1[t - 1] if continuing else base_cond
        if prior is not None:
            x, y = train_mean - prior.mean, cfg1[t].mean - prior.mean
            emit_slope("rho", t, x, y)
            lx, ly = np.log(train_var) - np.log(prior.var), np.log(cfg1[t].var) - np.log(prior.var)
            emit_line(t, lx, ly, prior.log_var_noise)
            inherit_x.append(x), inherit_y.append(y), var_x.append(lx), var_y.append(ly)
            var_noise.append(prior.log_var_noise[None])
        prior_u = uncond.get(t - 1) if continuing else base_uncond
        if t in uncond and prior_u is not None:
            pooled = _pooled_mixture(source, data, mixed) if mixed else source.pooled_mean
            x, y = pooled - prior_u.pooled_mean, uncond[t].pooled_mean - prior_u.pooled_mean
            emit("rho_u", t, origin_slope(x, y), caption=ALL_CAPTIONS, axis=-1)
            uncond_x.append(x), uncond_y.append(y)

    def joined(parts):
        rows = max(len(p) for p in parts)  # a jackknife pass: the sets left whole have one row
        return np.concatenate([np.broadcast_to(p, (rows, *p.shape[1:])).reshape(rows, -1) for p in parts], axis=1)

    if selection:
        for i, name in enumerate(("h2_mean", "h2_log_var")):
            s, r = joined([p[i] for p in selection]), joined([p[i] for p in response])
            emit_slope(name, ALL_ITERATIONS, s, r, joined([p[i] for p in selection_noise]), _H2_INTERVALS[name])
    if inherit_x:
        emit_slope("rho", ALL_ITERATIONS, joined(inherit_x), joined(inherit_y))
        emit_line(ALL_ITERATIONS, joined(var_x), joined(var_y), joined(var_noise))
    if uncond_x:
        emit("rho_u", ALL_ITERATIONS, origin_slope(joined(uncond_x), joined(uncond_y)), caption=ALL_CAPTIONS, axis=-1)
    return out


def finetune_noise(
    replicates: list[TraitSet],
    *,
    run: str = "",
    iteration: int = 0,
    n_boot: int = 200,
    level: float = 0.95,
    random_state=None,
) -> pd.DataFrame:
    """Spread of the caption means of K finetunes of one training set, in within-caption SDs.

    ``replicates`` are the CFG-1 samples of K models finetuned on the same data with K
    seeds. Per caption and axis: ``finetune_noise_mean`` is the SD across the K models of
    the caption mean over the within-caption SD (mean over the models of their variance);
    ``finetune_noise_excess`` the same after subtracting the sampling variance of a mean
    (``v / n``), i.e. the finetuning-seed noise alone (0 where sampling explains it all);
    ``finetune_noise_log_var`` the SD across the models of the log variance. Pooled rows
    (``caption`` ``(all)``, ``axis`` -1) are the root of the mean square over captions and axes, taken before the
    excess's clip at 0. The mean's and the excess's intervals are basic bootstrap intervals, the resamples'
    deviations from the value of the world resampled reflected about the point (Davison and Hinkley 1997, section
    5.2), in a world whose models' caption means are shrunk toward their centre until their spread is the estimated
    between-model variance, as they shrink group means for hierarchical data (ibid. section 3.8): resampling the raw
    means adds their sampling noise to that spread, and the percentile intervals were 1.25 times too wide and, biased
    up by the resampled variances' divisor, covered 0.885 with t5 traits (benchmarks/interval_calibration.py). An
    excess of 0 (clipped) has nothing to reflect about and keeps the percentiles, as does the log variance, whose
    resamples are less the sampling noise that resampling adds.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> sets = [TraitSet(rng.standard_normal((2000, 1)) + 0.3 * rng.standard_normal(), ["a"] * 2000)
    ...         for _ in range(8)]
    >>> table = finetune_noise(sets, n_boot=0)
    >>> excess = table[(table.quantity == "finetune_noise_excess") & (table.caption == "(all)")]
    >>> 0.1 < float(excess.value.iloc[0]) < 0.6
    True
    """
    if len(replicates) < 2:
        raise ValidateError("finetuning-seed noise needs at least 2 finetunes of the same data")
    rng = check_random_state(random_state)
    captions = sorted({c for s in replicates for c in s.captions.tolist()} - {""})
    if not captions:
        raise ValidateError("the finetune replicates have no captions; the noise is measured per caption")
    moments = [_Moments(s, captions, n_boot, rng) for s in replicates]
    mean = np.stack([m.mean for m in moments])  # (K, B+1, C, k)
    var = np.stack([m.var for m in moments])
    sizes = np.stack([[np.sum(s.captions == c) for c in captions] for s in replicates])  # (K, C)
    within = var.mean(axis=0)
    sampling = (var / sizes[:, None, :, None]).mean(axis=0)
    # The world resampled: each model's resampled means scatter about its mean shrunk toward the models' centre, so
    # that their spread is the estimated between-model variance; its variances have the divisor n.
    centre, raw = mean[:, :1].mean(axis=0), mean[:, 0].var(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.clip(raw - sampling[0], 0, None)
        shrunk = centre + np.sqrt(np.where(raw > 0, between / raw, 0.0)) * (mean[:, :1] - centre)
        spread = np.concatenate([raw[None], (shrunk + mean[:, 1:] - mean[:, :1]).var(axis=0, ddof=1)])
        world = [(var[:, 0] * (sizes[..., None] - 1) / sizes[..., None] ** p).mean(axis=0) for p in (1, 2)]
        worlds = {"finetune_noise_mean": (between + world[1]) / world[0], "finetune_noise_excess": between / world[0]}
    # What resampling adds: a resample's ln variances carry the sampling noise once more than the point's.
    added = np.arange(len(spread))[:, None, None] > 0
    log_noise = np.mean([m.log_var_noise for m in moments], axis=0)
    # A resample of identical images has no variance: its ratios are NaN and left out of the intervals.
    with np.errstate(divide="ignore", invalid="ignore"):
        within = np.where(within > 0, within, np.nan)
        log_var = np.log(np.where(var > 0, var, np.nan))
        squared = {
            "finetune_noise_mean": spread / within,
            "finetune_noise_excess": (spread - sampling) / within,
            "finetune_noise_log_var": log_var.var(axis=0, ddof=1) - added * log_noise,
        }
    tail, rows = 100 * (1 - level) / 2, []
    for quantity, squares in squared.items():
        value = np.sqrt(np.clip(squares, 0, None))
        # Pooled before the clip at 0: clipping each caption's excess first biased the pooled value upward.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a row without any finite value: NaN
            pooled = np.sqrt(np.clip(np.nanmean(squares.reshape(len(squares), -1), axis=1), 0, None))
            centres = worlds.get(quantity, np.full(squares.shape[1:], np.nan))
            pooled_centre = np.sqrt(np.clip(np.nanmean(centres), 0, None))
        centres = np.sqrt(np.clip(centres, 0, None))
        parts = [(c, a, value[:, i, a], centres[i, a]) for i, c in enumerate(captions) for a in range(value.shape[2])]
        for caption, axis, column, centre in [*parts, (ALL_CAPTIONS, -1, pooled, pooled_centre)]:
            boot = column[1:][np.isfinite(column[1:])]
            enough = n_boot and len(boot) >= 0.9 * n_boot
            low, high = np.percentile(boot, [tail, 100 - tail]) if enough else (np.nan, np.nan)
            if quantity in worlds and column[0] > 0:  # basic: deviations from the world's value, reflected
                low, high = max(column[0] - (high - centre), 0.0), column[0] - (low - centre)
            low, high = min(low, column[0]), max(high, column[0])
            rows.append(
                {
                    "run": run,
                    "cfg": 1.0,
                    "caption": caption,
                    "axis": axis,
                    "iteration": iteration,
                    "quantity": quantity,
                    "value": float(column[0]),
                    "lo": float(low),
                    "hi": float(high),
                }
            )
    return pd.DataFrame(rows, columns=list(COLUMNS))
