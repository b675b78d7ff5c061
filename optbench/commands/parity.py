"""`optbench parity`: the parity harness under torchrun for the named optimizers (or the whole
roster), its verdicts stored and shown, and written to reports/parity/summary.md."""

from __future__ import annotations

import time
from pathlib import Path

from rich.markup import escape

from optbench.commands.common import ensure_writable_dir
from optbench.commands.provenance import command_line
from optbench.config.loader import MAX_RANKS
from optbench.config.suite import PARALLEL_STRATEGIES
from optbench.errors import OptbenchError
from optbench.optimizers import get_spec, list_specs
from optbench.render import parity as render
from optbench.results.store import ParityRecord, ResultStore

SHARDED = PARALLEL_STRATEGIES[1:]


def run_parity(names: list[str], strategies: list[str], nproc: int, steps: int, db: Path,
               reports_dir: Path, console, log) -> Path:
    specs = [get_spec(n) for n in names] or list_specs()  # unknown: did-you-mean
    _check(strategies, nproc, steps)
    ensure_writable_dir(reports_dir, "--reports")
    store = ResultStore(db)
    from optbench.engine.measure import environment
    from optbench.engine.parity import launch_harness

    log.print(f"parity: {len(specs)} optimizers x {', '.join(strategies)} on {nproc} ranks "
              f"({steps} steps each)", highlight=False)
    verdicts = launch_harness([s.name for s in specs], strategies, nproc, steps)
    env = _environment(environment, nproc)
    version = {s.name: s.version for s in specs}
    records = [ParityRecord(v.optimizer, version[v.optimizer], v.strategy, nproc, steps,
                            v.verdict, v.worst_relative_error, v.noise_floor, v.parameter,
                            v.state_bytes_per_rank, v.error, env, time.time()) for v in verdicts]
    store.save_parity(records)
    console.print(render.rich_table(records))
    path = render.write_markdown(records, Path(reports_dir) / "parity", command_line())
    console.print(f"report: {escape(str(path))}", highlight=False)
    return path


MAX_PARITY_STEPS = 1000  # each step runs every optimizer under every strategy on every rank


def _check(strategies: list[str], nproc: int, steps: int) -> None:
    for strategy in strategies:
        if strategy not in SHARDED:
            raise OptbenchError(f"--strategy '{strategy}': accepted: {', '.join(SHARDED)}")
    if not 2 <= nproc <= MAX_RANKS:
        raise OptbenchError(f"--nproc {nproc}: parity runs 2..{MAX_RANKS} ranks on this node")
    if not 1 <= steps <= MAX_PARITY_STEPS:
        raise OptbenchError(f"--steps {steps}: accepted 1..{MAX_PARITY_STEPS} (a verdict needs "
                            "a few steps; the default is enough)")
    import torch

    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise OptbenchError(f"--nproc {nproc}: the harness runs one rank per GPU (NCCL) and "
                            f"this machine has {torch.cuda.device_count()}")


def _environment(environment, nproc: int) -> dict:
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {**environment(device), "backend": "nccl" if device.type == "cuda" else "gloo",
            "nproc": nproc}
