"""The one parameter model: every chain parameter, defined once.

Each :class:`Parameter` carries its type, range or vocabulary, default and help text.
The moments engine (:mod:`qtm.recursion`), the particle engine (:mod:`qtm.particles`),
the sweep grid (:mod:`qtm.grid`), ``chain run``'s parameters (:mod:`chain.run_parameters`), the
command-line options of both programs (their help and the keys of ``--config`` files)
all derive from :data:`PARAMETERS`, so that a parameter added here appears everywhere
and a range or a vocabulary cannot disagree between two places.

Library code speaks in parameter names (``real_fraction``); only the command line
speaks in flags (``--real-fraction``, :attr:`Parameter.flag`).

Defaults: :attr:`Parameter.default` is the default of the Python API and of every
command. Two named presets depart from it, each in this module only:
:data:`DEFAULT_SWEEP` (what ``qtm simulate`` sweeps when given no grid) and
:data:`BACKEND_DEFAULTS` (the settings of ``chain run`` that depend on the backend).

Examples
--------
>>> PARAMETERS["real_fraction"].flag
'--real-fraction'
>>> PARAMETERS["eta"].check(0.5).item()
0.5
>>> PARAMETERS["finetune"].check("restart")
Traceback (most recent call last):
...
qtm.errors.QTMError: unknown finetune 'restart'; choose one of: base, continue
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from qtm.diffusion import BETA_SCHEDULES, TIMESTEP_SPACINGS
from qtm.errors import QTMError
from qtm.validation import as_float_array, check_choice

#: Samplers the theory maps exactly (:func:`qtm.sampler_map.guided_moments`): diffusers' DDIM (eta), DDPM
#: (DDIM with eta = 1, :func:`effective_eta`), Euler, Euler-ancestral, DPM-Solver++ 2M and 1S, Heun and
#: flow-matching Euler (:mod:`qtm.solvers`); the continuous-time limits ``ode`` and ``sde``
#: (:mod:`qtm.continuous`); and ``tilt``, the idealised p_c (p_c/p_u)^(w-1) at the schedule's mean scale
#: (:meth:`qtm.schedules.CFGSchedule.mean_scale`).
SAMPLERS = ("ddim", "ddpm", "euler", "euler-a", "dpm++2m", "dpm++1s", "heun", "flow-euler", "ode", "sde", "tilt")
#: Scheduler presets: SD v1.5, SD 2.1 (v-prediction), SD3 (flow matching, shift 3).
SCHEDULER_PRESETS = ("sd15", "sd21v", "sd3")
PREDICTION_TYPES = ("epsilon", "v_prediction", "flow")
#: What each iteration trains on (docs/theory.md, "Data workflows"): the newest generation, everything so far,
#: or a sample of one generation's size from everything so far.
DATA_WORKFLOWS = ("replace", "accumulate", "accumulate-subsample")
#: Samplers a real network runs (``chain run``) and the particle engine's sampler model draws through.
NETWORK_SAMPLERS = ("ddim", "ddpm")
#: The prior each finetuning starts from: the base model (the reference setup) or the previous model.
FINETUNE_STARTS = ("base", "continue")
#: The particle engine's two models: the guided-sampler chain on a mixture, or the classic QG loop.
PARTICLE_MODELS = ("sampler", "qg")
RESAMPLING = ("multinomial", "systematic")
#: Backends of the real chain.
BACKENDS = ("tiny", "sd")
#: The tiny backend's models (``chain.backends.tiny_config.PRESETS``) and caption encoders.
TINY_PRESETS = ("digits8", "rgb16", "rgb32", "rgb64")
TEXT_ENCODERS = ("hashed", "minilm")
#: The scheduler's configuration (:meth:`qtm.solvers.SchedulerConfig.from_parameters`).
SCHEDULER_PARAMETERS = ("scheduler", "beta_schedule", "timestep_spacing", "train_timesteps", "prediction_type",
                        "shift", "karras")
#: The base model and the real data: one value per trait axis.
MODEL_PARAMETERS = ("cond_mean", "cond_var", "uncond_mean", "uncond_var", "data_mean", "data_var")

_KINDS = ("float", "int", "text", "flag")


@dataclass(frozen=True)
class Parameter:
    """One parameter: its name, type, range or vocabulary, default and help.

    Parameters
    ----------
    name : str
        The name the library uses (``real_fraction``); the flag is derived from it.
    kind : {"float", "int", "text", "flag"}
    default : object
        The default everywhere (``None``: "not given", with a meaning the help states).
    help : str
        One line for ``--help``; the range is appended.
    low, high : float, optional
        Bounds of a number; ``open_low``/``open_high`` exclude them.
    choices : tuple of str
        The vocabulary of a text parameter (empty: free text).
    grid : bool
        ``qtm simulate`` sweeps it (comma lists and ranges).
    per_axis : bool
        One value per trait axis (the base model and the real data).

    Examples
    --------
    >>> p = Parameter("drop", "float", 0.0, "Condition-drop probability.", low=0, high=1)
    >>> p.range_text()
    'in [0, 1]'
    >>> p.check(1.5, label="--drop")
    Traceback (most recent call last):
    ...
    qtm.errors.QTMError: --drop must lie in [0, 1], got 1.5
    """

    name: str
    kind: str
    default: object
    help: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] = ()
    grid: bool = False
    per_axis: bool = False

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"parameter {self.name}: kind must be one of {_KINDS}, got {self.kind!r}")

    @property
    def flag(self) -> str:
        """The command-line flag, ``--`` and the name with dashes."""
        return "--" + self.name.replace("_", "-")

    def range_text(self) -> str:
        """The allowed values in words (empty for free text)."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
        if self.low is not None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.open_high else '<='} {self.high:g}"
        return ""

    def help_text(self) -> str:
        """The help line with the range, as ``--help`` shows it."""
        extent = self.range_text()
        return f"{self.help} ({extent})" if extent and self.kind != "flag" else self.help

    def check(self, value, *, label: str | None = None):
        """Validate ``value`` (of any shape, for numbers); return it in its canonical type.

        Numbers come back as float arrays (``float``) or ints (``int``, scalars only),
        text as ``str``, flags as ``bool``. ``None`` is returned as it is when the default is
        ``None`` (the parameter is optional). Errors are one line naming ``label``
        (the flag on the command line, the name in the library).
        """
        label = label or self.name
        if value is None and self.default is None:
            return None
        if self.kind == "flag":
            if not isinstance(value, (bool, np.bool_)):
                raise QTMError(f"{label} must be true or false, got {value!r}")
            return bool(value)
        if self.kind == "text":
            if not isinstance(value, str):
                raise QTMError(f"{label} must be text, got {value!r}")
            return check_choice(value, label, self.choices) if self.choices else value
        if self.kind == "int":
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise QTMError(f"{label} must be a whole number, got {value!r}")
            if not math.isfinite(value) or int(value) != value:
                raise QTMError(f"{label} must be a whole number, got {value!r}")
            self._check_bounds(np.asarray(float(value)), label)
            return int(value)
        if isinstance(value, (bool, np.bool_)) or (
            isinstance(value, np.ndarray) and value.dtype == bool
        ):
            raise QTMError(f"{label} must be a number, got {value!r}")
        array = as_float_array(value, label)
        self._check_bounds(array, label)
        return array

    def read(self, value, *, label: str):
        """A value from a ``--config`` file: its TOML type must be this parameter's, as a flag's would be.

        A grid or per-axis parameter also takes a list (or, like its flag, a comma text).
        Returns the value unchanged (parsing to a grid is :mod:`qtm.grid`'s work).
        """
        if isinstance(value, list) and (self.grid or self.per_axis):
            if not value:
                raise QTMError(f"{label} needs at least one value")
            for element in value:
                self.read(element, label=label)
            return value
        if isinstance(value, str) and self.kind != "text" and (self.grid or self.per_axis):
            return value  # a comma list or range, parsed (and checked) like the flag's text
        expected = {
            "flag": (bool,),
            "text": (str,),
            "int": (int,),
            "float": (int, float),
        }[self.kind]
        if (isinstance(value, bool) and self.kind != "flag") or not isinstance(value, expected):
            words = {"flag": "true or false", "text": "a text", "int": "a whole number", "float": "a number"}
            raise QTMError(f"{label} must be {words[self.kind]}, got {value!r} ({type(value).__name__})")
        return value

    def _check_bounds(self, array: np.ndarray, label: str) -> None:
        low_bad = high_bad = np.zeros(array.shape, dtype=bool)
        if self.low is not None:
            low_bad = array <= self.low if self.open_low else array < self.low
        if self.high is not None:
            high_bad = array >= self.high if self.open_high else array > self.high
        if np.any(low_bad | high_bad):
            bad = np.unique(array[low_bad | high_bad])
            shown = ", ".join(f"{x:g}" for x in bad[:4]) + (", ..." if bad.size > 4 else "")
            extent = self.range_text()
            verb = "lie" if extent.startswith("in ") else "be"
            raise QTMError(f"{label} must {verb} {extent}, got {shown}")


