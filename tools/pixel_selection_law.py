"""The selection law in pixel space: each caption a full-covariance Gaussian, p_u their mixture, the run's exact
guided sampler, and the final clip to the pixel range; the traits measured on the law's particles as on images.

The selection curve's laws (``chain validate RUN --selection-curve``) live in trait space, where the generated
images' pixels cannot be clipped. On the tiny digits chains the selection on the traits' ln var saturates from
CFG 5 on while both trait-space laws keep falling. This law has no free parameter either: per model (the base
model and every iteration's) and caption, the Gaussian of the model's CFG-1 samples in pixel space (the sample
covariance plus ``--ridge`` times the identity: 30 images span less than the 64 pixels), the unconditional model
the equal-weight mixture of the captions' Gaussians, each particle drawn by the run's guided DDIM sampler with the
mixtures' exact denoisers (``RUN/selection/law.json``), then mapped to an image as the backend maps its output
(``(x + 1) / 2`` clipped to [0, 1]; ``--no-clip`` leaves the clip out), embedded by the stats embedder and
projected on the report's trait axes (the standardised within-caption principal components of the run's real
data). ``S = ln var(w) - ln var(1)`` of each caption's particles, on the same starting noise at every w.

It scores the pixel law beside the report's Gaussian and mixture laws against the measured ``S`` of ln var, at
the level of each caption and of the captions' mean per model, axis and w, on all w, w <= 3 and w >= 5 (R² about
the identity line and the slope of measured on predicted, as the report does), and gives the measurement's noise
ceiling: the R² that a law equal to the truth would reach, ``1 - mean(bootstrap variance) / variance of the
measured S`` (from the report's 95 % intervals). It prints the table and writes it with the mean S per w, and
per model and w, to ``--out`` (JSON).

Variants (docs/study.md, "Where it fails"): ``--kernel H``, each caption the mixture of isotropic Gaussians of SD H
at its CFG-1 images (0: the images themselves); ``--uncond samples``, p_u fitted to the model's own unconditional
images; ``--gain G``, the law guided with 1 + G (w - 1); ``--network RIDGE``, both branches the network's own noise
predictions, linearised per step along its CFG-1 trajectories (reads the run's tiny model weights and its cached
base model).

Usage: ``python tools/pixel_selection_law.py REPORT/selection_curve.csv RUN --out FILE [--particles N]``
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from qtm.errors import QTMError
from qtm.io import write_json
from qtm.random import check_random_state
from qtm.rundir import iteration_folder, read_parameters, sampled_at_cfg1, samples_folder
from qtm.sampler_map import ddim_config, step_coefficients
from qtm.solvers import SchedulerConfig
from validate.axes import fit_axes
from validate.embed_stats import image_statistics
from validate.features import _within_caption
from validate.selection_fit import SUBSETS, agreement

LAWS = {"Gaussian p_u (trait space)": "predicted_S_log_var", "mixture p_u (trait space)": "mixture_S_log_var",
        "pixel law": "pixel_S_log_var"}


def read_folder(folder: Path):
    """The images of an image folder as (n, pixels) arrays in the model's range [-1, 1], and their captions."""
    meta = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line.strip()]
    images = [Image.open(folder / row["file_name"]) for row in meta]
    pixels = np.array([np.asarray(image, dtype=float).reshape(-1) / 255.0 for image in images])
    return pixels * 2.0 - 1.0, np.array([row["caption"] for row in meta]), images[0]


def network_backend(run: Path):
    """The run's tiny backend (its base model read from the cache), built from its ``run.json``."""
    from chain.runner import make_backend

    return make_backend(read_parameters(run))


