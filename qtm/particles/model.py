"""Parameter classes of the particle simulator, validated on construction (one-line :class:`QTMError`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from qtm.diffusion import DiffusionConfig
from qtm.errors import QTMError
from qtm.params import NETWORK_SAMPLERS, PARAMETERS, default_uncond_fidelity, effective_eta, uncond_share
from qtm.particles.counter_rng import MAX_BLOCK, MAX_ITERATIONS
from qtm.particles.population import FINETUNE_TERMS
from qtm.schedules import CFGSchedule
from qtm.validation import as_float_array, check_choice, check_int, check_positive, check_unit_interval

#: Distance between neighbouring modes, in data standard deviations, when a mixture is
#: built from one mean for all its modes (well separated, so the labels are meaningful).
MODE_SPACING = 4.0

FITNESS_KINDS = ("neutral", "stabilizing", "truncation", "tilt")


@dataclass(frozen=True)
class Mixture:
    """A Gaussian mixture with independent axes: weights (M,), means and variances (M, d).

    Examples
    --------
    >>> mix = Mixture.build(0.0, 1.0, modes=3, dims=2)
    >>> mix.means[:, 0].tolist(), mix.weights.tolist()
    ([-4.0, 0.0, 4.0], [0.3333333333333333, 0.3333333333333333, 0.3333333333333333])
    """

    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray

    @classmethod
    def build(cls, mean, var, *, modes: int = 1, dims: int = 1, name: str = "data") -> Mixture:
        """A mixture of ``modes`` equally weighted components on ``dims`` axes.

        ``mean`` and ``var`` broadcast to (modes, dims): a scalar, one value per axis (d,),
        or one row per component (M, d). A mean that is the same for all components is
        spread into modes ``MODE_SPACING`` standard deviations apart, centred on it.
        """
        modes = check_int(modes, "modes", minimum=1)
        dims = check_int(dims, "dims", minimum=1)
        mean = as_float_array(mean, f"{name}_mean")
        var = check_positive(var, f"{name}_var")
        try:
            means = np.broadcast_to(mean, (modes, dims)).astype(float)
            variances = np.broadcast_to(var, (modes, dims)).astype(float)
        except ValueError:
            raise QTMError(
                f"{name}_mean/{name}_var must be a number, one value per axis ({dims}) or one row per mode "
                f"({modes}x{dims}), got shapes {mean.shape} and {var.shape}"
            ) from None
        if modes > 1 and mean.ndim < 2:
            means = means + MODE_SPACING * np.sqrt(variances) * (np.arange(modes) - (modes - 1) / 2)[:, None]
        return cls(np.full(modes, 1.0 / modes), means, variances)

    @property
    def modes(self) -> int:
        return self.means.shape[0]

    @property
    def dims(self) -> int:
        return self.means.shape[1]


@dataclass(frozen=True)
class Fitness:
    """Fitness of the classic loop.

    Parameters
    ----------
    kind : {"neutral", "stabilizing", "truncation", "tilt"}
        ``stabilizing``: W(z) = exp(-Σ (z-θ)²/(2ω²)); ``truncation``: keep the top
        fraction ``keep`` on axis 0; ``tilt``: the CFG tilt (p_c/p_u)^(w-1) of the models
        refitted to the population each generation (w = ``cfg``).

    Examples
    --------
    >>> Fitness("stabilizing", omega2=4.0).kind
    'stabilizing'
    """

    kind: str = "neutral"
    theta: float = 0.0
    omega2: float = 1.0
    keep: float = 0.5
    cfg: float = 1.0

    def __post_init__(self):
        check_choice(self.kind, "fitness", FITNESS_KINDS)
        as_float_array(self.theta, "theta")
        check_positive(self.omega2, "omega2")
        check_unit_interval(self.keep, "keep", closed_left=False)
        as_float_array(self.cfg, "cfg")


@dataclass(frozen=True)
class Finetune:
    """How a model is refitted: fidelities of the two branches, the prior they move from, and finetuning's errors.

    ``uncond_fidelity`` defaults to ``drop * fidelity`` (condition drop p: the model's assumption).
    ``var_fidelity`` (None or NaN: the variance moves linearly with the fidelity) and ``var_shift``
    move each variance in log space, the unconditional branch's with the share
    ``s = min(1, rho_u / rho)`` of both (:func:`qtm.gaussian.inherit`, :func:`qtm.params.uncond_share`);
    ``process_noise`` is the SD of the noise on the conditional means, drawn per replicate and
    iteration (docs/theory.md).

    Examples
    --------
    >>> Finetune(0.5, var_fidelity=0.4, var_shift=0.2, uncond_fidelity=0.25).terms.round(3).tolist()
    [0.5, 0.25, 0.4, 0.2, 1.221, 1.105, 0.0]
    """

    fidelity: float = 1.0
    drop: float = 0.0
    uncond_fidelity: float | None = None
    finetune: str = "base"
    var_fidelity: float | None = None
    var_shift: float = 0.0
    process_noise: float = 0.0

    def __post_init__(self):
        for name in ("fidelity", "drop", "finetune", "var_shift", "process_noise"):
            PARAMETERS[name].check(getattr(self, name))
        for name in ("uncond_fidelity", "var_fidelity"):
            if not _is_missing(getattr(self, name)):
                PARAMETERS[name].check(getattr(self, name))

    @property
    def rho_u(self) -> float:
        if _is_missing(self.uncond_fidelity):
            return float(default_uncond_fidelity(self.drop, self.fidelity))
        return float(self.uncond_fidelity)

    @property
    def terms(self) -> np.ndarray:
        """The kernels' ``finetune`` argument (:data:`qtm.particles.population.FINETUNE_TERMS`)."""
        share = float(uncond_share(self.fidelity, self.rho_u))
        rho_v = math.nan if _is_missing(self.var_fidelity) else float(self.var_fidelity)
        mu = float(self.var_shift)
        values = {
            "fidelity": float(self.fidelity), "uncond_fidelity": self.rho_u,
            "var_fidelity": rho_v, "uncond_var_fidelity": share * rho_v,
            "var_factor": math.exp(mu), "uncond_var_factor": math.exp(share * mu),
            "process_noise": float(self.process_noise),
        }
        return np.array([values[name] for name in FINETUNE_TERMS])


@dataclass(frozen=True)
class QGSetup:
    """The classic quantitative-genetics loop (one Gaussian data distribution, d axes).

    ``data_workflow`` says which individuals the next generation is selected from: the newest
    generation (``replace``), the pool of the initial sample and every generation
    (``accumulate``; it holds ``(generations + 1) x population x dims`` floats per replicate), or
    ``population`` of them drawn without replacement (``accumulate-subsample``).

    Examples
    --------
    >>> setup = QGSetup(population=100, generations=5, fitness=Fitness("stabilizing", omega2=9.0))
    >>> setup.data_mean.shape
    (1,)
    """

    population: int = 1000
    generations: int = 10
    dims: int = 1
    data_mean: np.ndarray | float = 0.0
    data_var: np.ndarray | float = 1.0
    fitness: Fitness = field(default_factory=Fitness)
    environmental_var: np.ndarray | float = 0.0
    mutation: np.ndarray | float = 0.0
    resampling: str = PARAMETERS["resampling"].default
    real_fraction: float = 0.0
    finetune: Finetune = field(default_factory=Finetune)
    cond_mean: np.ndarray | float = 0.0
    cond_var: np.ndarray | float = 1.0
    uncond_mean: np.ndarray | float = 0.0
    uncond_var: np.ndarray | float = 1.0
    data_workflow: str = PARAMETERS["data_workflow"].default

    def __post_init__(self):
        check_int(self.population, "population", minimum=2)
        PARAMETERS["data_workflow"].check(self.data_workflow)
        _check_iterations(self.generations, "generations")
        dims = check_int(self.dims, "dims", minimum=1)
        set_ = object.__setattr__
        set_(self, "data_mean", _axes(as_float_array(self.data_mean, "data_mean"), dims, "data_mean"))
        set_(self, "data_var", _axes(check_positive(self.data_var, "data_var"), dims, "data_var"))
        for name in ("cond_var", "uncond_var"):
            set_(self, name, _axes(check_positive(getattr(self, name), name), dims, name))
        for name in ("cond_mean", "uncond_mean"):
            set_(self, name, _axes(as_float_array(getattr(self, name), name), dims, name))
        for name in ("environmental_var", "mutation"):
            set_(self, name, _axes(PARAMETERS["mutation"].check(getattr(self, name), label=name), dims, name))
        PARAMETERS["resampling"].check(self.resampling)
        PARAMETERS["real_fraction"].check(self.real_fraction)
        if self.fitness.kind == "truncation" and self.kept < 1:
            raise QTMError(f"keep={self.fitness.keep:g} keeps nobody of {self.population}; raise keep")

    @property
    def kept(self) -> int:
        """Number of individuals truncation selection keeps."""
        return round(self.fitness.keep * self.population)

    @property
    def n_real(self) -> int:
        return round(self.real_fraction * self.population)


@dataclass(frozen=True)
class ChainSetup:
    """The guided-sampler chain on a Gaussian mixture with M modes and d axes.

    Examples
    --------
    >>> setup = ChainSetup.build(population=100, iterations=3, modes=2, dims=2, cfg=3.0, steps=10)
    >>> setup.data.modes, setup.scales.shape
    (2, (10,))
    """

    population: int
    iterations: int
    data: Mixture
    cond: Mixture
    uncond: Mixture
    finetune: Finetune
    cfg: float
    schedule: CFGSchedule
    sampler: str
    steps: int
    eta: float
    mutation: np.ndarray
    real_fraction: float
    diffusion: DiffusionConfig
    data_workflow: str = PARAMETERS["data_workflow"].default

    @classmethod
    def build(cls, *, population=1000, iterations=10, modes=1, dims=1, data_mean=0.0, data_var=1.0,
              cond_mean=None, cond_var=None, uncond_mean=None, uncond_var=None, fidelity=1.0, drop=0.0,
              uncond_fidelity=None, finetune="base", cfg=7.5, schedule="constant", sampler="ddim", steps=25,
              eta=0.0, mutation=0.0, real_fraction=0.0, var_fidelity=None, var_shift=0.0, process_noise=0.0,
              diffusion=None, data_workflow="replace") -> ChainSetup:
        """Validate and assemble a setup; base models default to the data distribution.

        ``data_workflow``: what each refit sees, the newest set (``replace``), the pool of D_0 and
        every set so far (``accumulate``; ``(iterations + 1) x population x dims`` floats per
        replicate) or ``population`` individuals drawn from it (``accumulate-subsample``).
        """
        population = check_int(population, "population", minimum=2)
        iterations = _check_iterations(iterations, "iterations")
        if population >= MAX_BLOCK:
            raise QTMError(f"population must be < {MAX_BLOCK} (the random-number layout), got {population}")
        data = Mixture.build(data_mean, data_var, modes=modes, dims=dims, name="data")
        cond = Mixture.build(data_mean if cond_mean is None else cond_mean,
                             data_var if cond_var is None else cond_var, modes=modes, dims=dims, name="cond")
        uncond = Mixture.build(data_mean if uncond_mean is None else uncond_mean,
                               data_var if uncond_var is None else uncond_var, modes=modes, dims=dims,
                               name="uncond")
        if PARAMETERS["sampler"].check(sampler) not in NETWORK_SAMPLERS:
            raise QTMError(f"sampler {sampler!r} has no particle version in model 'sampler'; use model 'qg' for it")
        steps = PARAMETERS["steps"].check(steps)
        eta = effective_eta(sampler, float(PARAMETERS["eta"].check(eta)))
        if dims * (steps + 2) >= MAX_BLOCK:
            raise QTMError(f"dims x (steps + 2) must be < {MAX_BLOCK} (the random-number layout), got "
                           f"{dims * (steps + 2)}")
        return cls(
            population=population, iterations=iterations, data=data, cond=cond, uncond=uncond,
            finetune=Finetune(fidelity, drop, uncond_fidelity, finetune, var_fidelity, var_shift, process_noise),
            cfg=float(PARAMETERS["cfg"].check(cfg)),
            schedule=CFGSchedule.parse(schedule), sampler=sampler, steps=steps, eta=eta,
            mutation=_axes(PARAMETERS["mutation"].check(mutation), dims, "mutation"),
            real_fraction=float(PARAMETERS["real_fraction"].check(real_fraction)),
            diffusion=diffusion or DiffusionConfig(),
            data_workflow=PARAMETERS["data_workflow"].check(data_workflow),
        )

    @property
    def step_alphas(self) -> tuple[np.ndarray, np.ndarray]:
        return self.diffusion.step_alphas(self.steps)

    @property
    def scales(self) -> np.ndarray:
        abar_t, _ = self.step_alphas
        return self.schedule.scales(self.cfg, self.steps, alphas_cumprod=abar_t)

    @property
    def n_real(self) -> int:
        return round(self.real_fraction * self.population)


def _check_iterations(value, name: str) -> int:
    value = check_int(value, name, minimum=1)
    if value >= MAX_ITERATIONS:
        raise QTMError(f"{name} must be < {MAX_ITERATIONS} (the random-number layout), got {value}")
    return value


def _axes(value: np.ndarray, dims: int, name: str) -> np.ndarray:
    try:
        return np.broadcast_to(value, (dims,)).astype(float)
    except ValueError:
        raise QTMError(f"{name} must be a number or one value per axis ({dims}), got {value.shape}") from None


def _is_missing(value) -> bool:
    """None or NaN: the parameter takes its default (a table column of a grid marks gaps with NaN)."""
    return value is None or (isinstance(value, float) and math.isnan(value))