def _registry(*parameters: Parameter) -> dict[str, Parameter]:
    return {p.name: p for p in parameters}


#: Every parameter of the chain, in the order the commands list them.
PARAMETERS: dict[str, Parameter] = _registry(
    # What each iteration does (swept by qtm simulate, set by chain run).
    Parameter("cfg", "float", 7.5, "Peak classifier-free guidance scale w.", low=0, grid=True),
    Parameter("schedule", "text", "constant",
              "CFG schedule shape: constant, linear[:END], cosine[:END], cutoff:F, interval:LO:HI.", grid=True),
    Parameter("drop", "float", 0.0, "Condition-drop probability p of finetuning.", low=0, high=1, grid=True),
    Parameter("fidelity", "float", 1.0,
              "Fidelity rho of finetuning: the fraction the conditional branch moves toward the data.",
              low=0, high=1, grid=True),
    Parameter("uncond_fidelity", "float", None,
              "Fidelity of the unconditional branch (default: min(1, uncond_drift + drop x fidelity), the model's "
              "assumption).", low=0, high=1, grid=True),
    Parameter("iterations", "int", 10, "Iterations of the chain.", low=1, grid=True),
    Parameter("finetune", "text", "base", "Start each finetuning from the base model or continue the previous.",
              choices=FINETUNE_STARTS, grid=True),
    Parameter("real_fraction", "float", 0.0, "Share of real data mixed into each training set.",
              low=0, high=1, grid=True),
    Parameter("sampler", "text", "ddim",
              "Sampler: a diffusers solver, ode/sde (infinitely many steps) or tilt (the idealised CFG tilt).",
              choices=SAMPLERS, grid=True),
    Parameter("steps", "int", 50, "Denoising steps per sample.", low=1, grid=True),
    Parameter("eta", "float", 0.0, "DDIM noise weight (ddpm uses 1).", low=0, high=1, grid=True),
    Parameter("mutation", "float", 0.0, "Variance added to each generated set (finetuning error).", low=0,
              grid=True),
    # The measured structure of finetuning (issue 13; docs/theory.md, "What finetuning really does").
    Parameter("var_fidelity", "float", None,
              "Variance fidelity rho_v: finetuning moves ln var this fraction from the prior toward the data's "
              "(default: the variance moves linearly with fidelity).", low=0, high=1, grid=True),
    Parameter("var_shift", "float", 0.0,
              "Log-space finetuning error mu of the variance: every finetuned variance is multiplied by exp(mu).",
              grid=True),
    Parameter("process_noise", "float", 0.0,
              "SD of the per-iteration finetuning noise on the conditional model's mean, in trait units "
              "(particle engine; the moments engine gives expectations).", low=0, grid=True),
    # The calibrated model (issue 21): what one fit shared by every CFG setting adds.
    Parameter("uncond_drift", "float", 0.0,
              "Fidelity a of the unconditional branch without condition drop (the branches share weights); "
              "the default uncond fidelity is min(1, a + drop x fidelity).", low=0, high=1, grid=True),
    Parameter("guidance_gain", "float", 1.0,
              "Guidance gain g: the sampler guides with the peak scale 1 + g (cfg - 1), shaped by the CFG "
              "schedule as cfg is; cfg stays the real CFG scale.", low=0, grid=True),
    Parameter("selection_slope", "float", None,
              "Selection slope beta on ln var (a calibration's): the generated ln var is the finetuned model's plus "
              "beta times the mean over the sampler's steps of ln(the CFG schedule's scale), the sampler's law "
              "setting the mean only (default: the sampler's law for both; moments engine only).", grid=True),
    # The noise scheduler the sampler steps with (diffusers' configuration; a preset, then overrides).
    Parameter("scheduler", "text", "sd15",
              "Scheduler preset: sd15 (SD v1.5), sd21v (SD 2.1, v-prediction), sd3 (flow matching, shift 3).",
              choices=SCHEDULER_PRESETS),
    Parameter("beta_schedule", "text", None, "Scheduler: beta schedule (default: the preset's).",
              choices=BETA_SCHEDULES),
    Parameter("timestep_spacing", "text", None, "Scheduler: timestep spacing (default: each solver's own).",
              choices=TIMESTEP_SPACINGS),
    Parameter("train_timesteps", "int", None, "Scheduler: number of training timesteps (default: the preset's).",
              low=2),
    Parameter("prediction_type", "text", None, "Scheduler: what the model predicts (default: the preset's).",
              choices=PREDICTION_TYPES),
    Parameter("shift", "float", None, "Scheduler: flow matching's time shift (default: the preset's).", low=0,
              open_low=True),
    Parameter("karras", "flag", False, "Scheduler: Karras sigmas (euler, heun, dpm++)."),
    # The base model and the real data of the theory, one value per trait axis.
    Parameter("cond_mean", "float", 1.0, "Base conditional mean, one per trait axis.", per_axis=True),
    Parameter("cond_var", "float", 1.0, "Base conditional variance, one per axis.", low=0, open_low=True,
              per_axis=True),
    Parameter("uncond_mean", "float", 0.0, "Base unconditional mean, one per axis.", per_axis=True),
    Parameter("uncond_var", "float", 1.5, "Base unconditional variance, one per axis.", low=0, open_low=True,
              per_axis=True),
    Parameter("data_mean", "float", 1.0, "Real data mean, one per axis.", per_axis=True),
    Parameter("data_var", "float", 1.0, "Real data variance, one per axis.", low=0, open_low=True, per_axis=True),
    # Finite populations.
    Parameter("population", "int", None,
              "Individuals (images) per iteration; moments engine: the expected finite-N refit "
              "(default: infinite), particle engine: 1000.", low=2),
    Parameter("replicates", "int", 100, "Particle engine: replicates per grid point.", low=1),
    Parameter("seed", "int", 0, "Random seed; every random stream derives from it.", low=0),
    Parameter("dims", "int", None, "Particle engine: trait axes (default: as many as the model options give).",
              low=1),
    Parameter("modes", "int", 1, "Particle engine: mixture components of the data.", low=1),
    Parameter("particle_model", "text", "sampler",
              "Particle engine: sampler (the guided-sampler chain) or qg (the classic loop with the CFG tilt).",
              choices=PARTICLE_MODELS),
    Parameter("resampling", "text", "multinomial", "Particle engine, qg model: how offspring are drawn.",
              choices=RESAMPLING),
    Parameter("cluster", "text", None, "Particle engine: address of a Dask scheduler (tcp://HOST:8786)."),
    Parameter("data_workflow", "text", "replace",
              "Training set of each iteration: the newest generation (replace), all real and generated data so far "
              "(accumulate), or a sample of one generation's size from all of it (accumulate-subsample).",
              choices=DATA_WORKFLOWS, grid=True),
)

