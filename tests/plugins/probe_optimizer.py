"""A plugin optimizer for tests (loaded through $OPTBENCH_PLUGINS): AdamW that, when
OPTBENCH_PROBE_EXTRA_BUFFER=1 is set in its process, keeps one more buffer per parameter.

It stands for a code change that grows an optimizer's state without bumping its version:
the fingerprint stays the same, so `optbench check` must catch it by the bytes alone.
"""

from __future__ import annotations

import os

import torch

from optbench.optimizers import OptimizerSpec, register
from optbench.optimizers.torch_optim import adamw_state_bytes


class ProbeAdamW(torch.optim.AdamW):
    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        if os.environ.get("OPTBENCH_PROBE_EXTRA_BUFFER") == "1":
            for group in self.param_groups:
                for p in group["params"]:
                    self.state[p].setdefault("extra", torch.zeros_like(p))
        return loss


register(
    OptimizerSpec(
        name="probe_adamw",
        factory=lambda model, hp: ProbeAdamW([p for p in model.parameters() if p.requires_grad], **hp),
        source="tests.plugins.probe_optimizer",
        paper="(test optimizer)",
        policy="every trainable parameter in one group: AdamW",
        default_hparams={"lr": 1e-3},
        state_formula="as adamw",
        expected_state_bytes=adamw_state_bytes,
    )
)
