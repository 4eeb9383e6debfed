"""The theory figures: one small function per figure, its parameters written beside it.

Each figure is registered with :func:`figure`, which records its name, title,
caption and parameters; :func:`make_figures` draws the registered figures with
exactly those parameters into PNG and PDF files and writes ``README.md`` beside
them, listing each figure with the command and the parameters that made it. The
drawing uses the theory code alone (moments engine, exact sampler map, particle
engine) and the non-interactive Agg backend, so it runs anywhere.

Unless a figure says otherwise, the model is ``qtm simulate``'s default one-axis
model: the base model's conditional branch ``p_c = N(1, 1)``, its unconditional
branch ``p_u = N(0, 1.5)``, the real data ``N(1, 1)``, SD v1.5's scheduler.

Examples
--------
>>> sorted(FIGURES)[:2]
['base_vs_continue', 'chain']
>>> FIGURES["fitness_landscape"].parameters["cfg"]
(0.5, 1.0, 2.0, 3.0, 7.5)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qtm import figures_solvers as _solver_figure
from qtm.errors import QTMError

FORMATS = ("png", "pdf")
DPI = 110  # of the PNG figures
#: The one-axis model of ``qtm simulate``'s default sweep (see the module docstring).
MODEL = {"cond_mean": 1.0, "cond_var": 1.0, "uncond_mean": 0.0, "uncond_var": 1.5, "data_mean": 1.0, "data_var": 1.0}
#: Collapse: the variance falls below this fraction of the real data's.
COLLAPSE_THRESHOLD = 0.1
_RANKS = ("largest", "second", "third", "fourth", "fifth")


@dataclass(frozen=True)
class FigureSpec:
    """A registered figure: ``draw(fig, **parameters)`` draws it on a matplotlib figure."""

    number: int
    name: str
    title: str
    caption: str
    parameters: dict
    draw: Callable
    size: tuple


FIGURES: dict[str, FigureSpec] = {}


def figure(name: str, *, title: str, caption: str, size=(9.0, 4.0), **parameters):
    """Register a drawing function as a figure, with the parameters it is drawn with.

    Examples
    --------
    >>> @figure("demo", title="A demo", caption="Nothing.", slope=2.0)
    ... def demo(fig, *, slope):
    ...     fig.subplots().plot([0, 1], [0, slope])
    >>> FIGURES.pop("demo").parameters
    {'slope': 2.0}
    """

    def register(draw):
        FIGURES[name] = FigureSpec(len(FIGURES) + 1, name, title, caption, dict(parameters), draw, size)
        return draw

    return register


def _model(**override) -> dict:
    return {**MODEL, **override}


# --------------------------------------------------------------------------- 1


@figure(
    "fitness_landscape",
    title="The fitness landscape of classifier-free guidance",
    caption="Left: the fitness W(z) = (p_c/p_u)^(w-1) that CFG with scale w puts on a trait value z, "
    "against the conditional distribution p_c (shaded). w > 1 rewards the traits where p_c exceeds p_u "
    "(selection toward and around the conditional mode), w < 1 rewards the others, w = 1 is neutral. "
    "Right: the distribution after selection, p_c W normalised, the idealised CFG tilt.",
    cfg=(0.5, 1.0, 2.0, 3.0, 7.5),
    cond=(1.0, 1.0),
    uncond=(0.0, 1.5),
    trait_range=(-3.0, 4.0),
)
def fitness_landscape(fig, *, cfg, cond, uncond, trait_range):
    from scipy import stats

    from qtm.gaussian import cfg_tilt

    z = np.linspace(*trait_range, 400)
    log_ratio = stats.norm.logpdf(z, cond[0], np.sqrt(cond[1])) - stats.norm.logpdf(z, uncond[0], np.sqrt(uncond[1]))
    fitness_ax, result_ax = fig.subplots(1, 2)
    density = stats.norm.pdf(z, cond[0], np.sqrt(cond[1]))
    shade = fitness_ax.twinx()
    shade.fill_between(z, density, color="0.85", label="p_c")
    shade.set_yticks([])
    fitness_ax.set_zorder(shade.get_zorder() + 1)
    fitness_ax.patch.set_visible(False)
    for w in cfg:
        fitness_ax.plot(z, np.exp((w - 1) * log_ratio), label=f"w = {w:g}")
        tilt = cfg_tilt(*cond, *uncond, cfg=w)
        result_ax.plot(z, stats.norm.pdf(z, float(tilt.mean), np.sqrt(float(tilt.var))), label=f"w = {w:g}")
    result_ax.plot(z, stats.norm.pdf(z, uncond[0], np.sqrt(uncond[1])), "k:", label="p_u")
    fitness_ax.set(yscale="log", ylim=(1e-3, 1e3), xlabel="trait z", ylabel="fitness W(z)",
                   title=f"W(z) for p_c = N{cond}, p_u = N{uncond}")  # fmt: skip
    result_ax.set(xlabel="trait z", ylabel="density", title="p_c W / E[W] (the CFG tilt)")
    fitness_ax.legend(fontsize=7)
    result_ax.legend(fontsize=7)


# --------------------------------------------------------------------------- 2


@figure(
    "guided_sampling",
    title="One guided sampling: what the sampler and the CFG schedule do to selection",
    caption="Variance and mean of the output of one CFG-guided sampling from the base model, against the peak "
    "CFG scale: the idealised tilt p_c (p_c/p_u)^(w-1) (for a schedule, at its mean scale) and the exact output "
    "of diffusers' DDIM (eta 0) and DDPM (eta 1) samplers, each with a constant and a decaying (cosine) "
    "schedule. With a constant schedule DDIM selects far harder than the tilt at the same scale, DDPM in "
    "between; the decaying schedule weakens selection for every sampler (DDPM's then falls below the tilt's "
    "at the schedule's mean scale).",
    cfg=tuple(np.round(np.linspace(1.0, 10.0, 37), 2).tolist()),
    samplers=("tilt", "ddim", "ddpm"),
    schedules=("constant", "cosine"),
    steps=50,
    model=(MODEL["cond_mean"], MODEL["cond_var"], MODEL["uncond_mean"], MODEL["uncond_var"]),
)
def guided_sampling(fig, *, cfg, samplers, schedules, steps, model):
    from qtm.sampler_map import guided_moments

    var_ax, mean_ax = fig.subplots(1, 2)
    cfg = np.asarray(cfg)
    for sampler, colour in zip(samplers, ("C0", "C1", "C2"), strict=False):
        for schedule, style in zip(schedules, ("-", "--"), strict=False):
            out = guided_moments(*model, cfg=cfg, schedule=schedule, sampler=sampler, steps=steps)
            label = f"{sampler}, {schedule}"
            var_ax.plot(cfg, out.var, style, color=colour, label=label)
            mean_ax.plot(cfg, out.mean, style, color=colour, label=label)
    var_ax.set(yscale="log", xlabel="peak CFG scale w", ylabel="output variance",
               title=f"p_c = N({model[0]:g}, {model[1]:g}), p_u = N({model[2]:g}, {model[3]:g}), {steps} steps")
    mean_ax.set(xlabel="peak CFG scale w", ylabel="output mean", title="mean")  # fmt: skip
    var_ax.legend(fontsize=7)


# --------------------------------------------------------------------------- 3


@figure(
    "chain",
    title="The chain: trait variance and mean per iteration, with and without each ReDiFine component",
    caption="The moments engine in the reference setup (finetuning from the base model with fidelity 0.5, "
    "DDIM with 50 steps). Columns: plain CFG; condition-drop finetuning (p = 0.2, the unconditional branch "
    "learns the data with fidelity p rho); the decaying cosine CFG schedule; both (ReDiFine). "
    "Variance relative to the real data's; the dotted line is the collapse threshold. Solid lines: each "
    "iteration trains on the newest generation (data workflow replace); dashed: on the real data and every "
    "generation so far (accumulate; accumulate-subsample has the same expected moments at infinite N). Under "
    "accumulate the pool keeps the old sets, whose means guidance has since moved: the between-set spread widens "
    "the pooled Gaussian until v_c passes v_u and guidance widens it further (the grey region of the phase "
    "diagram, a limit of the Gaussian closure); such lines leave the plotted range.",
    size=(12.0, 5.5),
    cfg=(1.0, 2.0, 3.0, 5.0, 7.5, 10.0),
    variants=(("plain", "constant", 0.0), ("condition drop", "constant", 0.2),
              ("cosine schedule", "cosine", 0.0), ("ReDiFine (both)", "cosine", 0.2)),
    workflows=(("replace", "-"), ("accumulate", "--")),
    fidelity=0.5,
    finetune="base",
    iterations=10,
    var_range=(1e-6, 1e4),
    mean_range=(0.0, 18.0),
)  # fmt: skip
def chain(fig, *, cfg, variants, workflows, fidelity, finetune, iterations, var_range, mean_range):
    from qtm.recursion import simulate_moments

    axes = fig.subplots(2, len(variants), sharex=True, sharey="row")
    t = np.arange(iterations)
    colours = _colours(len(cfg))
    names = [name for name, _ in workflows]
    for column, (label, schedule, drop) in enumerate(variants):
        traj = simulate_moments(**MODEL, cfg=np.asarray(cfg)[:, None], schedule=schedule, drop=drop,
                                fidelity=fidelity, finetune=finetune, iterations=iterations,
                                data_workflow=np.asarray(names, dtype=object)[None, :])  # fmt: skip
        for i, w in enumerate(cfg):
            for k, (_, style) in enumerate(workflows):
                axes[0, column].plot(t, traj.var[i, k] / MODEL["data_var"], marker="o", ls=style, ms=2,
                                     color=colours[i], label=f"w={w:g}" if k == 0 else None)
                axes[1, column].plot(t, traj.mean[i, k], marker="o", ls=style, ms=2, color=colours[i])
        axes[0, column].axhline(COLLAPSE_THRESHOLD, color="k", ls=":", lw=0.8)
        axes[0, column].set(title=label, yscale="log")
        axes[1, column].set(xlabel="iteration")
    axes[0, 0].set(ylabel="variance / real variance", ylim=var_range)
    axes[1, 0].set(ylabel="mean", ylim=mean_range)
    axes[0, 0].legend(fontsize=7)
    styles = [axes[1, 0].plot([], [], color="k", ls=style, label=name)[0] for name, style in workflows]
    axes[1, 0].legend(handles=styles, fontsize=7, title="data workflow", title_fontsize=7)


# --------------------------------------------------------------------------- 4


#: Final variance above this multiple of the real data's marks a phase-diagram point as exploding.
EXPLOSION_FACTOR = 10.0


@figure(
    "phase_diagram",
    title="Phase diagrams: iterations until collapse",
    caption="The first iteration whose variance falls below 0.1 times the real data's (moments engine, "
    "continued finetuning with fidelity 0.5, DDIM with 50 steps, at most 30 iterations; white: no collapse "
    "within 30; grey: no collapse, and the variance ends above 10 times the real data's: the Gaussian closure of "
    "the mixed data set lets v_c pass v_u, after which guidance widens the distribution, a limit of the moments "
    "model rather than a prediction). Left: over CFG scale and condition-drop probability; right: over CFG "
    "scale and the share of real data mixed into every finetuning set. One row per data workflow: each "
    "iteration trains on the newest generation (replace) or on the real data and every generation so far "
    "(accumulate).",
    size=(10.0, 7.5),
    cfg=(1.0, 10.0, 37),
    drop=(0.0, 1.0, 21),
    real_fraction=(0.0, 0.5, 21),
    workflows=("replace", "accumulate"),
    fidelity=0.5,
    finetune="continue",
    iterations=30,
)
def phase_diagram(fig, *, cfg, drop, real_fraction, workflows, fidelity, finetune, iterations):
    w = np.linspace(*cfg)
    panels = (("condition-drop probability p", "drop", np.linspace(*drop)),
              ("real-data fraction", "real_fraction", np.linspace(*real_fraction)))  # fmt: skip
    axes = fig.subplots(len(workflows), 2, squeeze=False)
    for row, workflow in enumerate(workflows):
        for ax, (label, option, values) in zip(axes[row], panels, strict=True):
            mesh = _collapse_map(ax, w, option, values, workflow=workflow, fidelity=fidelity, finetune=finetune,
                                 iterations=iterations)  # fmt: skip
            ax.set(xlabel=label, ylabel=f"CFG scale w ({workflow})")
    fig.colorbar(mesh, ax=axes, label="iterations until collapse")


def _collapse_map(ax, w, option, values, *, workflow, fidelity, finetune, iterations):
    """One phase-diagram panel: iterations until collapse over CFG scale (rows) and ``option`` (columns)."""
    from qtm.recursion import collapse_iteration, simulate_moments

    traj = simulate_moments(**MODEL, cfg=w[:, None], **{option: values[None, :]}, fidelity=fidelity,
                            finetune=finetune, iterations=iterations, data_workflow=workflow)  # fmt: skip
    first = collapse_iteration(traj, threshold=COLLAPSE_THRESHOLD).astype(float)
    first[first < 0] = np.nan
    # Without collapse the Gaussian closure can also let the variance grow without bound (once
    # v_c > v_u guidance widens instead of narrowing); those points are shown apart, in grey.
    explodes = np.isnan(first) & (traj.var[..., -1] > EXPLOSION_FACTOR * traj.data_var)
    ax.pcolormesh(values, w, np.where(explodes, 1.0, np.nan), shading="nearest", cmap="Greys", vmin=0, vmax=2)
    return ax.pcolormesh(values, w, first, shading="nearest", cmap="viridis", vmin=0, vmax=iterations - 1)


# --------------------------------------------------------------------------- 5


@figure(
    "multimodal_occupancy",
    title="Multi-modal data: the occupancy of each mode per iteration (particle engine)",
    caption="Three equally weighted modes (N(-4,1), N(0,1), N(4,1)); the unconditional branch has the same "
    "modes 1.5 times wider. Each iteration refits the mixture to the population (fidelity 1, continued "
    "finetuning) and draws the next population through the 25-step DDIM sampler with the exact mixture "
    "denoiser. Top: the share of the largest, second and third mode of each replicate (mean over "
    "replicates; band: 10-90% of replicates); which mode wins is random. Bottom: the mean number of modes "
    "holding at least 1% of the population (diversity loss).",
    size=(11.0, 5.5),
    cfg=(1.0, 3.0, 7.5),
    modes=3,
    population=500,
    replicates=40,
    iterations=10,
    steps=25,
    uncond_var=1.5,
    seed=0,
)
def multimodal_occupancy(fig, *, cfg, modes, population, replicates, iterations, steps, uncond_var, seed):
    from qtm.particles import ChainSetup, simulate_chain

    axes = fig.subplots(2, len(cfg), sharex=True, sharey="row")
    t = np.arange(iterations)
    for column, w in enumerate(cfg):
        setup = ChainSetup.build(population=population, iterations=iterations, modes=modes, data_mean=0.0,
                                 data_var=1.0, uncond_var=uncond_var, cfg=w, fidelity=1.0, finetune="continue",
                                 steps=steps)  # fmt: skip
        occupancy = simulate_chain(setup, replicates=replicates, seed=seed).occupancy
        ranked = -np.sort(-occupancy, axis=2)
        for m in range(modes):
            share = ranked[:, :, m]
            line = axes[0, column].plot(t, share.mean(axis=0), "o-", ms=2, label=_RANKS[m] + " mode")[0]
            low, high = np.quantile(share, [0.1, 0.9], axis=0)
            axes[0, column].fill_between(t, low, high, color=line.get_color(), alpha=0.15)
        axes[1, column].plot(t, (occupancy >= 0.01).sum(axis=2).mean(axis=0), "ko-", ms=2)
        axes[0, column].set(title=f"CFG w = {w:g}")
        axes[1, column].set(xlabel="iteration", ylim=(0, modes + 0.2))
    axes[0, 0].set(ylabel="share of the population")
    axes[1, 0].set(ylabel="modes occupied (>= 1%)")
    axes[0, 0].legend(fontsize=7)


# --------------------------------------------------------------------------- 6


@figure(
    "finite_population",
    title="Finite populations: replicate trajectories around the expectation",
    caption="The particle engine's guided-sampler chain (CFG 3, constant schedule, DDIM 25 steps, finetuning "
    "from the base model with fidelity 0.5) for several numbers N of images per iteration: every replicate's "
    "variance (thin lines) and the moments engine's expectation with the finite-N refit (thick). The spread "
    "shrinks like 1/sqrt(N) around the same expectation.",
    size=(11.0, 3.8),
    populations=(20, 100, 1000),
    replicates=30,
    cfg=3.0,
    fidelity=0.5,
    iterations=10,
    steps=25,
    seed=0,
)
def finite_population(fig, *, populations, replicates, cfg, fidelity, iterations, steps, seed):
    from qtm.particles import ChainSetup, simulate_chain
    from qtm.recursion import simulate_moments

    axes = fig.subplots(1, len(populations), sharey=True)
    t = np.arange(iterations)
    for ax, n in zip(axes, populations, strict=True):
        setup = ChainSetup.build(population=n, iterations=iterations, cfg=cfg, fidelity=fidelity, steps=steps,
                                 **MODEL)  # fmt: skip
        result = simulate_chain(setup, replicates=replicates, seed=seed)
        ax.plot(t, result.var[:, :, 0].T, color="C0", lw=0.5, alpha=0.4)
        expected = simulate_moments(**MODEL, cfg=cfg, fidelity=fidelity, iterations=iterations, steps=steps,
                                    population=n)  # fmt: skip
        ax.plot(t, expected.var, "k-", lw=2, label="moments engine")
        ax.plot(t, result.var[:, :, 0].mean(axis=0), "C3--", lw=1.5, label="replicate mean")
        ax.set(title=f"N = {n}", xlabel="iteration", yscale="log")
    axes[0].set(ylabel="trait variance")
    axes[0].legend(fontsize=7)


# --------------------------------------------------------------------------- 7


@figure(
    "base_vs_continue",
    title="Base-model restart against continued finetuning",
    caption="Moments engine, DDIM with 50 steps, fidelity 0.5. Restarting every finetuning from the base model "
    "(solid, the reference setup) keeps the prior's variance in every model and settles on a fixed point; "
    "continuing from the previous model (dashed) compounds the selection of every iteration "
    "(variances below 1e-6 of the real one are cut off).",
    size=(10.0, 4.0),
    cfg=(1.0, 2.0, 3.0, 5.0),
    fidelity=0.5,
    iterations=20,
)
def base_vs_continue(fig, *, cfg, fidelity, iterations):
    from qtm.recursion import simulate_moments

    var_ax, mean_ax = fig.subplots(1, 2)
    t = np.arange(iterations)
    colours = _colours(len(cfg))
    for mode, style in (("base", "-"), ("continue", "--")):
        traj = simulate_moments(**MODEL, cfg=np.asarray(cfg), fidelity=fidelity, finetune=mode,
                                iterations=iterations)  # fmt: skip
        for i, w in enumerate(cfg):
            label = f"w={w:g}, {mode}"
            var_ax.plot(t, traj.var[i] / MODEL["data_var"], style, color=colours[i], label=label)
            mean_ax.plot(t, traj.mean[i], style, color=colours[i], label=label)
    var_ax.axhline(COLLAPSE_THRESHOLD, color="k", ls=":", lw=0.8)
    var_ax.set(yscale="log", ylim=(1e-6, 2.0), xlabel="iteration", ylabel="variance / real variance")
    mean_ax.set(xlabel="iteration", ylabel="mean")
    var_ax.legend(fontsize=7, ncol=2)


figure(
    _solver_figure.NAME, title=_solver_figure.TITLE, caption=_solver_figure.CAPTION, size=(11.0, 4.5),
    **_solver_figure.PARAMETERS,
)(_solver_figure.solver_limits)


def _colours(count: int):
    import matplotlib

    return matplotlib.colormaps["viridis"](np.linspace(0.0, 0.9, count))


# --------------------------------------------------------------------------- output


def make_figures(out, *, names=None, formats=FORMATS, echo: Callable[[str], None] | None = None) -> list[Path]:
    """Draw figures into ``out`` (one file per format each) and write ``out/README.md``, their index.

    Parameters
    ----------
    out : path
        The output folder (created if missing).
    names : sequence of str, optional
        Figures to draw (all by default). The index always lists every figure, so
        that redrawing one keeps the others' entries.
    formats : sequence of {"png", "pdf"}
    echo : callable, optional
        Receives one line per written file.

    Returns
    -------
    list of pathlib.Path
        The files written (figures, then the index).

    Examples
    --------
    >>> import tempfile
    >>> [path.name for path in make_figures(tempfile.mkdtemp(), names=["fitness_landscape"], formats=["png"])]
    ['fitness_landscape.png', 'README.md']
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qtm.io import atomic_path

    names = list(FIGURES) if names is None else list(names)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise QTMError(f"unknown figure {unknown[0]!r}; choose from: {', '.join(FIGURES)}")
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise QTMError(f"unknown figure format {bad[0] if bad else ''!r}; choose from: {', '.join(FORMATS)}")
    out = Path(out)
    written = []
    for name in [n for n in FIGURES if n in names]:
        spec = FIGURES[name]
        fig = plt.figure(figsize=spec.size, dpi=DPI, layout="constrained")
        try:
            spec.draw(fig, **spec.parameters)
            fig.suptitle(f"{spec.number}. {spec.title}", fontsize=10)
            # Place the panels once for every format: savefig would run the layout solver again for each.
            fig.get_layout_engine().execute(fig)
            fig.set_layout_engine("none")
            for fmt in formats:
                path = out / f"{name}.{fmt}"
                with atomic_path(path) as tmp:
                    # No dates or versions in the files: the same code draws the same bytes.
                    metadata = {"Software": None} if fmt == "png" else {"CreationDate": None, "Producer": None}
                    fig.savefig(tmp, format=fmt, dpi=DPI, metadata=metadata)
                written.append(path)
                if echo is not None:
                    echo(str(path))
        finally:
            plt.close(fig)
    index = out / "README.md"
    with atomic_path(index) as tmp:
        tmp.write_text(index_markdown(out_name=str(out)))
    written.append(index)
    if echo is not None:
        echo(str(index))
    return written


