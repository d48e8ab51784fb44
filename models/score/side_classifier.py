"""SIDE Part 1, step 6 and Part 2 guidance: the time-dependent classifier p_phi(y | x_t)
(Chen et al., SIDE v7, arXiv:2410.02467, Algorithm 1 and Fig. 9).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from models.score.side_config import SideConfig, pos_int, threads_scope
from models.score.targets.closed_form import VPSchedule


# --------------------------------------------------------------------------- #
# Part 1, step 6: time-dependent classifier
# --------------------------------------------------------------------------- #
def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer/DDPM sinusoidal embedding of timesteps.

    Args:
        t: (B,) timesteps (int or float tensor).
        dim: even embedding size.

    Returns:
        (B, dim) float32 [sin(t·f_j), cos(t·f_j)], f_j = 10000^{−j/(dim/2)}.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class TimeConditionedClassifier(nn.Module):
    """p_φ(y | x_t, t): an MLP with a time module after its first normalisation
    (SIDE arXiv:2410.02467 v7, Algorithm 1 step 6, Fig. 9 analogue for flattened vector data).

    Layout: Linear(d, h₀) → LayerNorm → **time module** (FiLM:
    h ← h·(1 + scale(t)) + shift(t), scale/shift from an MLP on the sinusoidal
    embedding of t) → SiLU → [Linear → LayerNorm → SiLU] per further width →
    Linear(h_last, K′) logits.

    LayerNorm replaces the paper's BatchNorm: its output for a row does not
    depend on the rest of the batch or on train/eval mode, so the guidance
    gradient of one sample is independent of the DDIM batch it is sampled in.

    Args:
        d: input dimension (flattened x_t); n_classes: K′; T: number of
            diffusion timesteps (valid t are 0..T−1); hidden: MLP widths;
        time_dim: even sinusoidal embedding size.

    ``forward(x (B, d) float, t (B,) int) -> (B, K′) logits``.
    """

    def __init__(
        self, d: int, n_classes: int, T: int, hidden: tuple[int, ...] = (256, 256), time_dim: int = 64
    ) -> None:
        super().__init__()
        self.d = pos_int("d", d)
        self.n_classes = pos_int("n_classes", n_classes)
        self.T = pos_int("T", T)
        hidden = tuple(pos_int("hidden width", h) for h in hidden)
        if not hidden:
            raise ValueError("hidden must have at least one width")
        if pos_int("time_dim", time_dim, minimum=2) % 2:
            raise ValueError(f"time_dim must be even, got {time_dim!r}")
        self.time_dim = int(time_dim)
        h0 = hidden[0]
        self.inp = nn.Linear(self.d, h0)
        self.norm0 = nn.LayerNorm(h0)
        self.time_mlp = nn.Sequential(nn.Linear(self.time_dim, h0), nn.SiLU(), nn.Linear(h0, 2 * h0))
        layers: list[nn.Module] = []
        for a, b in zip(hidden[:-1], hidden[1:]):
            layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(hidden[-1], self.n_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.norm0(self.inp(x))
        scale, shift = self.time_mlp(sinusoidal_embedding(t, self.time_dim)).to(h.dtype).chunk(2, dim=1)
        h = nn.functional.silu(h * (1.0 + scale) + shift)
        return self.out(self.body(h))


def _check_generator(generator) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {generator!r}")
    return generator


def train_classifier(
    x0,
    labels,
    schedule: VPSchedule,
    cfg: SideConfig,
    generator: torch.Generator,
    n_classes: Optional[int] = None,
) -> tuple[TimeConditionedClassifier, np.ndarray]:
    """Train p_φ(y | x_t) with L = E_{t,(x₀,y),ε}[−log p_φ(y | x_t)] (SIDE arXiv:2410.02467 v7, Algorithm 1 step 6).

    Each step draws ``cfg.batch_size`` examples (with replacement), t ~ U{0..T−1}
    and ε ~ N(0, I), forms x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε (``schedule.alphas_cumprod``)
    and takes one AdamW step (``cfg.lr``, ``cfg.weight_decay``) on the
    cross-entropy; ``cfg.train_steps`` steps in all, float32.

    Args:
        x0: (N, d) clean samples (flattened).
        labels: (N,) int labels in [0, n_classes).
        schedule: the target's VP schedule.
        cfg: uses hidden, time_dim, train_steps, batch_size, lr, weight_decay,
            threads.
        generator: torch.Generator for the initial weights and every draw
            (torch's global RNG is left untouched).
        n_classes: K′; default labels.max() + 1.

    Returns:
        ``(classifier, losses)``: the model in eval mode and (train_steps,)
        float64 per-step training losses.
    """
    x = np.asarray(x0)
    if x.ndim != 2 or x.shape[0] == 0 or x.dtype.kind not in "fiu":
        raise ValueError(f"x0 must be a non-empty real (N, d) array, got {x.dtype} {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x0 contains non-finite values")
    y = np.asarray(labels)
    if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
        raise ValueError(f"labels must be an int array of shape ({x.shape[0]},), got {y.dtype} {y.shape}")
    K = int(y.max()) + 1 if n_classes is None else pos_int("n_classes", n_classes)
    if y.min() < 0 or y.max() >= K:
        raise ValueError(f"labels must lie in [0, {K}), got range [{int(y.min())}, {int(y.max())}]")
    if not isinstance(schedule, VPSchedule):
        raise ValueError(f"schedule must be a VPSchedule, got {schedule!r}")
    if not isinstance(cfg, SideConfig):
        raise ValueError(f"cfg must be a SideConfig, got {cfg!r}")
    gen = _check_generator(generator)
    init_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = TimeConditionedClassifier(x.shape[1], K, schedule.T, cfg.hidden, cfg.time_dim)
    xt_all = torch.as_tensor(x, dtype=torch.float32)
    yt_all = torch.as_tensor(y.astype(np.int64))
    abar = torch.as_tensor(schedule.alphas_cumprod, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses = np.empty(cfg.train_steps, np.float64)
    model.train()
    with threads_scope(cfg.threads):
        for step in range(cfg.train_steps):
            idx = torch.randint(0, x.shape[0], (cfg.batch_size,), generator=gen)
            t = torch.randint(0, schedule.T, (cfg.batch_size,), generator=gen)
            noise = torch.randn((cfg.batch_size, x.shape[1]), generator=gen)
            a = abar[t][:, None]
            xt = a.sqrt() * xt_all[idx] + (1.0 - a).sqrt() * noise
            loss = nn.functional.cross_entropy(model(xt, t), yt_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[step] = float(loss.detach())
    model.eval()
    return model, losses


def classifier_guidance(
    classifier: nn.Module,
    schedule: VPSchedule,
    target_label: Union[int, np.ndarray],
    dtype: torch.dtype = torch.float32,
    threads: Optional[int] = 1,
) -> Callable[[np.ndarray, Union[int, np.ndarray]], np.ndarray]:
    """Guidance callable ∇_{x_t} log p_φ(c | x_t) for :func:`~models.score.targets.closed_form.ddim_sample`.

    ``ddim_sample(target, n, d, steps, guidance=g, guidance_scale=λ)`` then uses
    ε̂_guided = ε̂ − λ√(1−ᾱ_t)·g(x_t, t) (classifier guidance in eps form, Dhariwal & Nichol arXiv:2105.05233 Algorithm 2). ddim_sample's
    guidance has no cond argument, so the target clusters are bound here.

    Args:
        classifier: module with ``forward(x (B, d), t (B,) int64) -> (B, K′)``
            logits (e.g. :class:`TimeConditionedClassifier`); its train/eval mode
            is left as it is.
        schedule: the target's schedule (t must lie in [0, T−1]).
        target_label: an int c, or a (B,) int array binding one cluster per row;
            the callable then only accepts batches of exactly B rows, row i
            guided towards target_label[i].
        dtype: torch dtype of the forward / backward pass.
        threads: torch / faiss thread count during each call (restored
            after); None = unchanged (see ``SideConfig.threads``).

    Returns:
        ``guidance(x_t (B, d), t int or (B,) int) -> (B, d) float64`` (numpy in
        and out; torch autograd inside, parameter gradients are not touched).
    """
    if not isinstance(schedule, VPSchedule):
        raise ValueError(f"schedule must be a VPSchedule, got {schedule!r}")
    lab = np.asarray(target_label)
    if lab.ndim > 1 or lab.dtype.kind not in "iu" or lab.size == 0:
        raise ValueError(f"target_label must be an int or a 1-D int array, got {target_label!r}")
    clf_T = getattr(classifier, "T", None)
    if clf_T is not None and clf_T != schedule.T:
        raise ValueError(f"classifier was built for T={clf_T} timesteps, schedule has T={schedule.T}")
    n_classes = getattr(classifier, "n_classes", None)
    if lab.min() < 0 or (n_classes is not None and lab.max() >= n_classes):
        raise ValueError(f"target_label must lie in [0, {n_classes}), got range [{int(lab.min())}, {int(lab.max())}]")
    lab = lab.astype(np.int64)

    def guidance(x_t: np.ndarray, t: Union[int, np.ndarray]) -> np.ndarray:
        x = np.asarray(x_t)
        if x.ndim != 2:
            raise ValueError(f"x_t must be 2-D (B, d), got shape {x.shape}")
        B = x.shape[0]
        rows = np.full(B, int(lab)) if lab.ndim == 0 else lab
        if rows.shape != (B,):
            raise ValueError(f"guidance bound to {lab.size} target labels got a batch of {B} rows")
        tt = np.asarray(t)
        if tt.dtype.kind not in "iu" or tt.ndim > 1 or (tt.ndim == 1 and tt.shape != (B,)):
            raise ValueError(f"t must be an int or an int array of shape ({B},), got {t!r}")
        if tt.size and (tt.min() < 0 or tt.max() >= schedule.T):
            raise ValueError(f"t out of range [0, {schedule.T - 1}]: {t!r}")
        t_rows = torch.as_tensor(np.broadcast_to(tt, (B,)).astype(np.int64))
        xin = torch.tensor(x, dtype=dtype, requires_grad=True)
        with torch.enable_grad(), threads_scope(threads):
            logp = torch.log_softmax(classifier(xin, t_rows), dim=1)
            sel = logp.gather(1, torch.as_tensor(rows)[:, None]).sum()
            (grad,) = torch.autograd.grad(sel, xin)
        return grad.detach().numpy().astype(np.float64)

    return guidance

