"""The statistical verification suite: simulators against analytic quantitative genetics and each other.

Each check simulates at a sample size large enough to see small errors, compares
a few estimates with their analytic values and turns every difference into a
z-score ``(observed - expected) / standard_error`` (or takes a p-value, e.g. of a
Kolmogorov-Smirnov test of a distribution's shape). A check fails when its
smallest two-sided p-value falls below ``false_failure_rate / K`` (Bonferroni over
its ``K`` statistics), so that a correct simulator and a correct formula fail a
check with probability at most ``false_failure_rate`` (0.001 by default; at most
about 1% for the whole suite). Seeds are fixed: a run is reproducible, and the
designed rate is the chance over seeds.

=========================  ===========================================================
check                      compares
=========================  ===========================================================
``breeders_equation``      the response of an additive (``z = g + e``) population to
                           stabilizing and truncation selection with ``R = h^2 S``
                           (:func:`qtm.gaussian.inherit` with fidelity ``h^2``)
``gaussian_selection``     rejection-sampled stabilizing selection and CFG tilts
                           with :func:`qtm.gaussian.stabilizing_selection` and
                           :func:`qtm.gaussian.cfg_tilt`: moments and shape (KS test)
``truncation``             truncated samples with :func:`qtm.gaussian.truncation_selection`
                           and :func:`qtm.gaussian.central_truncation`
``mutation_selection``     a finite population under stabilizing selection and
                           mutation with the closed-form equilibrium variance
``bulmer``                 the infinitesimal model (midparent plus segregation) under
                           repeated stabilizing selection with Bulmer's recursion
``drift``                  repeated maximum-likelihood refits of ``N`` samples and the
                           particle engine's Wright-Fisher resampling with
                           :func:`qtm.gaussian.refit_expectation` and the moments engine
``particles_vs_moments``   the particle engine's guided-sampler chain with the moments
                           engine, iteration by iteration
``workflows``              the replace and accumulate data workflows (a Gaussian ML refit
                           and the particle engine) with the exact finite-t closed forms:
                           Shumailov's variance loss, the mean's linear drift under
                           replace, its bounded error tending to pi^2/6 under accumulate
=========================  ===========================================================

The first five live in :mod:`qtm.verify.quantgen`, then :mod:`qtm.verify.drift`,
:mod:`qtm.verify.engines` and :mod:`qtm.verify.workflows`; plots and summaries in :mod:`qtm.verify.report`. The exact
sampler map against diffusers' own scheduler needs torch, which ``qtm`` never imports:
that check lives with the real chain, in :mod:`chain.verify_sampler`, and runs through
the same :func:`run_checks` (``registry=``).

Examples
--------
>>> results = run_checks(["truncation"], size=0.05, seed=0, out=None)
>>> results[0].status
'pass'
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

from qtm.errors import QTMError
from qtm.random import check_random_state, derive_seed
from qtm.validation import check_positive, check_unit_interval
from qtm.verify.base import (
    CHECKS,
    FALSE_FAILURE_RATE,
    Check,
    CheckResult,
    Comparison,
    Verdict,
    evaluate,
)
from qtm.verify.report import format_result, plot_comparison, write_summary

__all__ = [
    "CHECKS",
    "FALSE_FAILURE_RATE",
    "Check",
    "CheckResult",
    "Comparison",
    "Verdict",
    "evaluate",
    "format_result",
    "plot_comparison",
    "run_checks",
]

#: The check families in the suite's order; each registers its checks in :data:`CHECKS` when imported.
FAMILIES = ("quantgen", "drift", "engines", "workflows")
for _family in FAMILIES:
    importlib.import_module(f"{__name__}.{_family}")


def run_checks(
    names=None,
    *,
    size: float = 1.0,
    seed: int = 0,
    out=None,
    false_failure_rate: float = FALSE_FAILURE_RATE,
    echo: Callable[[str], None] | None = None,
    registry: Mapping[str, Check] | None = None,
) -> list[CheckResult]:
    """Run checks of the suite, write one plot per check and a ``verify.json`` summary into ``out``.

    Parameters
    ----------
    names : sequence of str, optional
        Checks to run (all of ``registry`` by default), in the suite's order.
    size : float
        Factor on every sample size (1: the full suite; small values for a smoke run,
        which keeps the false-failure rate but loses power).
    seed : int
        The suite's root seed: each check draws from
        ``qtm.random.derive_seed(seed, crc32(name))``, so a check's result does not
        depend on which other checks run.
    out : path, optional
        Folder for the plots and ``verify.json``; ``None`` writes nothing.
    false_failure_rate : float
        The designed chance that one check fails with a correct simulator and formula.
    echo : callable, optional
        Receives one line per check as it finishes.
    registry : mapping of str to Check, optional
        The checks to choose from (:data:`CHECKS`, the ``qtm`` suite, by default); a
        package above ``qtm`` passes its own (:func:`chain.verify_sampler.run_check`).

    Returns
    -------
    list of CheckResult
        One per check run: ``status`` ("pass", "fail", "error", "skipped"), the verdict and the comparison.

    Examples
    --------
    >>> [(r.name, r.status) for r in run_checks(["truncation", "bulmer"], size=0.1)]
    [('truncation', 'pass'), ('bulmer', 'pass')]
    """
    size = float(check_positive(size, "size"))
    check_unit_interval(false_failure_rate, "false_failure_rate", closed_left=False)
    registry = CHECKS if registry is None else registry
    names = list(registry) if names is None else list(names)
    unknown = [name for name in names if name not in registry]
    if unknown:
        raise QTMError(f"unknown check {unknown[0]!r}; choose from: {', '.join(registry)}")
    out = None if out is None else Path(out)
    results = []
    for name in [n for n in registry if n in names]:
        check = registry[name]
        why_not = check.unavailable()
        if why_not is not None:
            result = CheckResult(name, check.title, "skipped", None, None, None, why_not)
        else:
            rng = check_random_state(derive_seed(seed, zlib.crc32(name.encode())))
            try:
                comparison = check.compute(size=size, rng=rng)
                verdict = evaluate(comparison, false_failure_rate=false_failure_rate)
            except QTMError as error:
                # One check that cannot run (e.g. its inputs are refused) must not hide the others' results.
                comparison = verdict = None
                result = CheckResult(name, check.title, "error", None, None, None, str(error))
            if verdict is not None:
                plot = None if out is None else str(plot_comparison(comparison, verdict, out / f"{name}.png",
                                                                    title=check.title))  # fmt: skip
                status = "pass" if verdict.passed else "fail"
                result = CheckResult(name, check.title, status, verdict, comparison, plot, comparison.note)
        results.append(result)
        if echo is not None:
            echo(format_result(result))
    if out is not None:
        write_summary(results, out / "verify.json", size=size, seed=seed, false_failure_rate=false_failure_rate)
    return results

