"""The interface every diffusion backend implements.

A backend holds one *current* model, which starts as the base (pretrained)
model. The chain runner only ever calls these methods, so the `sd` backend
(diffusers Stable Diffusion) and the offline `tiny` backend are interchangeable.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qtm.schedules import CFGSchedule

#: Called as ``progress(done, total)`` during long work; the CLI draws bars from it.
Progress = Callable[[int, int], None]


@contextlib.contextmanager
def disk_full_as_os_error(path: Path, *, needed: int):
    """Re-raise an error of a weights writer as ``OSError(ENOSPC)`` when the disk under ``path`` lacks ``needed`` bytes.

    torch.save and safetensors report a write that the disk refused as their own errors (torch:
    ``RuntimeError: ... inline_container.cc ... unexpected pos``; safetensors: ``SafetensorError``),
    not as the ``OSError`` the run turns into its one line for a full disk. The free space tells
    whether a full disk was the cause; any other error passes unchanged.

    Examples
    --------
    >>> import tempfile
    >>> with disk_full_as_os_error(Path(tempfile.gettempdir()), needed=1 << 80):  # doctest: +ELLIPSIS
    ...     raise RuntimeError("unexpected pos 64 vs 0")
    Traceback (most recent call last):
    ...
    OSError: [Errno 28] No space left on device: ...
    """
    try:
        yield
    except Exception as error:
        if isinstance(error, OSError) or _free_bytes(path) >= needed:
            raise
        raise OSError(errno.ENOSPC, "No space left on device", str(path)) from error


def _free_bytes(path: Path) -> float:
    """Bytes free on the disk of ``path`` or its nearest existing folder (infinite when that cannot be read)."""
    for folder in (Path(path), *Path(path).parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                break
    return float("inf")


@dataclass
class FinetuneResult:
    """What one finetuning pass reports: its loss per optimisation step and its wall time."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


class Backend(ABC):
    """One diffusion model that can be finetuned and sampled."""

    #: Short name written into run.json (``"sd"``, ``"tiny"``).
    name: str

    @abstractmethod
    def finetune(
        self,
        images: Sequence,
        captions: Sequence[str],
        *,
        drop: float,
        start: str,
        seed: int,
        progress: Progress | None = None,
    ) -> FinetuneResult:
        """Finetune on ``images`` (PIL images) with ``captions``.

        ``start`` is ``"base"`` (reset to the pretrained model first, the reference
        setup) or ``"continue"`` (continue from the current model; :data:`qtm.params.FINETUNE_STARTS`). With
        probability ``drop`` each example's caption is replaced by the empty
        prompt, redrawn every time the example is seen (condition-drop finetuning).
        """

    @abstractmethod
    def generate(
        self,
        captions: Sequence[str],
        *,
        cfg: float,
        schedule: CFGSchedule,
        seeds: Sequence[int],
        steps: int,
        sampler: str,
        progress: Progress | None = None,
    ) -> list:
        """One PIL image per caption, image ``i`` drawn with ``seeds[i]``, guided per step by ``schedule``."""

    @abstractmethod
    def save_weights(self, directory: Path) -> dict:
        """Save what the last finetuning changed into ``directory``; return a JSON-ready description."""

    @abstractmethod
    def load_weights(self, directory: Path) -> None:
        """Make the model saved by :meth:`save_weights` in ``directory`` the current model."""

    def describe(self) -> dict:
        """Settings of the backend that change its results (written into run.json)."""
        return {"name": self.name}
