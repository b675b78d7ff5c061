"""Run under torchrun with 2 ranks by tests/engine/test_parity.py: the sharded step raises on
rank 1 only, after its collectives (as an optimizer's own bug would, in its update). Both ranks
must return the same 'unsupported' verdict with rank 1's error, and the next check must run
normally (no rank left behind). A rank that fails *before* a collective the others are in can
only be ended by the process group's timeout, which stops the run (nothing is recorded)."""

from __future__ import annotations

import json
import sys

import torch.distributed as dist

from optbench.engine import parity


def main(out: str) -> None:
    dist.init_process_group("gloo")
    real_step = parity.accumulate_and_step

    def step_failing_on_rank_1(model, optimizer, windows, create_graph, scale):
        real_step(model, optimizer, windows, create_graph, scale)
        sharded = model.__class__.__name__ != "LlamaForCausalLM"  # DDP wraps it
        if sharded and dist.get_rank() == 1:
            raise RuntimeError("injected failure on rank 1")

    parity.accumulate_and_step = step_failing_on_rank_1
    failed = parity.check("adamw", "ddp")
    parity.accumulate_and_step = real_step
    after = parity.check("adamw", "ddp")
    results = [None] * dist.get_world_size()
    dist.all_gather_object(results, [failed.verdict, failed.error, after.verdict])
    if dist.get_rank() == 0:
        with open(out, "w", encoding="utf-8") as f:
            json.dump(results, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