def network_problem(run: Path) -> str | None:
    """Why the network law cannot run on ``run``, or None: it steps the tiny models with a noise-predicting DDIM."""
    try:
        params, law = read_parameters(run), json.loads((run / "selection" / "law.json").read_text())
    except (QTMError, OSError, ValueError) as error:
        return f"{run}: {error}"
    if params.get("backend") != "tiny" or law.get("sampler") != "ddim":
        return f"{run}: the network law needs a tiny-backend run sampled with ddim"
    if law["scheduler"].get("prediction_type", "epsilon") != "epsilon":
        return f"{run}: the network law needs a model that predicts the noise (epsilon)"
    return None


def load_model(backend, run: Path, iteration: int) -> None:
    """Put model ``iteration`` (-1: the base model) into ``backend``."""
    from chain.runner import WEIGHTS_DIR

    if iteration < 0:
        backend.model.load_state_dict(backend.base_state)
    else:
        backend.load_weights(iteration_folder(run, iteration) / WEIGHTS_DIR)


def model_folder(run: Path, iteration: int, kind: str) -> Path:
    """The folder of model ``iteration``'s (-1: the base model's) samples ``kind`` (``cfg1`` or ``uncond``); a run
    that samples at CFG 1 has no ``cfg1`` samples: its iterations' own images are, as validate reads them."""
    if iteration < 0:
        return run / "selection" / "base" / kind
    if kind == "cfg1" and sampled_at_cfg1(read_parameters(run)):
        return iteration_folder(run, iteration)
    return samples_folder(run, iteration, kind)


def mixture_eps(x, components, a, b):
    """The exact noise prediction of a mixture of full-covariance Gaussians ``(weight, mean, vectors, values)``
    at the noise level ``x_t = a x_0 + b noise``, for particles ``x`` (P, d)."""
    log_densities, posterior_means = [], []
    for weight, mean, vectors, values in components:
        spread = a * a * values + b * b
        z = (x - a * mean) @ vectors
        log_densities.append(np.log(weight) - 0.5 * np.sum(z * z / spread + np.log(spread), axis=1))
        posterior_means.append(mean + (a * values / spread * z) @ vectors.T)
    log_densities = np.array(log_densities)
    responsibility = np.exp(log_densities - log_densities.max(axis=0))
    responsibility /= responsibility.sum(axis=0)
    x0 = np.einsum("kp,kpd->pd", responsibility, np.array(posterior_means))
    return (x - a * x0) / b


def kernel_eps(x, points, weights, bandwidth, a, b):
    """The exact noise prediction of a mixture of isotropic Gaussians of SD ``bandwidth`` at ``points`` (K, d)
    with ``weights`` (K,), for particles ``x`` (P, d) at ``x_t = a x_0 + b noise``. With ``bandwidth`` 0 the
    mixture is the points themselves: the denoiser of a model that learned exactly its samples."""
    spread = a * a * bandwidth**2 + b * b
    distances = (x * x).sum(axis=1)[:, None] - 2 * a * x @ points.T + a * a * (points * points).sum(axis=1)[None, :]
    log_densities = np.log(weights)[None, :] - 0.5 * distances / spread
    responsibility = np.exp(log_densities - log_densities.max(axis=1, keepdims=True))
    responsibility /= responsibility.sum(axis=1, keepdims=True)
    centre = responsibility @ points
    x0 = centre + a * bandwidth**2 / spread * (x - a * centre)
    return (x - a * x0) / b


def guided(cond, uncond, w, start, step):
    """Particles of the guided DDIM sampler (eta 0) from the starting noise ``start``; ``cond`` and ``uncond``
    are the branches' noise predictions ``(x, a, b) -> eps``, or mixtures for :func:`mixture_eps`."""
    a, b = np.sqrt(step.abar_t), np.sqrt(1.0 - step.abar_t)
    cond, uncond = (branch if callable(branch) else functools.partial(mixture_eps, components=branch)
                    for branch in (cond, uncond))
    x = start
    for k in range(len(a)):
        eps_c, eps_u = cond(x, a=a[k], b=b[k]), uncond(x, a=a[k], b=b[k])
        x = step.x_coef[k] * x + step.eps_coef[k] * (eps_u + w * (eps_c - eps_u))
    return x


