"""validate.diversity's precision, recall, density and coverage equal the prdc package's (Naeem et al. 2020).

``prdc.compute_prdc(real_features, fake_features, nearest_k)`` takes the real set first, as
:func:`validate.diversity.prdc` does, and the same k. Deterministic (fixed seeds); the sets are continuous
random points, so no distance lies within float rounding of a ball's radius and the counts agree exactly.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from validate.diversity import prdc as our_prdc

prdc_package = pytest.importorskip("prdc")


@pytest.mark.parametrize(("seed", "n_real", "n_generated", "dims", "k", "shift"), [
    (0, 200, 150, 8, 5, 0.0),
    (1, 120, 300, 3, 3, 0.5),
    (2, 300, 300, 32, 5, 1.0),
    (3, 80, 60, 2, 10, 0.2),
])
def test_equals_the_prdc_package_on_random_point_sets(seed, n_real, n_generated, dims, k, shift):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(n_real, dims))
    # A narrower, shifted generated set: precision, recall, density and coverage all differ from 1.
    generated = 0.7 * rng.normal(size=(n_generated, dims)) + shift
    with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the set sizes
        theirs = prdc_package.compute_prdc(real, generated, nearest_k=k)
    ours = our_prdc(real, generated, k=k)
    for name in ("precision", "recall", "density", "coverage"):
        assert ours[name] == pytest.approx(float(theirs[name]), rel=1e-12, abs=1e-12), name
