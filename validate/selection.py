"""The selection curve: the selection differential S(w) of each model, measured at several CFG values and
predicted by the sampler's exact law with no free parameter.

For the base model and each iteration's model of a run, per caption and trait axis:

- measured: ``S(w) = stat(w) - stat(1)`` on the mean and on the log variance, from the samples at peak CFG ``w``
  (``RUN/selection/<model>/cfg-<w>``) and the CFG-1 samples they are paired with (the same caption and seed;
  :mod:`qtm.rundir`). The pairs are resampled together (a paired bootstrap within the caption), so the 95 %
  percentile intervals carry the noise of the difference, not of two independent sets;
- predicted: ``p_c = N(m_c, v_c)`` from all of the caption's CFG-1 samples, ``p_u = N(m_u, v_u)`` from the model's
  unconditional samples (pooled: the empty prompt has no caption), both pushed through
  :func:`qtm.sampler_map.prepare_sampler` with the run's sampler, steps, CFG schedule shape and the backend's
  scheduler configuration (``RUN/selection/law.json``); ``S = law(w) - law(1)``. Each axis is centred on ``m_u``
  and measured in units of ``sqrt(v_u)`` first, so that the sampler sees unit-scale data, as a diffusion model
  does (the fit's convention, :mod:`validate.transition`). The law is for one Gaussian per independent axis; the
  trait axes are the features stage's standardised, projected axes.

Rows with caption ``(within)`` average the per-caption values over captions (their intervals from the same
resamples). :mod:`validate.selection_fit` scores the law against the measurement and chooses the one shared
correction; :mod:`validate.selection_report` draws and describes it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from qtm.errors import QTMError, RunDirectoryError
from qtm.mixture_law import mixture_law
from qtm.params import NETWORK_SAMPLERS, PARAMETERS
from qtm.random import check_random_state, derive_seed
from qtm.rundir import (
    SELECTION_FOLDER,
    SELECTION_LAW_FILE,
    ImageSet,
    Run,
    read_json,
    read_samples,
    read_selection,
    sampled_at_cfg1,
)
from qtm.sampler_map import prepare_sampler
from qtm.schedules import CFGSchedule
from qtm.solvers import SchedulerConfig
from validate.cache import embed_image_set
from validate.errors import ValidateError
from validate.features import CACHE_FOLDER, Features
from validate.runs import run_columns
from validate.statistics import MIN_GROUP_SIZE, WITHIN_CAPTIONS, group_indices

#: The CFG values of ``chain validate --selection-curve`` when none are given.
DEFAULT_CFGS = (1.5, 2.0, 3.0, 5.0, 7.5, 10.0)
#: The stream tag of the selection curve's bootstrap (qtm.random.derive_seed).
SELECTION_TAG = 0x5E1D
STATISTICS = ("mean", "log_var")
#: Particles per caption and CFG value of the mixture law: its S on ln var then has a Monte Carlo SD under
#: sqrt(2 / 1000) = 0.045 (less: every w starts from the same noise), far under the measured S's sampling error
#: (0.3-0.6 per caption from a few pairs). A model of 10 captions, 3 axes, 25 steps and 6 values of w: 6.9 s
#: on 2 loaded cores (4000 particles: 25 s).
MIXTURE_PARTICLES = 1000


def parse_cfgs(value) -> tuple[float, ...]:
    """The CFG values of the curve from ``"1.5,2,3"`` or a sequence: each > 0, none repeated.

    Examples
    --------
    >>> parse_cfgs("1.5, 2,10")
    (1.5, 2.0, 10.0)
    >>> parse_cfgs("2,3,2")
    Traceback (most recent call last):
    ...
    validate.errors.ValidateError: --selection-cfg: w = 2 is given twice; give each CFG value once
    """
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    cfgs = []
    for part in parts:
        try:
            w = float(part)
        except (TypeError, ValueError):
            raise ValidateError(f"--selection-cfg: {part!r} is not a number; give CFG values like 1.5,2,3") from None
        if not (w > 0 and math.isfinite(w)):
            raise ValidateError(f"--selection-cfg: w = {part} must be a finite number > 0")
        if w in cfgs:
            raise ValidateError(f"--selection-cfg: w = {w:g} is given twice; give each CFG value once")
        cfgs.append(w)
    if not cfgs:
        raise ValidateError("--selection-cfg: give at least one CFG value, e.g. 1.5,2,3,5,7.5,10")
    return tuple(cfgs)


@dataclass(frozen=True)
class SamplerLaw:
    """The sampler a run's selection samples were drawn with: what the exact law needs."""

    sampler: str
    steps: int
    schedule: str
    scheduler: SchedulerConfig
    source: str

    @classmethod
    def of_run(cls, run: Run) -> SamplerLaw:
        """From ``RUN/selection/law.json`` (chain writes it), else run.json with SD v1.5's scheduler."""
        params, path = run.params, run.path / SELECTION_FOLDER / SELECTION_LAW_FILE
        law = read_json(path) if path.exists() else {}
        try:
            if not isinstance(law, dict):
                raise QTMError("must hold a JSON object")
            schedule = str(law.get("schedule", params.get("schedule", "constant") or "constant"))
            CFGSchedule.parse(schedule)
            return cls(
                sampler=PARAMETERS["sampler"].check(law.get("sampler", params.get("sampler", "ddim"))),
                steps=PARAMETERS["steps"].check(law.get("steps", params.get("steps", 50) or 50)),
                schedule=schedule,
                scheduler=SchedulerConfig(**law["scheduler"]) if "scheduler" in law else SchedulerConfig(),
                source=SELECTION_LAW_FILE if law else "run.json (scheduler: SD v1.5's default)",
            )
        except (QTMError, TypeError, AttributeError) as error:  # a damaged or edited law.json
            raise RunDirectoryError(
                f"{path}: {' '.join(str(error).split())}; the file is damaged: delete {path.parent} and rerun "
                "chain validate --selection-curve to make it again"
            ) from None


