"""Run cells as jobs on a SLURM cluster through submitit; hand each result on as it comes back.

Each cell is one submitit job whose function is `runner.run_cell` with the cell as argument:
the job runs on its node exactly what a local run runs (the worker in a fresh process, under
torchrun for a sharded cell) and returns the same `RunResult`. The parent only submits, polls
and hands results to `on_done` (which stores them), so a cell's result is committed the moment
its job ends, as with local processes. submitit's local executor runs the same path on one
machine (`cluster="local"`), which is how the tests exercise it.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from optbench.config.suite import Cell, launch_nodes
from optbench.engine.outcome import CellOutcome, RunResult
from optbench.engine.runner import STDERR_TAIL_LINES, Hooks, run_cell
from optbench.errors import OptbenchError, informative_line

CLUSTERS = ("slurm", "local")
# Past a cell's own limit (counted from its first step), the job still loads data, builds the
# model and evaluates: SLURM must not end it for that.
TIMEOUT_MARGIN_MIN = 10
# A cell without `timeout_s` asks for a day, a common partition maximum (override: timeout_min=).
DEFAULT_TIMEOUT_MIN = 24 * 60
# optbench runs each cell as one task on one node: these would run it several times over.
FIXED_PARAMETERS = ("nodes", "tasks_per_node", "slurm_nodes", "slurm_ntasks_per_node")
NAMES_HINT = (" (submitit's own: name, timeout_min, mem_gb, cpus_per_task, gpus_per_node,"
              " stderr_to_stdout; or slurm_<sbatch option>, e.g. slurm_partition)")


@dataclass
class SubmititOptions:
    """Where and how cells are submitted (`optbench run --executor slurm|submitit-local`)."""

    cluster: str = "slurm"  # "slurm", or "local": submitit's LocalExecutor, on this machine
    folder: Path = Path("results/submitit")  # job scripts, pickles and logs: <job id>_0_log.err
    parameters: dict[str, Any] = field(default_factory=dict)  # for update_parameters, as typed
    max_in_flight: int | None = None  # jobs submitted and not yet back; None: every cell at once
    poll_s: float = 2.0  # how often the parent asks whether a job has ended

    @property
    def label(self) -> str:
        """How results and errors name the jobs: 'SLURM job 123' or 'submitit job 4567'."""
        return "SLURM" if self.cluster == "slurm" else "submitit"

    def ignored(self) -> list[str]:
        """The SLURM-only parameters that submitit's local executor leaves out."""
        return [k for k in self.parameters if self.cluster == "local" and k.startswith("slurm_")]