def affine_fit(x, y, ridge):
    """The least-squares affine map ``y ~ x @ slope + intercept`` over the rows of ``x`` (n, d) and ``y`` (n, d'),
    with ``ridge`` added to the inputs' covariance (pixels at the range's edge in every image have none)."""
    centre_x, centre_y = x.mean(axis=0), y.mean(axis=0)
    xc = x - centre_x
    slope = np.linalg.solve(xc.T @ xc / len(x) + ridge * np.eye(x.shape[1]), xc.T @ (y - centre_y) / len(x))
    return slope, centre_y - centre_x @ slope


def network_maps(backend, caption, start, *, steps, ridge):
    """Per step of the network's CFG-1 DDIM trajectories from ``start`` (P, pixels): the affine maps x -> eps of its
    conditional and unconditional branches, fitted to their outputs along those trajectories (:func:`affine_fit`):
    each branch's Gaussian as the network's denoiser implies it there, not as its samples show it."""
    import torch

    from chain.backends.tiny_loops import make_sampler

    model, config = backend.model, backend.config
    scheduler = make_sampler(config.num_train_timesteps, prediction_type=config.prediction_type)
    scheduler.set_timesteps(steps)
    shape = (len(start), config.image_channels, config.resolution, config.resolution)
    x = torch.tensor(start, dtype=torch.float32).reshape(shape)
    condition = tuple(torch.cat(pair) for pair in zip(model.condition([""] * len(start)),
                                                      model.condition([caption] * len(start)), strict=True))
    maps = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps_u, eps_c = model(torch.cat([x, x]), t.expand(2 * len(start)), condition).chunk(2)
            flat = x.reshape(len(start), -1).double().numpy()
            maps.append(tuple(affine_fit(flat, eps.reshape(len(start), -1).double().numpy(), ridge)
                              for eps in (eps_c, eps_u)))
            x = scheduler.step(eps_c, t, x, eta=0.0).prev_sample
    return maps


def affine_guided(maps, w, start, step):
    """Particles of the guided DDIM sampler (eta 0) whose branches are the affine maps ``maps`` of each step."""
    x = start
    for k, ((slope_c, intercept_c), (slope_u, intercept_u)) in enumerate(maps):
        eps_c, eps_u = x @ slope_c + intercept_c, x @ slope_u + intercept_u
        x = step.x_coef[k] * x + step.eps_coef[k] * (eps_u + w * (eps_c - eps_u))
    return x


def branches(pixels, captions, *, ridge, bandwidth, uncond=None):
    """Each caption's conditional model and the unconditional one: per caption a Gaussian (sample covariance plus
    ``ridge``), or with ``bandwidth`` the kernel mixture of its images; p_u the captions' equal-weight mixture, or,
    given the model's unconditional images ``uncond`` (n, pixels), their Gaussian or kernel mixture."""
    names, counts = np.unique(captions, return_counts=True)
    if bandwidth is None:
        gaussians = {c: gaussian(pixels[captions == c], ridge) for c in names}
        conds = {c: [(1.0, *g)] for c, g in gaussians.items()}
        if uncond is not None:
            return conds, [(1.0, *gaussian(uncond, ridge))]
        return conds, [(1.0 / len(names), *g) for g in gaussians.values()]
    conds = {c: functools.partial(kernel_eps, points=pixels[captions == c], weights=np.ones(n), bandwidth=bandwidth)
             for c, n in zip(names, counts, strict=True)}
    if uncond is not None:
        return conds, functools.partial(kernel_eps, points=uncond, weights=np.ones(len(uncond)), bandwidth=bandwidth)
    # Each caption weighs 1 / C in p_u, shared among its images.
    weights = 1.0 / (len(names) * counts[np.searchsorted(names, captions)])
    return conds, functools.partial(kernel_eps, points=pixels, weights=weights, bandwidth=bandwidth)


