"""Results where this field's users already look: Weights & Biases, TensorBoard, CSV and Parquet.

One W&B run and one TensorBoard run per cell, each with the cell's configuration and
environment, every stored metric under its unit-bearing name (`tokens_per_s`,
`peak_allocated_bytes`, ...), the loss curve by step and by tokens (with the lr), and the suite
report's figures of its model. The same destinations serve `optbench export` (from the store)
and a suite's `log:` (streamed while `run` trains: curve and metrics, no figures, since the
report is written after the last cell).

wandb and tensorboard are optional extras (`pip install 'optbench[export]'`), imported only when
asked for. Tested offline: W&B's offline mode writes its run file locally, and TensorBoard's
event files are read back with its own reader (tests/render/test_export.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from optbench.errors import OptbenchError
from optbench.metrics import is_number

EXTRA = "pip install 'optbench[export]'"


@dataclass
class CellRecord:
    """What one cell exports: names, setup, metrics, the curve and the figures."""

    suite: str
    cell_id: str
    run_id: int | None  # its row in the store; None while it is still running
    config: dict[str, Any]
    tokens_per_step: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    curve: list[tuple[int, float, float | None]] = field(default_factory=list)  # step, loss, lr
    figures: list[Path] = field(default_factory=list)
    status: str = "ok"  # optbench.metrics.STATUSES, or 'interrupted' for a stream cut short
    error: str | None = None

    @property
    def name(self) -> str:
        """'quick/llama_9m/adamw/seq256', with '#run_id' once stored: several stored runs of
        one cell (a rerun, an older version) export as several runs, never over each other."""
        return f"{self.suite}/{self.cell_id}" + (f"#{self.run_id}" if self.run_id else "")

    def tokens(self, step: int) -> int | None:
        return step * self.tokens_per_step if self.tokens_per_step else None


class OpenRun(Protocol):
    def log_step(self, step: int, tokens: int | None, loss: float, lr: float | None) -> None: ...

    def close(self, metrics: dict[str, float], figures: list[Path], status: str = "ok",
              error: str | None = None) -> str: ...


class Destination(Protocol):
    def open(self, record: CellRecord) -> OpenRun: ...


def export_record(destination: Destination, record: CellRecord) -> str:
    """The whole record into one run of `destination`; where it was written."""
    run = destination.open(record)
    for step, loss, lr in record.curve:
        run.log_step(step, record.tokens(step), loss, lr)
    return run.close(record.metrics, record.figures, record.status, record.error)


def finite_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numbers only: a NaN or a missing value is 'not measured', never logged as a point."""
    return {k: float(v) for k, v in metrics.items() if is_number(v)}


# --- Weights & Biases --------------------------------------------------------------------


class WandbDestination:
    """One W&B run per cell in `project` (offline: local run files only, no account needed)."""

    def __init__(self, project: str, offline: bool, directory: str | Path | None = None):
        try:
            import wandb
        except ImportError:
            raise OptbenchError(f"--wandb needs the wandb package: {EXTRA}") from None
        self.wandb, self.project, self.offline = wandb, project, offline
        if not offline and not _wandb_key_configured():
            # wandb.init would ask for one interactively in a terminal: say it here instead.
            raise OptbenchError("W&B: no API key (set WANDB_API_KEY or run `wandb login`); "
                                "--offline (log: wandb: {offline: true}) writes the runs locally")
        self.directory = Path(directory) if directory else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def open(self, record: CellRecord) -> "_WandbRun":
        try:
            run = self.wandb.init(
                project=self.project, name=record.name, group=record.suite,
                job_type="optbench-cell", config=record.config, reinit="create_new",
                mode="offline" if self.offline else "online",
                dir=str(self.directory) if self.directory else None,
                settings=self.wandb.Settings(silent=True, console="off"),
            )
        except Exception as exc:  # no login, no network: one line, never a traceback
            raise OptbenchError(f"W&B: cannot start a run in project '{self.project}' "
                                f"({type(exc).__name__}: {exc}); --offline writes it locally, "
                                "`wandb login` first to upload") from None
        return _WandbRun(self.wandb, run)