def predicted_selection(cond_mean, cond_var, uncond_mean, uncond_var, cfgs, *, law: SamplerLaw,
                        trait_scale: float = 1.0, guidance: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Predicted ``S(w)`` on the mean and on the log variance, shape ``(*model shape, len(cfgs))``.

    ``trait_scale`` multiplies the unit each axis is measured in (``sqrt(v_u)``) and ``guidance`` the guidance
    above 1 (``w_eff = 1 + guidance (w - 1)``): both 1 is the law with no free parameter; either is the one
    shared correction of :mod:`validate.selection_fit`.

    Examples
    --------
    >>> law = SamplerLaw("ddim", 50, "constant", SchedulerConfig(), "example")
    >>> s_mean, s_log = predicted_selection(1.0, 0.5, 0.0, 1.0, [1.0, 7.5], law=law)
    >>> round(float(s_mean[0]), 6), bool(s_log[1] < -4)
    (0.0, True)
    """
    model = [np.asarray(part, dtype=float)[..., None] for part in (cond_mean, cond_var, uncond_mean, uncond_var)]
    cond_mean, cond_var, uncond_mean, uncond_var = model
    unit = trait_scale * np.sqrt(uncond_var)
    w = np.concatenate([[1.0], 1.0 + guidance * (np.asarray(cfgs, dtype=float) - 1.0)])
    prepared = prepare_sampler(law.sampler, cfg=w, schedule=CFGSchedule.parse(law.schedule), steps=law.steps,
                               scheduler=law.scheduler)
    out = prepared.moments((cond_mean - uncond_mean) / unit, cond_var / unit**2, 0.0, uncond_var / unit**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_var = np.log(out.var)
    return (out.mean[..., 1:] - out.mean[..., :1]) * unit, log_var[..., 1:] - log_var[..., :1]


def mixture_selection(cond_mean, cond_var, cfgs, *, law: SamplerLaw, particles: int = MIXTURE_PARTICLES,
                      separation: float = 1.0, trait_scale: float = 1.0,
                      random_state=None) -> tuple[np.ndarray, np.ndarray]:
    """``S(w)`` on the mean and the log variance with p_u the mixture of the captions' Gaussians, (C, k, W).

    Caption c's p_c is its Gaussian (``cond_mean[c]``, ``cond_var[c]``, diagonal over the k axes); p_u is the
    equal-weight mixture of all C captions' Gaussians, in units of the mixture's SD per axis (as the Gaussian law's
    are of ``sqrt(v_u)``). No free parameter: see :mod:`qtm.mixture_law` for why the mixture's bounded posterior
    makes selection saturate with w where a single Gaussian p_u does not.

    ``separation`` multiplies the captions' distances from the mixture's centre and ``trait_scale`` the unit the
    axes are measured in (the mean's ``S`` comes back divided by ``separation``, in the captions' own distances):
    both 1 is the law with no free parameter; either is a shared correction tried by ``tools/mixture_corrections.py``.

    Examples
    --------
    >>> law = SamplerLaw("ddim", 20, "constant", SchedulerConfig(), "example")
    >>> s_mean, s_log = mixture_selection([[-2.0], [2.0]], [[0.5], [0.5]], [3.0, 10.0], law=law, random_state=0)
    >>> s_log.shape, bool(s_log[0, 0, 1] > 2 * s_log[0, 0, 0])  # saturates: w = 10 selects < twice w = 3
    ((2, 1, 2), True)
    """
    cond_mean, cond_var = np.asarray(cond_mean, dtype=float), np.asarray(cond_var, dtype=float)
    captions = cond_mean.shape[0]
    mix_mean = cond_mean.mean(axis=0)
    unit = np.sqrt((cond_var + cond_mean**2).mean(axis=0) - mix_mean**2) * trait_scale
    means, variances = separation * (cond_mean - mix_mean) / unit, cond_var / unit**2  # (C, k)
    every = (captions, captions, means.shape[1])  # each caption's p_u: all C components
    out = mixture_law(np.ones((captions, 1)), means[:, None], variances[:, None],
                      np.full((captions, captions), 1.0 / captions), np.broadcast_to(means, every),
                      np.broadcast_to(variances, every), cfg=[1.0, *cfgs], schedule=law.schedule,
                      sampler=law.sampler, steps=law.steps, scheduler=law.scheduler, particles=particles,
                      random_state=random_state)
    mean, log_var = out.mean.transpose(0, 2, 1) * unit[:, None] / separation, np.log(out.var).transpose(0, 2, 1)
    return mean[..., 1:] - mean[..., :1], log_var[..., 1:] - log_var[..., :1]


def paired_selection(at_w, at_one, captions, *, n_boot: int, random_state) -> dict[str, np.ndarray]:
    """``S`` on the mean and the log variance per caption and axis, point and paired bootstrap resamples.

    ``at_w`` and ``at_one`` are (m, k) trait arrays whose rows pair (the same caption and seed). Returns arrays
    (n_boot + 1, captions, k), row 0 the point estimate, captions in sorted order.

    Examples
    --------
    >>> x = np.arange(6.0)[:, None]
    >>> out = paired_selection(2 * x, x, ["a"] * 3 + ["b"] * 3, n_boot=0, random_state=0)
    >>> out["mean"][0, :, 0].tolist(), np.round(out["log_var"][0, :, 0], 4).tolist()
    ([1.0, 4.0], [1.3863, 1.3863])
    """
    rng = check_random_state(random_state)
    at_w, at_one = np.asarray(at_w, dtype=float), np.asarray(at_one, dtype=float)
    groups = group_indices(captions, what="selection samples")
    shape = (n_boot + 1, len(groups), at_w.shape[1])
    out = {name: np.full(shape, np.nan) for name in STATISTICS}
    for c, index in enumerate(groups.values()):
        n = len(index)
        counts = np.vstack([np.ones(n), rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)])
        moments = []
        for x in (at_w[index], at_one[index]):
            centre = x.mean(axis=0)
            sums = counts @ (x - centre)
            moments.append((centre + sums / n, (counts @ (x - centre) ** 2 - sums**2 / n) / (n - 1)))
        (mean_w, var_w), (mean_1, var_1) = moments
        out["mean"][:, c] = mean_w - mean_1
        with np.errstate(divide="ignore", invalid="ignore"):  # a resample of one repeated image: no variance
            out["log_var"][:, c] = np.log(var_w) - np.log(var_1)
    return out


@dataclass
class SelectionCurve:
    """What the selection stage measured and predicted; :mod:`validate.selection_fit` adds the scores."""

    table: pd.DataFrame
    cfgs: tuple[float, ...]
    laws: dict[str, SamplerLaw]
    notes: list[str] = field(default_factory=list)
    scores: pd.DataFrame | None = None
    candidates: pd.DataFrame | None = None
    correction: dict | None = None


def selection_stage(runs: list[Run], features: Features, model, *, cfgs, n_boot: int, seed: int,
                    progress=None) -> SelectionCurve:
    """The selection curve of every run with selection samples (see the module docstring); the samples are
    embedded with the features stage's embedder (cached) and projected on its trait axes."""
    rows, notes, laws = [], [], {}
    for run_index, run in enumerate(runs):
        models = [-1, *run.iterations]
        found = {t: read_selection(run.path, t) for t in models}
        if not any(found.values()):
            notes.append(f"{run.name}: no selection samples (`chain validate --selection-curve` generates them)")
            continue
        laws[run.name] = SamplerLaw.of_run(run)
        for position, t in enumerate(models):
            sets = _model_sets(run, t, found[t])
            missing = [w for w in cfgs if w not in found[t]]
            if sets is None or missing:
                notes.append(f"{run.name} {_model_name(t)}: no selection samples at w = "
                             f"{', '.join(f'{w:g}' for w in missing) or '1 or uncond'}; left out of the curve")
                continue
            traits = {key: _traits(images, features, model, progress) for key, images in sets.items()}
            traits.update({w: _traits(found[t][w], features, model, progress) for w in cfgs})
            rng = np.random.default_rng(derive_seed(seed, SELECTION_TAG, run_index, position))
            try:
                rows += _model_rows(run, t, sets, traits, cfgs, laws[run.name], n_boot, rng)
            except (ValidateError, QTMError) as error:
                notes.append(f"{run.name} {_model_name(t)}: left out of the selection curve: {error}")
    return SelectionCurve(pd.DataFrame(rows), tuple(cfgs), laws, notes)


def _model_name(t: int) -> str:
    return "base model" if t < 0 else f"iteration {t}'s model"


def _model_sets(run: Run, t: int, found: dict) -> dict[str, ImageSet] | None:
    """The CFG-1 and unconditional samples of model ``t`` (-1: base), or None where one is missing."""
    if t < 0:
        sets = {kind: found.get(kind) for kind in ("cfg1", "uncond")}
    else:
        samples = read_samples(run.path, t)
        cfg1 = run.iterations[t] if sampled_at_cfg1(run.params) else samples.get("cfg1")
        sets = {"cfg1": cfg1, "uncond": samples.get("uncond")}
    return None if any(s is None for s in sets.values()) else sets


def _traits(images: ImageSet, features: Features, model, progress) -> tuple[np.ndarray, list[str]]:
    """Trait coordinates of an image set on the features stage's axes, and its captions."""
    total = len(images)

    def advance(done):
        if progress is not None:
            progress(done, total, f"embedding ({model.name}: {images.path.parent.name} {images.path.name})")

    embedded = embed_image_set(images, model, cache_dir=images.path.parent / CACHE_FOLDER, key=images.path.name,
                               advance=advance)
    axes = features.trait_axes
    return axes.project_standardised(axes.standardise(embedded.features)), list(images.captions)


def _paired_rows(captions_w: list[str], captions_1: list[str]) -> np.ndarray:
    """For each image at ``w``, the index of its CFG-1 partner: the caption's ``j``-th image pairs with the ``j``-th."""
    positions: dict[str, list[int]] = {}
    for i, caption in enumerate(captions_1):
        positions.setdefault(caption, []).append(i)
    taken: dict[str, int] = {}
    pairs = []
    for caption in captions_w:
        j = taken.get(caption, 0)
        if j >= len(positions.get(caption, [])):
            raise ValidateError(f"caption {caption!r} has more samples at w than CFG-1 samples to pair them with")
        pairs.append(positions[caption][j])
        taken[caption] = j + 1
    return np.asarray(pairs, dtype=int)


def _model_rows(run, t, sets, traits, cfgs, law, n_boot, rng) -> list[dict]:
    """The rows of one model: per caption (and the within-caption mean), axis and w."""
    cfg1, cfg1_captions = traits["cfg1"]
    uncond = traits["uncond"][0]
    groups = group_indices(cfg1_captions, what=f"{run.name} {_model_name(t)} CFG-1 samples")
    captions = list(groups)
    cond_mean = np.array([cfg1[i].mean(axis=0) for i in groups.values()])  # (C, k)
    cond_var = np.array([cfg1[i].var(axis=0, ddof=1) for i in groups.values()])
    uncond_mean, uncond_var = uncond.mean(axis=0), uncond.var(axis=0, ddof=1)
    if len(uncond) < MIN_GROUP_SIZE:
        raise ValidateError(f"{len(uncond)} unconditional samples; the law's p_u needs at least {MIN_GROUP_SIZE}")
    predicted = predicted_selection(cond_mean, cond_var, uncond_mean, uncond_var, cfgs, law=law)  # (C, k, W)
    # Its own stream (spawned, not drawn from rng): the bootstrap's resamples stay those they were without it.
    mixture = (mixture_selection(cond_mean, cond_var, cfgs, law=law, random_state=rng.spawn(1)[0])
               if law.sampler in NETWORK_SAMPLERS and len(captions) > 1 else None)
    rows = []
    for j, w in enumerate(cfgs):
        at_w, captions_w = traits[w]
        partners = _paired_rows(captions_w, cfg1_captions)
        measured = paired_selection(at_w, cfg1[partners], captions_w, n_boot=n_boot, random_state=rng)
        order = [captions.index(c) for c in sorted(set(captions_w))]
        n_pairs = [int(np.sum(np.asarray(captions_w) == captions[c])) for c in order]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a column of NaN only: NaN
            within = {name: np.nanmean(values, axis=1, keepdims=True) for name, values in measured.items()}
        blocks = [(order, [captions[c] for c in order], measured, n_pairs),
                  (None, [WITHIN_CAPTIONS], within, [len(captions_w)])]
        for pick, names, values, sizes in blocks:
            for c, name in enumerate(names):
                for axis in range(cfg1.shape[1]):
                    row = {**run_columns(run), "iteration": t, "caption": name, "axis": axis, "w": w,
                           "n_pairs": sizes[c]}
                    for statistic in STATISTICS:
                        column = values[statistic][:, c, axis]
                        boot = column[1:][np.isfinite(column[1:])]
                        enough = n_boot and len(boot) >= 0.9 * n_boot
                        low, high = np.percentile(boot, [2.5, 97.5]) if enough else (np.nan, np.nan)
                        law_value = predicted[STATISTICS.index(statistic)][:, axis, j]
                        mixture_value = (mixture[STATISTICS.index(statistic)][:, axis, j] if mixture is not None
                                         else np.full(len(captions), np.nan))
                        row.update({
                            f"S_{statistic}": float(column[0]),
                            f"S_{statistic}_lo": float(low),
                            f"S_{statistic}_hi": float(high),
                            f"predicted_S_{statistic}": float(
                                law_value[pick[c]] if pick is not None else law_value[order].mean()
                            ),
                            f"mixture_S_{statistic}": float(
                                mixture_value[pick[c]] if pick is not None else mixture_value[order].mean()
                            ),
                        })
                    if pick is not None:
                        k = pick[c]
                        row.update(cond_mean=cond_mean[k, axis], cond_var=cond_var[k, axis],
                                   uncond_mean=uncond_mean[axis], uncond_var=uncond_var[axis])
                    rows.append(row)
    return rows