def parse_parameters(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings from the command line -> update_parameters' keyword arguments.

    Values are typed the way submitit checks them: "8" -> 8 (cpus_per_task must be an int),
    "2.5" -> 2.5, true/false -> bools, a JSON list or object (slurm_setup=["module load cuda"])
    as such; anything else stays a string (slurm_partition=gpu).
    """
    parameters: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier() or not value.strip():
            raise OptbenchError(f"--slurm '{item}': expected KEY=VALUE, e.g. slurm_partition=gpu")
        if key in FIXED_PARAMETERS:
            raise OptbenchError(f"--slurm {key}: optbench runs each cell as one task on one node;"
                                " a sharded cell's ranks run on that node, one GPU each")
        parameters[key] = _typed(key, value.strip())
    return parameters


def _typed(key: str, value: str) -> Any:
    if _looks_like_a_name(value):  # slurm_exclude=007, name=1e3: not numbers
        return value
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value[0] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            raise OptbenchError(f"--slurm {key}={value}: not valid JSON") from None
    for kind in (int, float):
        try:
            return kind(value) if any(ch.isdigit() for ch in value) else value
        except ValueError:
            continue
    return value


def _looks_like_a_name(value: str) -> bool:
    """A value float() would read but a user meant as text: leading zeros ('007'), an exponent
    or inf/nan ('1e3' as a job name)."""
    try:
        float(value)
    except ValueError:
        return False
    digits = value.lstrip("+-")
    leading_zero = len(digits) > 1 and digits[0] == "0" and digits[1] != "."
    return leading_zero or any(c in value.lower() for c in ("e", "inf", "nan"))


def check_options(options: SubmititOptions, cells: list[Cell] | tuple = ()) -> None:
    """Fail before anything is submitted: a cluster submitit cannot reach, a parameter it does
    not know, a cell a one-node job cannot hold."""
    _executor(options)  # raises on an unknown cluster or parameter
    if launch_nodes() > 1 and any(c.launches_ranks for c in cells):
        # The variable would reach the jobs, whose torchrun would then wait for other nodes.
        raise OptbenchError(
            "OPTBENCH_NNODES is set: a submitit job runs a cell on one node (its ranks one GPU"
            " each); unset it, or spread a cell over nodes as docs/parallel.md#several-nodes says")


def _executor(options: SubmititOptions, cell: Cell | None = None):
    """A fresh executor per job (update_parameters accumulates: one cell's GPUs must not carry
    over to the next), with the cell's resources and then the user's parameters over them."""
    import submitit

    if options.cluster not in CLUSTERS:
        raise OptbenchError(f"cluster '{options.cluster}': accepted: {', '.join(CLUSTERS)}")
    try:
        executor = submitit.AutoExecutor(folder=Path(options.folder), cluster=options.cluster)
    except RuntimeError as exc:  # no srun on this machine: not a SLURM login node
        raise OptbenchError(f"--executor slurm: {informative_line(str(exc))}; run on the cluster's"
                            " login node, or try the path here with --executor submitit-local") from None
    if cell is not None:
        executor.update_parameters(**_cell_parameters(cell))
    for key, value in options.parameters.items():  # one at a time, to name the bad one
        try:
            executor.update_parameters(**{key: value})
        except (NameError, ValueError, TypeError, AssertionError) as exc:  # submitit's checks
            raise OptbenchError(f"--slurm {key}={value}: {informative_line(str(exc))}"
                                f"{'' if '_' in key else NAMES_HINT}") from None
    return executor


def _cell_parameters(cell: Cell) -> dict[str, Any]:
    """What one cell's job asks for: one task on one node, one GPU per rank for a CUDA cell,
    and time for its limit plus start-up and evaluation."""
    limit = cell.defaults.timeout_s
    parameters = {
        "name": f"optbench:{cell.id}", "nodes": 1, "tasks_per_node": 1,
        "timeout_min": math.ceil(limit / 60) + TIMEOUT_MARGIN_MIN if limit else DEFAULT_TIMEOUT_MIN,
    }
    if cell.defaults.device == "cuda":  # not for CPU cells: some CPU partitions refuse any GPU ask
        parameters["gpus_per_node"] = cell.parallel.nproc
    return parameters


@dataclass
class _Submitted:
    cell: Cell
    job: Any  # submitit.Job[RunResult]
    submitted_at: float
    started: bool = False


def run_cells_submitit(
    cells: list[Cell], options: SubmititOptions, hooks: Hooks | None = None,
    on_done: Callable[[Cell, RunResult], None] = lambda cell, result: None,
) -> list[RunResult]:
    """Submit each cell as a job (at most `options.max_in_flight` out at once) and call
    `on_done` in this thread as each comes back; a job that failed as a job (cancelled,
    preempted for good, killed at its time limit, node failure) is a `crashed` result naming
    it. On Ctrl-C every job not back yet is cancelled; those back are already handed on."""
    hooks = hooks or Hooks()
    check_options(options, cells)
    waiting, out, results = deque(cells), [], []
    cap = options.max_in_flight or max(len(cells), 1)
    try:
        while waiting or out:
            while waiting and len(out) < cap:
                out.append(_submit(options, waiting.popleft()))
            back = [s for s in out if _poll(s, hooks)]
            for s in back:
                out.remove(s)
                result = _collect(s, options)
                on_done(s.cell, result)
                results.append(result)
            if out and not back:
                time.sleep(options.poll_s)
    except BaseException:  # Ctrl-C (or a refused submission): leave nothing queued or running
        _cancel(out)
        raise
    return results


def _submit(options: SubmititOptions, cell: Cell) -> _Submitted:
    executor = _executor(options, cell)
    try:
        job = executor.submit(run_cell, cell)
    except Exception as exc:  # sbatch refused it (partition, account, QOS limits...)
        raise OptbenchError(f"submitting {cell.id}: {informative_line(str(exc))}") from None
    return _Submitted(cell, job, time.time())


def _poll(s: _Submitted, hooks: Hooks) -> bool:
    """Whether the job is back; tells the live display once it has started (SLURM jobs send
    no step events: the display shows which cells run, not their steps)."""
    done = s.job.done()
    if not s.started and (done or _state(s.job).startswith(("RUNNING", "COMPLETING"))):
        s.started = True
        hooks.on_start(s.cell, int(s.job.job_id) if str(s.job.job_id).isdigit() else 0)
    return done


def _state(job) -> str:
    try:
        return str(job.state)
    except Exception:  # sacct unreachable for a moment: submitit says UNKNOWN, and so do we
        return "UNKNOWN"


def _collect(s: _Submitted, options: SubmititOptions) -> RunResult:
    """The job's RunResult; a job that returned none is `crashed`, naming the job and why."""
    try:
        result = s.job.result()
    except Exception as exc:  # submitit's UncompletedJobError / FailedJobError, or lost files
        why = _job_failure(s.job, exc, options)
        outcome = CellOutcome("crashed", why, _stderr_tail(s.job) or str(exc)[-2000:],
                              env={"executor": options.cluster, "submitit_job": str(s.job.job_id)},
                              started_at=s.submitted_at, ended_at=time.time())
        return RunResult.of(s.cell, outcome)
    result.env.update(executor=options.cluster, submitit_job=str(s.job.job_id))  # to find its logs
    return result


def _job_failure(job, exc: Exception, options: SubmititOptions) -> str:
    """'SLURM job 123 ended without a result (state CANCELLED by 1000)', or, when the job's
    own Python failed (e.g. submitit's handler at the time limit), that error's line."""
    name = f"{options.label} job {job.job_id}"
    text = str(exc)
    if "failed during processing with trace" in text:  # FailedJobError: the trace is between rules
        parts = text.split("-" * 22)
        trace = parts[1] if len(parts) > 2 else text
        return f"{name} failed: {informative_line(trace)}"
    return f"{name} ended without a result (state {_state(job)})"


def _stderr_tail(job) -> str | None:
    try:
        text = job.stderr() or ""
    except OSError:
        return None
    return "\n".join(text.splitlines()[-STDERR_TAIL_LINES:]).strip() or None


def _cancel(out: list[_Submitted]) -> None:
    """scancel (locally: SIGINT to the job's controller) every job not back yet; best effort,
    as a job may end while we cancel it."""
    for s in out:
        try:
            s.job.cancel(check=False)
        except Exception:
            continue