#: Particle populations when ``population`` is not given (the moments engine then takes N as infinite).
PARTICLE_POPULATION = 1000

#: Parameters of ``chain run`` that only the real chain has.
RUN_PARAMETERS: dict[str, Parameter] = _registry(
    Parameter("data", "text", "digits:500",
              "Image folder with metadata.jsonl; hf:NAME[:SPLIT][?image=COL&caption=COL] (Hugging Face "
              "datasets); or digits / digits:N."),
    Parameter("backend", "text", "tiny", "tiny (offline, CPU) or sd (diffusers Stable Diffusion).",
              choices=BACKENDS),
    Parameter("model", "text", None, "sd: a diffusers model id or local directory."),
    Parameter("redifine", "flag", False, "ReDiFine: condition drop 0.2 plus the cosine CFG schedule."),
    Parameter("per_caption", "int", 1, "Images generated per caption.", low=1),
    Parameter("lora_rank", "int", None, "sd: LoRA rank of the finetuning.", low=1),
    Parameter("full_finetune", "flag", False, "Finetune all UNet weights instead of LoRA."),
    # Adam's step is about the learning rate per weight: at 1 and above every step rewrites the weights, so
    # finetuning can only diverge (the backends' defaults are 1e-3 and 1e-4).
    Parameter("learning_rate", "float", None, "Finetuning learning rate.", low=0, open_low=True, high=1),
    Parameter("train_steps", "int", None, "Finetuning steps per iteration.", low=1),
    Parameter("batch_size", "int", None, "Finetuning batch size.", low=1),
    Parameter("resolution", "int", None, "Image side in pixels.", low=1),
    Parameter("device", "text", None, "cpu, cuda or cuda:N (default: cuda when present)."),
    Parameter("preset", "text", None,
              "tiny: the model, which fixes the image side: digits8 (default; grey 8 px, base model learnt from the "
              "digits) or rgb16, rgb32, rgb64 (RGB, base model learnt from --data).", choices=TINY_PRESETS),
    Parameter("text_encoder", "text", None,
              "tiny: caption encoder: hashed (digits8's, no download) or minilm (frozen all-MiniLM-L6-v2; "
              "default of the rgb presets).", choices=TEXT_ENCODERS),
)

