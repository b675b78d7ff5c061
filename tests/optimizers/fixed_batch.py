"""Training a registry entry for a few steps on one fixed batch of llama_tiny: what the library
and canon entries' state-bytes and loss tests share."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from optbench.models import build_model
from optbench.optimizers import build_optimizer, get_spec

Trained = tuple[torch.nn.Module, torch.optim.Optimizer, list[float]]


def lm_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids[:, :-1]).logits
    return F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())


def train_on_fixed_batch(name: str, dtype: torch.dtype, steps: int, **hparams) -> Trained:
    """`steps` real steps on one fixed batch (real losses: AdaHessian/Sophia need the graph)."""
    torch.manual_seed(0)
    model = build_model("llama_tiny", dtype)
    ids = torch.randint(0, model.config.vocab_size, (4, 33))
    opt = build_optimizer(name, model, **hparams)
    create_graph = get_spec(name).needs_create_graph
    losses = []
    for _ in range(steps):
        loss = lm_loss(model, ids)
        loss.backward(create_graph=create_graph)
        opt.step()
        opt.zero_grad(set_to_none=True)  # also frees the double-backward graph held by .grad
        losses.append(loss.item())
    return model, opt, losses
