"""Low-rank fine-tuning (LoRA, Hu et al. 2021) of a trained FrameTransformer.

Each large linear weight W [out, in] is frozen and trained as W + A @ B with A [out, r]
(zeros at the start, so training starts from the model itself) and B [r, in]; the small
tensors (biases, norms, embeddings, positions) stay fully trainable. A model fine-tuned this
way differs from its start by a rank-r matrix per large weight, which `pgesam-live pack` stores
as two float16 factors: the reason to use it for a model that ships in git.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

# Linear weights with both sides at least this large get a low-rank delta; the rest (x/y
# embeddings [256, 1] and the like) train fully.
MIN_SIDE = 16


class LowRankDelta(nn.Module):
    """The parametrization W -> W + A @ B; A [out, r] starts at zero, B [r, in] random."""

    def __init__(self, out_features: int, in_features: int, rank: int,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(out_features, rank))
        self.b = nn.Parameter(torch.randn(rank, in_features, generator=generator)
                              / in_features ** 0.5)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.a @ self.b


def lora_targets(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(name, module) of the linear layers that get a low-rank delta, in a fixed order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and min(m.weight.shape) >= MIN_SIDE]


def attach(model: nn.Module, rank: int, seed: int = 0,
           factors: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
           ) -> list[nn.Parameter]:
    """Freeze the target weights of `model`, give each a LowRankDelta, and return the
    parameters to train (the factors, then every other non-target parameter).

    `factors` {module name: (A, B)} restores the factors of an unfinished run; the weights
    then must be the run's merged weights, and the frozen part becomes W - A @ B.
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    gen = torch.Generator().manual_seed(seed)
    targets = lora_targets(model)
    target_weights = {id(m.weight) for _, m in targets}
    trainable = [p for p in model.parameters() if id(p) not in target_weights]
    lora_params: list[nn.Parameter] = []
    for name, m in targets:
        out_f, in_f = m.weight.shape
        delta = LowRankDelta(out_f, in_f, rank, gen).to(m.weight.device, m.weight.dtype)
        if factors is not None:
            a, b = factors[name]
            with torch.no_grad():
                delta.a.copy_(a)
                delta.b.copy_(b)
                m.weight.sub_(delta.a @ delta.b)
        m.weight.requires_grad_(False)
        parametrize.register_parametrization(m, "weight", delta)
        lora_params += [delta.a, delta.b]
    return lora_params + trainable


def factors_of(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The current factors {module name: (A, B)} (CPU copies) of an attached model."""
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m, "weight"):
            delta = m.parametrizations["weight"][0]
            out[name] = (delta.a.detach().cpu().clone(), delta.b.detach().cpu().clone())
    return out


def merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict the model would have with its deltas merged (CPU copies, the usual key
    names)."""
    mods = dict(model.named_modules())
    state: dict[str, torch.Tensor] = {}
    for key, v in model.state_dict().items():
        if key.endswith(".parametrizations.weight.original"):
            name = key[: -len(".parametrizations.weight.original")]
            state[f"{name}.weight"] = mods[name].weight.detach().cpu().clone()
        elif ".parametrizations." not in key:
            state[key] = v.detach().cpu().clone()
    return state


def merge(model: nn.Module) -> None:
    """Fold every delta into its weight and drop the parametrizations (in place)."""
    for _, m in list(model.named_modules()):
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
