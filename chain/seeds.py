"""Seeds of a chain run, derived deterministically from the run seed.

Every random choice of a run is keyed by where it happens (iteration, caption,
copy), never by the order in which work is done, so a resumed run draws exactly
what an uninterrupted run draws (:func:`qtm.random.derive_seed`). The run seed is checked where it
enters, by :meth:`chain.run_parameters.RunParameters.resolve`.
"""

from __future__ import annotations

from qtm.random import derive_seed

# Distinct tags keep the streams of different purposes apart for the same iteration.
_IMAGE, _FINETUNE, _REAL_MIX, _SUBSAMPLE = 0, 1, 2, 3


def image_seed(run_seed: int, iteration: int, caption_index: int, copy: int = 0) -> int:
    """Seed of image ``copy`` of caption ``caption_index`` generated at ``iteration``.

    Examples
    --------
    >>> image_seed(0, 1, 2) == image_seed(0, 1, 2, copy=0) != image_seed(0, 1, 2, copy=1)
    True
    """
    return derive_seed(run_seed, _IMAGE, iteration, caption_index, copy)


def finetune_seed(run_seed: int, iteration: int) -> int:
    """Seed of the finetuning pass of ``iteration`` (batch order, noise, condition drops).

    Examples
    --------
    >>> finetune_seed(0, 3) == finetune_seed(0, 3)
    True
    """
    return derive_seed(run_seed, _FINETUNE, iteration)


def real_mix_seed(run_seed: int, iteration: int) -> int:
    """Seed of the choice of which generated examples real ones replace at ``iteration`` (``--real-fraction``).

    Examples
    --------
    >>> real_mix_seed(0, 1) != finetune_seed(0, 1)
    True
    """
    return derive_seed(run_seed, _REAL_MIX, iteration)


def subsample_seed(run_seed: int, iteration: int) -> int:
    """Seed of the budget-size sample of all data so far that iteration ``iteration`` trains on
    (``--data-workflow accumulate-subsample``).

    Examples
    --------
    >>> subsample_seed(0, 1) not in (real_mix_seed(0, 1), finetune_seed(0, 1))
    True
    """
    return derive_seed(run_seed, _SUBSAMPLE, iteration)