def gaussian(images, ridge):
    """The mean, eigenvectors and eigenvalues of the images' sample covariance plus ``ridge`` times the identity."""
    values, vectors = np.linalg.eigh(np.cov(images.T) + ridge * np.eye(images.shape[1]))
    return images.mean(axis=0), vectors, values


def pixel_law(run: Path, curve: pd.DataFrame, *, particles: int, ridge: float, clip: bool,
              bandwidth: float | None = None, uncond_samples: bool = False, gain: float = 1.0,
              network_ridge: float | None = None, seed: int = 0):
    """The pixel law's S of ln var for every (model, caption, w, axis) row of ``curve``: each caption a Gaussian,
    or with ``bandwidth`` the kernel mixture of its CFG-1 images (:func:`kernel_eps`); p_u from the model's
    unconditional images with ``uncond_samples``, else the captions' mixture; the law guides with
    ``1 + gain (w - 1)`` for the scale w (one shared correction, 1: none). With ``network_ridge`` the law's branches
    are instead the network's own, linearised along its CFG-1 trajectories (:func:`network_maps`)."""
    law_file = json.loads((run / "selection" / "law.json").read_text())
    step = step_coefficients(law_file["steps"], eta=0.0,
                             config=ddim_config("ddim", SchedulerConfig(**law_file["scheduler"])))
    real, real_captions, template = read_folder(run / "real")
    shape = np.asarray(template).shape

    def features(pixels):
        images = (pixels + 1.0) / 2.0
        if clip:  # as the backend saves its output: clipped to the range, rounded to 8 bits
            images = np.round(255 * np.clip(images, 0.0, 1.0)) / 255
        images = images.reshape(len(images), *shape)
        rgb = np.repeat(images[..., None], 3, axis=-1) if images.ndim == 3 else images
        return np.array([image_statistics(image) for image in rgb])

    axes = fit_axes(_within_caption(features(real), real_captions, what="real data"), 3, standardize=True)
    rng = check_random_state(seed)
    out = []
    backend = network_backend(run) if network_ridge is not None else None
    for iteration, rows in curve.groupby("iteration"):
        pixels, captions, _ = read_folder(model_folder(run, iteration, "cfg1"))
        start = rng.standard_normal((particles, pixels.shape[1]))
        if backend is None:
            own_uncond = read_folder(model_folder(run, iteration, "uncond"))[0] if uncond_samples else None
            conds, uncond = branches(pixels, captions, ridge=ridge, bandwidth=bandwidth, uncond=own_uncond)
        else:
            load_model(backend, run, iteration)
        for caption, caption_rows in rows.groupby("caption"):
            if backend is None:
                law = functools.partial(guided, conds[caption], uncond, start=start, step=step)
            else:
                maps = network_maps(backend, caption, start, steps=law_file["steps"], ridge=network_ridge)
                law = functools.partial(affine_guided, maps, start=start, step=step)
            at_one = np.log(axes.project(features(law(w=1.0))).var(axis=0, ddof=1))
            for w, at_w in caption_rows.groupby("w"):
                traits = axes.project(features(law(w=1.0 + gain * (float(w) - 1.0))))
                s = np.log(traits.var(axis=0, ddof=1)) - at_one
                out += [(index, s[int(axis)]) for index, axis in zip(at_w.index, at_w["axis"], strict=True)]
    return pd.Series(dict(out)).reindex(curve.index)


