"""The probability-flow ODE and reverse SDE limits of :mod:`qtm.continuous`, compiled: one point's law, for the
chain kernel and (looped over arrays, :func:`continuous_laws`) for :func:`qtm.continuous.continuous_moments`.

The ODE's mean weight ``J = w 2F1((1-w)/2, 1; 3/2; z)`` (also :mod:`qtm.continuous`'s). SciPy's general
``hyp2f1`` costs 0.25 us per call for ``z <= 1/2`` and up to 30 us as ``z -> 1`` (a collapsing chain, where
``v_c / v_u -> 0``), and loses up to 5 digits on the other side once ``v_c / v_u`` passes 1e4 (it is handed
``z``, not ``1 - z``). Here ``G(a, z) = 2F1(a, 1; 3/2; z)`` is summed from whichever of two series converges at
rate at most 1/2:

- ``z <= 1/2``: Gauss's series ``sum_n (a)_n / (3/2)_n z^n``;
- ``z > 1/2``, with ``q = 1 - z`` taken exactly as ``v_c / v_u`` (no rounding of ``z`` near 1): the connection
  formula (Abramowitz & Stegun 15.3.6, whose second series sums to ``z^(-1/2)`` for these parameters)
  ``G = sum_n (a)_n / (a + 1/2)_n q^n / (1 - 2a) + B(a) q^(1/2 - a) z^(-1/2)``,
  ``B(a) = Gamma(3/2) Gamma(a - 1/2) / Gamma(a)``; at its poles ``a = 1/2 - m`` (even w) the logarithmic form
  (15.3.10-11) instead. Within 1e-3 of a pole the two terms cancel, and SciPy's ``hyp2f1`` is called: accurate
  there but next to the pole ``a = 1/2`` (w within 1e-3 of 0, or of -1 when ``v_c > v_u``), where ``G`` depends
  on ``q^(1/2 - a)`` and SciPy, given ``z``, loses ``q`` below about 1e-12.

``B`` depends on w alone and is computed once per point, not per iteration. ``tests/test_continuous_kernels.py``
checks ``G`` against mpmath at 40 digits (relative error below 1e-13 wherever it is finite) and the chain against
:mod:`qtm.continuous`'s operators.

Examples
--------
>>> from scipy.special import hyp2f1
>>> alpha, z = -3.25, 0.9
>>> value = hypergeometric_1_32(alpha, z, 1.0 - z, gap_constant(alpha))
>>> bool(abs(value / hyp2f1(alpha, 1.0, 1.5, z) - 1.0) < 1e-13)
True
"""

from __future__ import annotations

import math

import llvmlite.binding as llvm
from numba import njit, types
from numba.extending import get_cython_function_address

# Linked by name, not by address, so that the kernels that call it can be cached (a ctypes pointer cannot).
llvm.add_symbol("qtm_scipy_hyp2f1",
                get_cython_function_address("scipy.special.cython_special", "__pyx_fuse_1hyp2f1"))
_scipy_hyp2f1 = types.ExternalFunction("qtm_scipy_hyp2f1", types.float64(*[types.float64] * 4))

#: Where the two series meet: each converges at rate at most this.
SPLIT = 0.5
#: Within this distance of a pole a = 1/2 - m the connection formula cancels to about 1e-16 / distance: SciPy's turn.
POLE_WINDOW = 1e-3
#: A series stops when its term falls below this share of its sum.
TOLERANCE = 1e-17
MAX_TERMS = 1000


@njit(cache=True, error_model="numpy")
def gap_constant(alpha):
    """``B(alpha) = Gamma(3/2) Gamma(alpha - 1/2) / Gamma(alpha)``, or NaN within :data:`POLE_WINDOW` of a pole or
    where the Gamma functions overflow (then :func:`hypergeometric_1_32` calls SciPy)."""
    m = round(0.5 - alpha)
    if m >= 0 and abs(alpha - (0.5 - m)) < POLE_WINDOW:
        return math.nan
    if alpha <= 0.0 and alpha == math.floor(alpha):
        return 0.0
    if abs(alpha) > 150.0:
        return math.nan
    return 0.5 * math.sqrt(math.pi) * math.gamma(alpha - 0.5) / math.gamma(alpha)


@njit(cache=True, error_model="numpy")
def hypergeometric_1_32(alpha, z, q, gap):
    """``2F1(alpha, 1; 3/2; z)`` for z in [0, 1), given ``q = 1 - z`` exactly and ``gap = gap_constant(alpha)``."""
    if z <= SPLIT:
        value = _series(alpha, 1.5, z)
    else:
        m = round(0.5 - alpha)
        if m >= 0 and alpha == 0.5 - m:
            value = _at_pole(int(m), q)
        elif math.isnan(gap):
            value = math.nan
        else:
            value = _series(alpha, alpha + 0.5, q) / (1.0 - 2.0 * alpha) + gap * q ** (0.5 - alpha) / math.sqrt(z)
    if math.isnan(value):
        return _scipy_hyp2f1(alpha, 1.0, 1.5, z)
    return value


@njit(cache=True, error_model="numpy")
def _series(alpha, gamma, x):
    """``sum_n (alpha)_n / (gamma)_n x^n`` for 0 <= x <= 1/2 (NaN if it has not converged)."""
    term, total = 1.0, 1.0
    for n in range(MAX_TERMS):
        term *= (alpha + n) / (gamma + n) * x
        total += term
        # Past n > alpha - gamma the terms shrink by at least x per step: the tail is below the last term.
        if abs(term) <= TOLERANCE * abs(total) and n > alpha - gamma:
            return total
    return math.nan