#: The parameters ``chain run`` takes, in order: what each iteration does, then the real chain's own.
RUN_OPTIONS = ("data", "backend", "model", "iterations", "cfg", "schedule", "drop", "redifine", "finetune",
               "per_caption", "real_fraction", "steps", "sampler", "lora_rank", "full_finetune", "learning_rate",
               "train_steps", "batch_size", "resolution", "seed", "device", "preset", "text_encoder",
               "data_workflow")

#: ``chain run`` settings whose sensible value depends on the backend (None in the run's options means these).
BACKEND_DEFAULTS = {
    "tiny": {
        "model": None, "steps": 25, "learning_rate": 1e-3, "train_steps": 150, "batch_size": 64,
        "resolution": None, "lora_rank": None,
    },
    "sd": {
        "model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "steps": 50, "learning_rate": 1e-4,
        "train_steps": 100, "batch_size": 4, "resolution": None, "lora_rank": 4,
    },
}

#: ``chain run``'s own defaults where they differ from :attr:`Parameter.default` (a real chain is slow).
RUN_DEFAULTS = {"iterations": 5}

#: What ``qtm simulate`` sweeps when given no grid: CFG 1, 3, 7.5 x plain or each ReDiFine part, for
#: the reference setup (finetuning from the base model with fidelity 0.5). A calibration
#: (:mod:`qtm.calibration`, the shipped one by default) replaces the fidelity and the model; see
#: :mod:`commands.qtm_simulate`.
DEFAULT_SWEEP = {"cfg": "1,3,7.5", "schedule": "constant,cosine", "drop": "0,0.2", "fidelity": "0.5"}

