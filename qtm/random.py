"""The one helper that turns a ``random_state`` argument into a generator."""

from __future__ import annotations

import numpy as np

from qtm.errors import QTMError


def check_random_state(random_state=None) -> np.random.Generator:
    """Return a :class:`numpy.random.Generator` for ``random_state``.

    Parameters
    ----------
    random_state : None, int, numpy.random.SeedSequence or numpy.random.Generator
        ``None`` gives fresh entropy, an int or a seed sequence a reproducible
        generator, and a generator is returned as it is.

    Examples
    --------
    >>> rng = check_random_state(1)
    >>> float(rng.standard_normal()) == float(check_random_state(1).standard_normal())
    True
    """
    if random_state is None or isinstance(random_state, (int, np.integer, np.random.SeedSequence)):
        if isinstance(random_state, (int, np.integer)) and random_state < 0:
            raise QTMError(f"seed must be >= 0, got {random_state}")
        return np.random.default_rng(random_state)
    if isinstance(random_state, np.random.Generator):
        return random_state
    raise QTMError(
        f"random_state must be None, an int or a numpy Generator, got {type(random_state).__name__}"
    )


def replicate_seeds(seed: int, count: int, *, offset: int = 0) -> np.ndarray:
    """Independent 64-bit seeds for replicates ``offset .. offset+count-1`` of a run with ``seed``.

    Replicate ``r`` always gets the same seed, however the replicates are split
    into chunks, so a result can be reproduced replicate by replicate.
    """
    if seed < 0:
        raise QTMError(f"seed must be >= 0, got {seed}")
    states = [np.random.SeedSequence([seed, offset + r]).generate_state(1, dtype=np.uint64) for r in range(count)]
    return np.array([state[0] for state in states], dtype=np.uint64)


def derive_seed(root: int, *keys: int) -> int:
    """A 32-bit seed for the random stream named by ``keys`` under the run seed ``root``.

    Every random stream of the project (images, finetuning passes, reference samples,
    bootstrap resamples, verification checks) takes its seed from this one helper, keyed
    by *where* the draw happens (a stream tag, an iteration, a caption, a copy), never by
    the order in which work is done: a resumed or re-split computation draws exactly what
    an uninterrupted one draws, and two runs with different roots share no stream.

    Parameters
    ----------
    root : int >= 0
        The run's (or check's) seed.
    *keys : int >= 0
        The stream's address: a tag for its purpose first, then indices.

    Examples
    --------
    >>> derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(1, 1, 2)
    True
    """
    entropy = [int(root), *(int(k) for k in keys)]
    if any(e < 0 for e in entropy):
        raise QTMError(f"seed and stream keys must be >= 0, got {entropy}")
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])
