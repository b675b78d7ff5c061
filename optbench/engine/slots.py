"""Shares of one machine for cells that run side by side (`optbench run --jobs N`).

Each of N jobs gets an equal share: on a GPU machine its own GPUs (the child sees only them,
through CUDA_VISIBLE_DEVICES, so `cuda:0` is its first one), and everywhere cores // N CPU
threads (OMP_NUM_THREADS; a sharded cell splits its share between its ranks). A child learns
how many jobs shared the machine from OPTBENCH_JOBS and records it with its result, so that a
report can say which times were measured on a shared machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from optbench.config.suite import Cell, launch_nodes
from optbench.errors import OptbenchError

JOBS_ENV = "OPTBENCH_JOBS"  # how many cells ran at once, recorded with each result
CPU_SHARE_ENV = "OPTBENCH_CPU_SHARE"  # cores this cell may use (its ranks share them)


@dataclass(frozen=True)
class Slot:
    """One job's share of the machine: its CPU threads and the GPUs it alone uses."""

    threads: int
    gpus: tuple[str, ...] = ()
    jobs: int = 1
    env: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        gpus = f", GPU {','.join(self.gpus)}" if self.gpus else ""
        return f"{self.threads} CPU thread{'s' * (self.threads != 1)}{gpus}"


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else every device."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def machine_slots(jobs: int, cells: list[Cell]) -> list[Slot]:
    """`jobs` equal shares of this machine (no more than there are cells). GPUs are shared out
    only when a cell runs on CUDA; more jobs than GPUs is refused (one cell per GPU at least)."""
    if jobs < 1:
        raise OptbenchError(f"--jobs {jobs}: must be 1 or more")
    if jobs > 1 and launch_nodes() > 1:
        # Every node must start the same sharded cell at the same time on one rendezvous port;
        # cells finishing in a different order on each node would meet the wrong cell's ranks.
        raise OptbenchError(f"--jobs {jobs}: with OPTBENCH_NNODES set, cells run one at a time "
                            "(every node runs the same cell together); use --jobs 1")
    jobs = max(1, min(jobs, len(cells)))  # more shares than cells would leave cores idle
    cores = os.cpu_count() or 1
    threads = max(1, cores // jobs)
    gpus = visible_gpus() if any(c.defaults.device == "cuda" for c in cells) else []
    if gpus and jobs > len(gpus):
        raise OptbenchError(f"--jobs {jobs}: this machine has {len(gpus)} GPU"
                            f"{'s' * (len(gpus) != 1)} and each job needs one; use --jobs "
                            f"{len(gpus)} or fewer")
    per_job = len(gpus) // jobs if gpus else 0
    slots = []
    for j in range(jobs):
        mine = tuple(gpus[j * per_job:(j + 1) * per_job])
        env = {JOBS_ENV: str(jobs), CPU_SHARE_ENV: str(threads), "OMP_NUM_THREADS": str(threads)}
        if mine:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
        slots.append(Slot(threads, mine, jobs, env))
    return slots


def fits(cell: Cell, slot: Slot) -> bool:
    """Whether the cell can run in this share: a CUDA cell needs one GPU per rank."""
    if cell.defaults.device != "cuda":
        return True
    return cell.parallel.nproc // launch_nodes() <= len(slot.gpus)


def cpu_share() -> int:
    """Cores this process may use: its job's share under --jobs, else the machine's."""
    share = os.environ.get(CPU_SHARE_ENV, "")
    return int(share) if share.isdigit() and int(share) > 0 else (os.cpu_count() or 1)


def jobs_sharing() -> int:
    """How many cells ran on this machine at once (1 unless under --jobs)."""
    jobs = os.environ.get(JOBS_ENV, "")
    return int(jobs) if jobs.isdigit() and int(jobs) > 0 else 1