def index_markdown(*, out_name: str = "figures") -> str:
    """The figures' index: each figure's image, caption, command and parameters."""
    lines = [
        "# Theory figures",
        "",
        "Drawn by `qtm figures` from the theory code alone (no GPU, no weights); do not edit by hand.",
        f"Regenerate all with `qtm figures --out {out_name}`, or one with `--only NAME`.",
        "Each figure's parameters are written beside its function in `qtm/figures.py`.",
        "",
    ]
    for spec in FIGURES.values():
        lines += [
            f"## {spec.number}. {spec.title}",
            "",
            f"![{spec.title}]({spec.name}.png)",
            "",
            spec.caption,
            "",
            f"Files: `{spec.name}.png`, `{spec.name}.pdf`. Command: `qtm figures --out {out_name} --only "
            f"{spec.name}` (function `qtm.figures.{spec.draw.__name__}`).",
            "",
            "| parameter | value |",
            "| --- | --- |",
        ]
        lines += [f"| `{key}` | `{_show(value)}` |" for key, value in spec.parameters.items()]
        lines.append("")
    return "\n".join(lines)


def _show(value) -> str:
    if isinstance(value, tuple) and len(value) > 8 and all(isinstance(v, float) for v in value):
        return f"{len(value)} values from {value[0]:g} to {value[-1]:g}"
    return repr(value).replace("|", "\\|")
