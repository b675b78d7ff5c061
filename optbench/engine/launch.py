"""The ranks of a sharded cell, started by torchrun: `python -m optbench.engine.launch NPROC
LOGS CELL.pkl RESULT.json RDZV_ID` runs what `torchrun --standalone --nproc-per-node NPROC
--no-python python -P -m optbench.engine.worker CELL.pkl RESULT.json` runs (each rank isolated
from the current directory like every worker: optbench.engine.isolation), through torchrun's own entry point
(`torch.distributed.run.run`), so that failed ranks come back as torchrun's structured record
(`ChildFailedError`: each rank seen failed, its exit code or signal) rather than as text to
parse. That record goes to RESULT.json.failure; each rank's stderr to LOGS (torchrun's
`--redirects 2 --log-dir`), so the runner can show the tail of the rank that failed.

Everything else is torchrun's: the rendezvous, one process per rank with RANK / WORLD_SIZE /
LOCAL_RANK set, and stopping every rank when one fails (or when this process gets SIGTERM).
With OPTBENCH_NNODES=N, OPTBENCH_NODE_RANK (or SLURM_NODEID) and OPTBENCH_MASTER=HOST:PORT set
on every node (each running `optbench run`), the ranks are spread over N nodes by torchrun's
static rendezvous at node 0 instead of `--standalone`, NPROC / N per node, node 0 holding rank 0
(docs/parallel.md#several-nodes).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from optbench.config.suite import launch_nodes, master_endpoint, node_rank
from optbench.engine.isolation import torchrun_module_args
from optbench.engine.slots import CPU_SHARE_ENV, cpu_share


def torchrun_args(nproc: int, logs: str, cell_path: str, result_path: str,
                  rdzv_id: str) -> list[str]:
    """Every rank's stdout and stderr into LOGS; rank 0's stdout (its progress events) teed to
    this process's stdout by torchrun, so that only this process holds the runner's pipe and a
    rank that hangs cannot keep it open after the cell is stopped."""
    return [*rendezvous_args(nproc, rdzv_id), "--redirects", "3", "--tee", "1",
            "--local-ranks-filter", "0", "--log-dir", logs,
            *torchrun_module_args("optbench.engine.worker", cell_path, result_path)]


def rendezvous_args(nproc: int, rdzv_id: str) -> list[str]:
    """One node: `--standalone`. Several: torchrun's static rendezvous at node 0's address,
    this node's rank given, so node 0 holds rank 0 (and stores the result)."""
    nodes = launch_nodes()
    if nodes == 1:
        return ["--standalone", "--nproc-per-node", str(nproc)]
    host, port = master_endpoint()
    return ["--nnodes", str(nodes), "--node-rank", str(node_rank()),
            "--nproc-per-node", str(nproc // nodes), "--master-addr", host,
            "--master-port", str(port), "--rdzv-id", rdzv_id]


def failure_path(result_path: str | Path) -> Path:
    return Path(f"{result_path}.failure")


def elsewhere_path(result_path: str | Path) -> Path:
    """Where a node without rank 0 notes that the cell's result is written on another node."""
    return Path(f"{result_path}.elsewhere")


def threads_per_rank(nproc: int) -> int:
    """CPU threads each rank gets: the cell's cores (the machine's, or its job's share under
    --jobs) shared out, as torchrun would otherwise pin every rank to 1 thread whatever the
    machine has."""
    return max(1, cpu_share() // nproc)


def main(nproc: int, logs: str, cell_path: str, result_path: str, rdzv_id: str) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    threads = str(threads_per_rank(nproc // launch_nodes()))
    if CPU_SHARE_ENV in os.environ:  # a --jobs share, set for the whole cell: split it
        os.environ["OMP_NUM_THREADS"] = threads
    os.environ.setdefault("OMP_NUM_THREADS", threads)
    try:
        run(parse_args(torchrun_args(nproc, logs, cell_path, result_path, rdzv_id)))
    except ChildFailedError as exc:
        record = [{"rank": rank, "local_rank": f.local_rank, "exitcode": f.exitcode,
                   "signal": f.signal_name() if f.exitcode < 0 else None}
                  for rank, f in sorted(exc.failures.items())]
        failure_path(result_path).write_text(json.dumps(record))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), *sys.argv[2:6]))
