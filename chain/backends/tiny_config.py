"""The tiny backend's configuration: the architecture and base training of its model, and the presets of
``chain run --preset`` (:data:`PRESETS`) with the rule that ties them to ``--resolution``, ``--text-encoder``
and ``--data``.

``digits8`` (the default)
    A diffusers :class:`~diffusers.UNet2DModel` on grey 8×8 images whose class embedding
    is fed by the hashed-word encoder (:class:`chain.text_encoders.HashTextEncoder`: each
    word hashed into one of ``vocabulary`` buckets, the bucket embeddings averaged). Its
    base model is trained on scikit-learn's handwritten digits, captioned like
    ``"a handwritten digit seven"``, whatever the run's data.
``rgb16``, ``rgb32``, ``rgb64``
    A :class:`~diffusers.UNet2DConditionModel` on RGB images of that side, narrow, with
    self- and cross-attention only at a low resolution (8×8 at 32 and 64 px). The caption's
    per-token states are the cross-attention context and its pooled vector the class
    embedding; they come from the frozen MiniLM (``--text-encoder minilm``, the default
    here) or from hashed words (``hashed``, no download). Its base model is trained on the
    run's own data set.

Needs no torch: the run parameters read the model's diffusion timesteps from here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from chain.errors import ChainError

#: What the UNet may predict (diffusers' names); the RGB presets use v, see :data:`_RGB`.
PREDICTION_TYPES = ("epsilon", "v_prediction")
#: ``base_data`` of the digits: scikit-learn's 1797 digits at the model's resolution.
DIGITS_BASE = "digits"


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    """Architecture and base training of the tiny model (its hash names the cached base model).

    Examples
    --------
    >>> TinyConfig(resolution=8).resolution
    8
    """

    resolution: int = 8
    channels: tuple[int, ...] = (16, 32)
    vocabulary: int = 1024
    num_train_timesteps: int = 1000
    base_train_steps: int = 600
    base_batch_size: int = 64
    base_learning_rate: float = 2e-3
    base_drop: float = 0.15
    base_seed: int = 0
    #: Colour channels of the images (1 grey, 3 RGB).
    image_channels: int = 1
    #: One flag per UNet level: self- and cross-attention there. Empty: the digits design, the
    #: caption's average embedding as the class embedding and self-attention in the middle block only.
    cross_attention: tuple[bool, ...] = ()
    layers_per_block: int = 1
    text_encoder: str = "hashed"
    #: Tokens of the cross-attention context (longer captions are cut).
    context_length: int = 16
    #: What the base model learns from: ``"digits"`` or a ``--data`` spec (:func:`chain.data.load_dataset`).
    base_data: str = DIGITS_BASE
    #: What the UNet predicts, ``"epsilon"`` or ``"v_prediction"`` (diffusers' names).
    prediction_type: str = "epsilon"
    #: Decay of the exponential moving average of the base model's weights, which becomes the base
    #: model (0: none, the last weights). Warmed up as ``min(decay, (1 + k) / (10 + k))`` at step k.
    base_ema: float = 0.0

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise ChainError(f"prediction_type must be {' or '.join(PREDICTION_TYPES)}, got {self.prediction_type!r}")
        if not 0.0 <= self.base_ema < 1.0:
            raise ChainError(f"base_ema must lie in [0, 1), got {self.base_ema}")

    def key(self) -> str:
        """A short hash of the configuration, the name of the cached base model.

        Fields added after the first release count only where they differ from their
        default, so that the digits model keeps the name of its cached base.
        """
        defaults = dataclasses.asdict(TinyConfig())
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k in _FIRST_FIELDS or v != defaults[k]}
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


_FIRST_FIELDS = ("resolution", "channels", "vocabulary", "num_train_timesteps", "base_train_steps",
                 "base_batch_size", "base_learning_rate", "base_drop", "base_seed")

#: The RGB design: narrow full-resolution levels, attention only at the third (8×8 at 32 px). Chosen by
#: measurement: folding 2×2 pixel patches into channels (a 16×16 top level at 32 px) cost half as much
#: but learnt several times slower (loss 0.125 against 0.04 after 1000 steps on coloured squares).
#: The network predicts v, not the noise: with the noise as target, the emoji base model after 1500
#: steps gave saturated colour fields without even the white ground at 16 and 32 px (an error in the
#: noise is amplified by up to sqrt(1 / abar) ~ 16 in the clean image at the first steps of the cosine
#: schedule); with v and the same budget it gave white grounds, flags and faces. The weights' moving
#: average is the base model (common practice; not measured apart). Cost at 32 px on 2 idle cores
#: (Intel Xeon, 2 threads): 12.5 ms per training example and 3.7 ms per image and network pass (7.4 ms
#: per sampling step with guidance).
_RGB = {"image_channels": 3, "channels": (16, 32, 64), "cross_attention": (False, False, True),
        "base_train_steps": 1500, "base_batch_size": 32, "base_learning_rate": 2e-3,
        "prediction_type": "v_prediction", "base_ema": 0.995}

#: The presets of ``chain run --preset`` (:data:`qtm.params.TINY_PRESETS`): the settings each changes from
#: :class:`TinyConfig`'s defaults.
PRESETS: dict[str, dict] = {
    "digits8": {},
    "rgb16": {"resolution": 16, **_RGB},
    "rgb32": {"resolution": 32, **_RGB},
    "rgb64": {"resolution": 64, **_RGB, "channels": (16, 32, 64, 64), "cross_attention": (False, False, False, True),
              "base_train_steps": 3000},
}
DEFAULT_PRESET = "digits8"


def preset_config(
    preset: str | None = None,
    *,
    text_encoder: str | None = None,
    resolution: int | None = None,
    data: str | None = None,
    **overrides,
) -> TinyConfig:
    """The configuration of a preset: the rule that ties it to ``--resolution``, ``--text-encoder`` and ``--data``.

    The preset fixes the image side; ``resolution`` may be left out (None) or must equal
    it, and images of another size are resized to it. ``digits8`` reads captions with
    the hashed encoder and learns its base model from the digits; the RGB presets read
    them with ``text_encoder`` (default ``minilm``) and learn it from ``data``.
    ``overrides`` change any other field (a smaller training budget in tests).

    Examples
    --------
    >>> preset_config().key() == TinyConfig().key()
    True
    >>> config = preset_config("rgb32", text_encoder="hashed", data="emoji:32")
    >>> config.resolution, config.image_channels, config.base_data
    (32, 3, 'emoji:32')
    >>> preset_config("rgb32", resolution=16)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    chain.errors.ChainError: --resolution 16 does not match --preset rgb32 (32 px); leave out --resolution ...
    """
    name = preset or DEFAULT_PRESET
    config = dataclasses.replace(TinyConfig(), **PRESETS[name])
    if resolution is not None and resolution != config.resolution:
        raise ChainError(f"--resolution {resolution} does not match --preset {name} ({config.resolution} px); "
                         "leave out --resolution or choose the preset of that size")
    if not config.cross_attention:
        if text_encoder not in (None, "hashed"):
            raise ChainError(f"--preset {name} reads captions with the hashed encoder; "
                             f"--text-encoder {text_encoder} needs an rgb preset")
        return dataclasses.replace(config, **overrides)
    return dataclasses.replace(config, text_encoder=text_encoder or "minilm", base_data=data or DIGITS_BASE,
                               **overrides)
