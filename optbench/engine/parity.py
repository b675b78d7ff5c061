"""Parity: is an optimizer under DDP / FSDP2 / ZeRO-1 still the same optimizer?

Each rank trains a sharded copy of a tiny LLaMA on its slice of a global batch and, beside it,
a plain single-process copy on the same global batch, one slice at a time with the gradients
accumulated and divided by the number of ranks: the arithmetic DDP's averaging does, so that
what remains is the sharding's own effect, not a different summation order amplified by a
bfloat16 Newton-Schulz or an SVD. After k steps the sharded parameters, gathered whole, are
compared with the plain ones, and each rank's optimizer-state bytes are recorded (an FSDP2
rank counts its shards, a ZeRO-1 rank the state of its share). A third copy, fed the whole global batch in one forward (the same
loss, summed in another order), measures how much the optimizer itself amplifies a change of
summation order: its noise floor (~1e-6 for AdamW, ~1e-2 after 3 steps for Muon, whose
Newton-Schulz runs in bfloat16):
- equivalent: the worst error over parameters, ||p - p_ref|| relative to how far the
  single-process run moved that parameter (||p_ref - p_0||), is within the dtype's tolerance
  or within NOISE_FACTOR x the noise floor (measured the same way);
- differs: beyond it (the worst parameter is named);
- unsupported: the sharded run raised (the error's first line);
- error: the single-process run itself raised, so nothing was compared.

Run under torchrun, e.g. on CPU:
    python -m torch.distributed.run --standalone --nproc-per-node 2 -m optbench.engine.parity \\
        --strategies ddp fsdp2 zero1 --optimizers adamw scale --json parity.json

`optbench parity` launches this under torchrun (`launch_harness`) and stores the verdicts;
`--record` rewrites the registry's record of them (optbench/optimizers/known_parity.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist

from optbench.engine.parallel import (
    build_parallel_optimizer,
    error_line,
    full_parameters,
    leave_process_group,
    wrap_model,
)
from optbench.engine.state_bytes import optimizer_state_bytes
from optbench.engine.step import lm_loss
from optbench.models import build_model, get_model_size
from optbench.optimizers import build_optimizer, get_spec, list_specs
from optbench.optimizers.sharding import KNOWN_PARITY_FILE

TOLERANCE = {torch.float32: 1e-4}
NOISE_FACTOR = 4  # a sharded run may reorder sums more than one reversal does
VERDICTS = ("equivalent", "differs", "unsupported", "error")


@dataclass(frozen=True)
class Parity:
    optimizer: str
    strategy: str
    verdict: str
    worst_relative_error: float | None = None
    noise_floor: float | None = None
    parameter: str = ""
    state_bytes_per_rank: tuple[int, ...] = ()  # the sharded optimizer's, after the k steps
    error: str = ""


def global_batch(step: int, world: int, per_rank: int, seq_len: int, vocab: int) -> torch.Tensor:
    """The same [world * per_rank, seq_len + 1] token windows on every rank, seeded by step."""
    gen = torch.Generator().manual_seed(10_000 + step)
    return torch.randint(0, vocab, (world * per_rank, seq_len + 1), generator=gen)


def check(name: str, strategy: str, steps: int = 3, model: str = "llama_tiny",
          per_rank: int = 2, seq_len: int = 16, seed: int = 0) -> Parity:
    """One optimizer under one strategy against its single-process run, on this rank. Every
    rank returns the same verdict: a failure on any rank is shared before going on."""
    rank, world = dist.get_rank(), dist.get_world_size()
    device = _device()
    create_graph = get_spec(name).needs_create_graph
    reference, whole, sharded = (_seeded_model(model, seed, device) for _ in range(3))
    start = {key: p.detach().clone() for key, p in reference.named_parameters()}
    optimizers, error = _attempt(lambda: (build_optimizer(name, reference),
                                          build_optimizer(name, whole)))
    failed = _agreed(error)
    if failed:
        return Parity(name, strategy, "error", error="single-process run: " + failed)
    reference_opt, whole_opt = optimizers
    built, error = _attempt(lambda: (wrap_model(sharded, strategy),
                                     build_parallel_optimizer(name, sharded, strategy)))
    failed = _agreed(error)
    if failed:
        return Parity(name, strategy, "unsupported", error=failed)
    wrapped, sharded_opt = built
    vocab = get_model_size(model).vocab_size
    for step in range(steps):
        slices = global_batch(step, world, per_rank, seq_len, vocab).to(device).split(per_rank)
        # The single-process run first: an optimizer that fails on its own is not the strategy's.
        failed = _agreed(_attempt(lambda: (
            accumulate_and_step(reference, reference_opt, slices, create_graph, 1.0 / world),
            accumulate_and_step(whole, whole_opt, [torch.cat(slices)], create_graph, 1.0)))[1])
        if failed:
            return Parity(name, strategy, "error", error="single-process run: " + failed)
        failed = _agreed(_attempt(lambda: accumulate_and_step(
            wrapped, sharded_opt, [slices[rank]], create_graph, 1.0))[1])
        if failed:
            return Parity(name, strategy, "unsupported", error=failed)
    floor = max(_relative_errors(full_parameters(whole), reference, start).values())
    errors = _relative_errors(full_parameters(sharded), reference, start)
    result = verdict_of(name, strategy, errors, floor, next(reference.parameters()).dtype)
    per_rank: list[int | None] = [None] * world
    dist.all_gather_object(per_rank, optimizer_state_bytes(sharded_opt))
    return dataclasses.replace(result, state_bytes_per_rank=tuple(per_rank))


def _attempt(action: Callable[[], Any]) -> tuple[Any, str | None]:
    """(what `action` returned, None), or (None, its error as one line)."""
    try:
        return action(), None
    except Exception as exc:  # noqa: BLE001 - the error is the verdict's evidence
        return None, error_line(exc)


def _agreed(local_error: str | None) -> str | None:
    """The first rank's error if any rank failed, on every rank, so all return the same
    verdict and none runs on into a collective the others have left. A collective that fails
    here (a rank died) propagates: the run stops instead of recording wrong verdicts."""
    errors: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, local_error)
    return next((e for e in errors if e), None)


def _seeded_model(model: str, seed: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(model, device=device)


def accumulate_and_step(model, optimizer, windows: list[torch.Tensor], create_graph: bool,
                        scale: float) -> None:
    """Gradients of scale x each window's mean loss, accumulated, then a step (DDP averages the
    ranks' gradients: in one process each slice counts 1/world)."""
    for window in windows:
        (lm_loss(model, window) * scale).backward(create_graph=create_graph)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _relative_errors(params: dict, reference: torch.nn.Module,
                     start: dict) -> dict[str, float]:
    """Per parameter, ||p - p_ref|| over how far the single-process run moved it,
    ||p_ref - p_0||: a parameter the sharded run never updated scores 1, however small its
    update."""
    return {
        key: float((params[key].float() - ref.detach().float()).norm()
                   / (ref.detach().float() - start[key].float()).norm().clamp_min(1e-30))
        for key, ref in reference.named_parameters()
    }