#: Every parameter, of the theory and of the real chain, by name.
ALL_PARAMETERS: dict[str, Parameter] = {**PARAMETERS, **RUN_PARAMETERS}

#: The parameters a ``qtm simulate`` grid sweeps, in the table's column order.
GRID_PARAMETERS = tuple(name for name, p in PARAMETERS.items() if p.grid)


def effective_eta(sampler: str, eta: float) -> float:
    """The DDIM noise weight a sampler really uses: DDPM is DDIM with eta = 1.

    Examples
    --------
    >>> effective_eta("ddpm", 0.0), effective_eta("ddim", 0.3)
    (1.0, 0.3)
    """
    return 1.0 if sampler == "ddpm" else eta


def effective_cfg(cfg, guidance_gain):
    """The peak guidance scale the sampler uses: ``w_eff = 1 + g (cfg - 1)`` for the guidance gain g.

    Written as ``cfg + (g - 1)(cfg - 1)``, equal in exact arithmetic, so that g = 1 returns ``cfg``
    bit for bit. g < 1 guides more weakly than the scale says (CFG 1 stays unguided).

    Examples
    --------
    >>> effective_cfg(7.5, 1.0), effective_cfg(7.5, 0.5), effective_cfg(1.0, 0.5)
    (7.5, 4.25, 1.0)
    """
    return cfg + (guidance_gain - 1.0) * (cfg - 1.0)