def _wandb_key_configured() -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` puts it), or a
    WANDB_MODE that needs none."""
    import netrc
    import os

    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class _WandbRun:
    def __init__(self, wandb, run):
        self.wandb, self.run = wandb, run
        run.define_metric("train/tokens")
        run.define_metric("train/loss_by_tokens", step_metric="train/tokens")

    def log_step(self, step: int, tokens: int | None, loss: float, lr: float | None) -> None:
        row = {"train/loss": loss}
        if lr is not None:
            row["train/lr"] = lr
        if tokens is not None:
            row.update({"train/tokens": tokens, "train/loss_by_tokens": loss})
        self.run.log(row, step=step)

    def close(self, metrics: dict[str, float], figures: list[Path], status: str = "ok",
              error: str | None = None) -> str:
        self.run.summary.update({**finite_metrics(metrics), "status": status,
                                 **({"error": error} if error else {})})
        if figures:
            self.run.log({f"figures/{p.stem}": self.wandb.Image(str(p)) for p in figures})
        where = self.run.dir  # .../wandb/<run>/files
        self.run.finish()
        return str(Path(where).parent)


# --- TensorBoard -------------------------------------------------------------------------


class TensorBoardDestination:
    """One TensorBoard run per cell: DIR/SUITE/CELL (event files written by torch's
    SummaryWriter). Exporting a run again replaces its event files, never adds to them."""

    def __init__(self, root: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise OptbenchError(f"--tensorboard needs the tensorboard package: {EXTRA}") from None
        self.writer_class, self.root = SummaryWriter, Path(root)

    def run_dir(self, record: CellRecord) -> Path:
        return self.root / safe_part(record.suite) / safe_part(record.name.split("/", 1)[1])

    def open(self, record: CellRecord) -> "_TensorBoardRun":
        directory = self.run_dir(record)
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("events.out.tfevents.*"):
            old.unlink()
        writer = self.writer_class(log_dir=str(directory))
        config = json.dumps(record.config, indent=2, sort_keys=True, default=str)
        writer.add_text("config", "    " + config.replace("\n", "\n    "), 0)  # a code block
        return _TensorBoardRun(writer, directory)


class _TensorBoardRun:
    def __init__(self, writer, directory: Path):
        self.writer, self.directory, self.last_step = writer, directory, 0

    def log_step(self, step: int, tokens: int | None, loss: float, lr: float | None) -> None:
        self.writer.add_scalar("train/loss", loss, step)
        if lr is not None:
            self.writer.add_scalar("train/lr", lr, step)
        if tokens is not None:
            self.writer.add_scalar("train_by_tokens/loss", loss, tokens)
        self.last_step = step

    def close(self, metrics: dict[str, float], figures: list[Path], status: str = "ok",
              error: str | None = None) -> str:
        self.writer.add_text("status", status + (f": {error}" if error else ""), self.last_step)
        for name, value in sorted(finite_metrics(metrics).items()):
            self.writer.add_scalar(f"metrics/{name}", value, self.last_step)
        for path in figures:
            self.writer.add_image(f"figures/{path.stem}", _png(path), self.last_step,
                                  dataformats="HWC")
        self.writer.close()
        return str(self.directory)


def _png(path: Path):
    import matplotlib.image

    return matplotlib.image.imread(str(path))[..., :3]  # RGB, floats in 0..1


def safe_part(text: str) -> str:
    """A cell id or suite name as one path component: 'llama_9m/adamw/seq256' ->
    'llama_9m-adamw-seq256'."""
    return re.sub(r"[^A-Za-z0-9_.@#=+-]+", "-", text).strip("-.") or "run"


# --- tables for pandas -------------------------------------------------------------------


def write_table(frame: pd.DataFrame, path: Path, fmt: str) -> None:
    """`fmt` 'csv' or 'parquet' (through pandas' pyarrow engine), whatever the file's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        try:
            frame.to_parquet(path, index=False)
        except ImportError:
            raise OptbenchError(f"--parquet needs pyarrow: {EXTRA}") from None
    else:
        frame.to_csv(path, index=False)


def curves_path(path: Path) -> Path:
    """Where the per-step curves go beside a runs table: runs.csv -> runs.curves.csv."""
    return path.with_name(f"{path.stem}.curves{path.suffix}")