def verdict_of(name: str, strategy: str, errors: dict[str, float], floor: float,
             dtype: torch.dtype) -> Parity:
    worst = max(errors, key=errors.get)
    bound = max(TOLERANCE.get(dtype, 1e-2), NOISE_FACTOR * floor)
    verdict = "equivalent" if errors[worst] <= bound else "differs"
    return Parity(name, strategy, verdict, errors[worst], floor,
                  worst if verdict == "differs" else "")


def _device() -> torch.device:
    if torch.cuda.is_available() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def markdown(results: list[Parity]) -> str:
    strategies = list(dict.fromkeys(r.strategy for r in results))
    rows = {}
    for r in results:
        cell = r.verdict
        if r.verdict == "equivalent":
            cell += f" ({r.worst_relative_error:.0e}; floor {r.noise_floor:.0e})"
        elif r.verdict == "differs":
            cell += (f" ({r.worst_relative_error:.1e} at {r.parameter}; "
                     f"floor {r.noise_floor:.0e})")
        else:
            cell += f" ({r.error})"
        rows.setdefault(r.optimizer, {})[r.strategy] = cell.replace("|", "\\|")
    lines = ["| optimizer | " + " | ".join(strategies) + " |",
             "|---|" + "---|" * len(strategies)]
    lines += [f"| {o} | " + " | ".join(cells.get(s, "") for s in strategies) + " |"
              for o, cells in rows.items()]
    return "\n".join(lines)


def known_parity_entry(result: Parity) -> str:
    """One verdict as the registry records it: the verdict and what it rests on."""
    if result.verdict == "equivalent":
        return f"equivalent (worst relative error {result.worst_relative_error:.0e})"
    if result.verdict == "differs":
        return (f"differs ({result.worst_relative_error:.1e} at {result.parameter}; "
                f"its own floor {result.noise_floor:.0e})")
    return f"{result.verdict}: {result.error}"