def default_uncond_fidelity(drop, fidelity, uncond_drift=0.0):
    """rho_u when it is not given: ``min(1, a + drop * fidelity)``, the model's assumption (fitted by ``validate``).

    Condition drop p shows the unconditional branch the data in a fraction p of the examples (p rho); the
    drift a is how far it moves without condition drop, because the branches share their weights. a = 0
    returns ``drop * fidelity`` bit for bit.

    Examples
    --------
    >>> float(default_uncond_fidelity(0.2, 0.5)), float(default_uncond_fidelity(0.2, 0.5, 0.3))
    (0.1, 0.4)
    >>> float(default_uncond_fidelity(1.0, 0.9, 0.3))
    1.0
    """
    return np.minimum(1.0, uncond_drift + drop * fidelity)


def uncond_share(fidelity, uncond_fidelity):
    """The share s = min(1, rho_u / rho) of the finetuning's variance terms the unconditional branch takes.

    The unconditional branch's variance fidelity is ``s * var_fidelity`` and its log shift
    ``s * var_shift``: it sees the finetuning in the proportion its mean does (rho_u / rho),
    capped at the conditional branch's. ``rho_u = 0`` gives 0 (the branch is not finetuned),
    ``rho = 0 < rho_u`` gives 1 (the cap). See docs/theory.md.

    Examples
    --------
    >>> uncond_share([0.5, 0.5, 0.7, 0.0], [0.1, 0.0, 0.88, 0.3]).tolist()
    [0.2, 0.0, 1.0, 1.0]
    """
    rho = np.asarray(fidelity, dtype=float)
    rho_u = np.asarray(uncond_fidelity, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(rho_u == 0, 0.0, np.minimum(1.0, rho_u / rho))


def check_options(options: Mapping[str, object], *, names: Iterable[str] | None = None, flags: bool = False) -> dict:
    """Validate several parameters at once; return their canonical values.

    Parameters
    ----------
    options : mapping
        Parameter names to values.
    names : iterable of str, optional
        The names allowed (default: every known parameter); any other key is an error.
    flags : bool
        Name the flags (``--real-fraction``) in errors, as the command line does.

    Examples
    --------
    >>> check_options({"cfg": 3, "finetune": "base"})["finetune"]
    'base'
    """
    allowed = set(ALL_PARAMETERS if names is None else names)
    checked = {}
    for name, value in options.items():
        if name not in allowed:
            raise QTMError(f"unknown parameter {name!r}; known: {', '.join(sorted(allowed))}")
        p = ALL_PARAMETERS[name]
        checked[name] = p.check(value, label=p.flag if flags else name)
    return checked