def scores(curve: pd.DataFrame) -> list[dict]:
    rows = []
    for subset, pick in SUBSETS.items():
        part = curve[pick(curve["w"].to_numpy())]
        noise = ((part["S_log_var_hi"] - part["S_log_var_lo"]) / 3.92) ** 2
        ceiling = 1.0 - noise.mean() / part["S_log_var"].var()
        for label, column in LAWS.items():
            mean = part.groupby(["iteration", "axis", "w"])[["S_log_var", column]].mean()
            caption = agreement(part["S_log_var"], part[column])
            captions = agreement(mean["S_log_var"], mean[column])
            rows.append({"w": subset, "law": label, "r2 (caption)": caption["r2"], "slope (caption)": caption["slope"],
                         "r2 (captions' mean)": captions["r2"], "slope (captions' mean)": captions["slope"],
                         "noise ceiling of r2 (caption)": float(ceiling)})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("curve", help="selection_curve.csv of chain validate RUN --selection-curve")
    parser.add_argument("run", help="the run directory the curve was measured on")
    parser.add_argument("--out", required=True, help="JSON file of the scores and the mean S per w")
    parser.add_argument("--particles", type=int, default=400, help="particles per model, caption and w")
    parser.add_argument("--ridge", type=float, default=0.01, help="added to each caption's pixel covariance")
    parser.add_argument("--no-clip", action="store_true", help="leave out the final clip to the pixel range")
    parser.add_argument("--kernel", type=float, default=None, metavar="BANDWIDTH",
                        help="each caption the mixture of isotropic Gaussians of this SD (in the model's pixel range "
                             "[-1, 1]) at its CFG-1 images instead of one Gaussian; 0: the images themselves")
    parser.add_argument("--uncond", choices=("mixture", "samples"), default="mixture",
                        help="p_u: the captions' equal-weight mixture, or fitted to the model's unconditional images "
                             "(MODEL/uncond) as each caption is to its own")
    parser.add_argument("--gain", type=float, default=1.0,
                        help="the law guides with 1 + GAIN (w - 1): one correction shared by every w (1: none)")
    parser.add_argument("--network", type=float, default=None, metavar="RIDGE",
                        help="the law's branches the network's own, linearised per step along its CFG-1 trajectories "
                             "(an affine fit with this ridge, e.g. 0.001); needs the run's tiny model weights")
    args = parser.parse_args(argv)
    if args.network is not None and (args.network <= 0 or args.kernel is not None or args.uncond != "mixture"):
        parser.error("--network takes a positive ridge and goes without --kernel and --uncond")
    if args.network is not None and (problem := network_problem(Path(args.run))):
        parser.error(problem)
    if args.gain <= 0:
        parser.error(f"--gain must be positive, got {args.gain}")
    if args.kernel is not None and args.kernel < 0:
        parser.error(f"--kernel must be at least 0, got {args.kernel}")
    curve = pd.read_csv(args.curve, comment="#")
    curve = curve[~curve["caption"].str.startswith("(")].reset_index(drop=True)
    curve["pixel_S_log_var"] = pixel_law(Path(args.run), curve, particles=args.particles, ridge=args.ridge,
                                         clip=not args.no_clip, bandwidth=args.kernel,
                                         uncond_samples=args.uncond == "samples", gain=args.gain,
                                         network_ridge=args.network)
    table = pd.DataFrame(scores(curve))
    means = curve.groupby("w")[["S_log_var", *LAWS.values()]].mean()
    # Which models the law misses: the measured and the pixel law's mean S per model (-1: the base model) and w.
    per_model = curve.groupby(["iteration", "w"])[["S_log_var", "pixel_S_log_var"]].mean()
    print(table.round(3).to_string(index=False))
    print(means.round(3).to_string())
    print(per_model.unstack("w").round(2).to_string())
    # An undefined score (a subset whose values do not vary) is written as null: JSON has no NaN.
    records = table.astype(object).where(table.notna(), None).to_dict("records")
    write_json(args.out, {"scores": records, "mean_S_log_var_per_w": means.reset_index().to_dict("records"),
                          "mean_S_log_var_per_model_and_w": per_model.reset_index().to_dict("records"),
                          "particles": args.particles, "ridge": args.ridge, "clip": not args.no_clip,
                          "kernel": args.kernel, "uncond": args.uncond, "gain": args.gain,
                          "network": args.network})


if __name__ == "__main__":
    main()