def record_known_parity(results: list[Parity], steps: int) -> None:
    """Writes this run's verdicts into optbench/optimizers/known_parity.json: a run over some
    optimizers (--optimizers) replaces theirs and keeps the others'."""
    import platform

    old = json.loads(KNOWN_PARITY_FILE.read_text(encoding="utf-8")).get("verdicts", {}) \
        if KNOWN_PARITY_FILE.exists() else {}
    record = {
        "measured": (f"python -m torch.distributed.run --standalone --nproc-per-node "
                     f"{dist.get_world_size()} -m optbench.engine.parity --record "
                     f"(llama_tiny, {steps} steps, {dist.get_backend()}, torch "
                     f"{torch.__version__}, {platform.machine()})"),
        "verdicts": {name: v for name, v in old.items()
                     if name not in {r.optimizer for r in results}},
    }
    for r in results:
        record["verdicts"].setdefault(r.optimizer, {})[r.strategy] = known_parity_entry(r)
    KNOWN_PARITY_FILE.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n",
                                 encoding="utf-8")


def launch_harness(names: list[str], strategies: list[str], nproc: int, steps: int,
                   timeout_s: float = 1800) -> list[Parity]:
    """Run the harness on `nproc` local ranks under torchrun; its verdicts. A harness that fails
    as a whole (a rank died, the process group timed out) is an OptbenchError with the last
    line torchrun printed."""
    import subprocess
    import tempfile
    from pathlib import Path

    from optbench.engine.isolation import child_env, module_command, torchrun_module_args
    from optbench.errors import OptbenchError

    with tempfile.TemporaryDirectory(prefix="optbench-parity-") as tmp:
        out = Path(tmp, "parity.json")
        cmd = module_command("torch.distributed.run", "--standalone", "--nproc-per-node",
                             str(nproc), *torchrun_module_args(
                                 "optbench.engine.parity", "--optimizers", *names,
                                 "--strategies", *strategies, "--steps", str(steps),
                                 "--json", str(out)))
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL, env=child_env())
        except subprocess.TimeoutExpired:
            raise OptbenchError(f"parity harness: no answer after {timeout_s:g} s") from None
        # Rank 0 writes the verdicts after the last collective, when every rank has agreed on
        # every one: a rank that then dies in gloo's teardown ("terminate called without an
        # active exception", SIGABRT) took nothing from them.
        if not out.exists():
            raise OptbenchError(f"parity harness failed (exit {done.returncode}): "
                                f"{failure_line(done.stderr)}")
        return [Parity(**{**r, "state_bytes_per_rank": tuple(r["state_bytes_per_rank"])})
                for r in json.loads(out.read_text())]


def failure_line(stderr: str) -> str:
    """The line of torchrun's output that says what failed: the last exception line of a rank,
    else torchrun's failure summary ('exitcode: -9'), never its '=====' borders."""
    lines = [ln.strip() for ln in stderr.splitlines()
             if ln.strip().strip("=-") and "ChildFailedError" not in ln]
    for pattern in ("Error:", "Exception:", "exitcode"):
        found = [ln for ln in lines if pattern in ln]
        if found:
            return found[-1][:300]
    return lines[-1][:300] if lines else "no output"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sharded-vs-single-process parity per optimizer.")
    parser.add_argument("--optimizers", nargs="+", default=None, help="default: the whole roster")
    parser.add_argument("--strategies", nargs="+", default=["ddp", "fsdp2", "zero1"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", default=None, help="rank 0 writes the verdicts here")
    parser.add_argument("--record", action="store_true",
                        help="rank 0 rewrites the registry's record of known verdicts "
                             f"({KNOWN_PARITY_FILE.name}, shown by `list optimizers -v`)")
    args = parser.parse_args(argv)
    from optbench.engine.worker import exit_with_parent

    exit_with_parent()  # a launcher killed for time takes its ranks with it
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=timedelta(seconds=120))
    names = args.optimizers or [s.name for s in list_specs()]
    results = [check(n, s, args.steps) for n in names for s in args.strategies]
    if dist.get_rank() == 0:
        print(markdown(results), flush=True)
        if args.json:  # whole or absent: the launcher reads it even if a rank then aborts
            tmp = f"{args.json}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump([asdict(r) for r in results], f, indent=1)
            os.replace(tmp, args.json)
        if args.record:
            record_known_parity(results, args.steps)
    leave_process_group()  # together: a rank leaving early makes gloo abort another
    return 0


if __name__ == "__main__":
    sys.exit(main())