@njit(cache=True, error_model="numpy")
def _at_pole(m, q):
    """``G(1/2 - m, 1 - q)`` for an integer m >= 0: the connection formula's limit, with ``ln q`` and digammas."""
    head = 0.0
    if m > 0:
        term, head = 1.0, 1.0
        for n in range(m - 1):
            term *= (0.5 - m + n) / (1.0 - m + n) * q
            head += term
        head /= 2.0 * m
    scale = 0.5  # C(2m, m) / 4^m q^m / 2
    for k in range(1, m + 1):
        scale *= (2 * k - 1) / (2.0 * k) * q
    log_q = math.log(q)
    digamma_gap = -2.0 * math.log(2.0)  # psi(n + 1/2) - psi(n + 1)
    term, total = 1.0, 0.0
    for n in range(MAX_TERMS):
        part = term * (log_q + digamma_gap)
        total += part
        if abs(part) <= TOLERANCE * abs(total) and n > 0:
            break
        term *= (0.5 + n) / (1.0 + n) * q
        digamma_gap += 1.0 / (n + 0.5) - 1.0 / (n + 1.0)
    return head - scale * total


@njit(cache=True, error_model="numpy")
def ode_gaps(w):
    """The two :func:`gap_constant` values :func:`ode_moments` needs for guidance scale w (one per branch)."""
    return gap_constant(0.5 * (1.0 - w)), gap_constant(1.0 + 0.5 * w)


@njit(cache=True, error_model="numpy")
def ode_moments(w, gap_below, gap_above, cond_mean, cond_var, uncond_mean, uncond_var):
    """:func:`qtm.continuous.continuous_moments` with ``sampler="ode"`` at one point."""
    weight = _ode_mean_weight(w, gap_below, gap_above, cond_var, uncond_var)
    return uncond_mean + (cond_mean - uncond_mean) * weight, uncond_var * (cond_var / uncond_var) ** w


@njit(cache=True, error_model="numpy")
def continuous_laws(sde, cond_mean, cond_var, uncond_mean, uncond_var, w, out_mean, out_var):
    """:func:`ode_moments` (``sde`` false) or :func:`sde_moments` of each point of equal-length flat arrays: the
    arrays of :func:`qtm.continuous.continuous_moments`."""
    for i in range(out_mean.size):
        if sde:
            out_mean[i], out_var[i] = sde_moments(w[i], cond_mean[i], cond_var[i], uncond_mean[i], uncond_var[i])
        else:
            out_mean[i], out_var[i] = ode_moments(w[i], *ode_gaps(w[i]), cond_mean[i], cond_var[i], uncond_mean[i],
                                                  uncond_var[i])


@njit(cache=True, error_model="numpy")
def _ode_mean_weight(w, gap_below, gap_above, cond_var, uncond_var):
    """``J = w 2F1((1-w)/2, 1; 3/2; 1 - v_c/v_u)``, written with the argument in [0, 1) on either side of
    ``v_c = v_u`` (the other side: ``w q 2F1(1 + w/2, 1; 3/2; 1 - q)``, ``q = v_u / v_c``)."""
    ratio = cond_var / uncond_var
    if ratio <= 1.0:
        return w * hypergeometric_1_32(0.5 * (1.0 - w), 1.0 - ratio, ratio, gap_below)
    q = 1.0 / ratio
    return w * q * hypergeometric_1_32(1.0 + 0.5 * w, 1.0 - q, q, gap_above)


@njit(cache=True, error_model="numpy")
def sde_moments(w, cond_mean, cond_var, uncond_mean, uncond_var):
    """:func:`qtm.continuous.continuous_moments` with ``sampler="sde"`` at one point.

    With ``phi(z) = (e^z - 1)/z`` as quotients while every argument is inside exp's range (a third of the
    transcendental calls), else in logarithms."""
    log_ratio = math.log(cond_var) - math.log(uncond_var)
    var_arg, mean_arg = (2.0 * w - 1.0) * log_ratio, -w * log_ratio
    if max(abs(var_arg), abs(mean_arg), abs(log_ratio)) < _PHI_RANGE:
        var = cond_var * _phi(var_arg) / _phi(log_ratio)
        weight = w * math.exp((w - 1.0) * log_ratio) * _phi(mean_arg) / _phi(-log_ratio)
    else:
        var = cond_var * math.exp(_log_phi(var_arg) - _log_phi(log_ratio))
        weight = w * math.exp((w - 1.0) * log_ratio + _log_phi(mean_arg) - _log_phi(-log_ratio))
    return uncond_mean + (cond_mean - uncond_mean) * weight, var


#: |z| below which ``phi(z) = (e^z - 1)/z`` and its products stay finite.
_PHI_RANGE = 300.0


@njit(cache=True, error_model="numpy")
def _phi(z):
    """``(e^z - 1)/z`` (1 at z = 0)."""
    if abs(z) < 1e-8:
        return 1.0 + 0.5 * z
    return math.expm1(z) / z


@njit(cache=True, error_model="numpy")
def _log_phi(z):
    """``ln((e^z - 1)/z)`` for any real z (0 at z = 0), without overflow or cancellation."""
    if abs(z) < 1e-8:
        return 0.5 * z
    return max(z, 0.0) + math.log(-math.expm1(-abs(z))) - math.log(abs(z))
