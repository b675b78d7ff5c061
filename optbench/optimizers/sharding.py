"""What is known of each entry under sharding: the verdict of the parity harness
(`optbench.engine.parity`) per strategy, recorded in known_parity.json beside this file by
`python -m torch.distributed.run --standalone --nproc-per-node 2 -m optbench.engine.parity
--record`. A slow test re-runs the harness and fails when a verdict has changed, so the record
stays what the code does.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

KNOWN_PARITY_FILE = Path(__file__).with_name("known_parity.json")


@functools.cache
def _record() -> dict:
    if not KNOWN_PARITY_FILE.is_file():
        return {"measured": "", "verdicts": {}}
    return json.loads(KNOWN_PARITY_FILE.read_text(encoding="utf-8"))


def known_parity(name: str) -> dict[str, str]:
    """{strategy: "verdict (what it rests on)"} for a registry entry; {} when never measured."""
    return dict(_record()["verdicts"].get(name, {}))


def parity_measured_by() -> str:
    """The command and setting the recorded verdicts come from."""
    return _record()["measured"]
