"""How optbench starts its own Python children (a cell's worker, a sharded cell's launcher and
ranks, the parity harness) so that nothing in the current directory runs in them.

`python -m` puts the current directory first on sys.path, so a json.py or pickle.py lying
where optbench was started would run in every child. Children start with -P (Python 3.11+: no
such entry; before, a -c that removes it) and import from exactly the parent's sys.path, passed
as PYTHONPATH: plugins
importable in the parent are importable in the child, the current directory only if it was
on the parent's path. torchrun is told `--no-python` and given the same command, so its ranks
start the same way.
"""
from __future__ import annotations

import os
import sys

# Python 3.10 has no -P: the child starts with -c, which puts '' (the current directory) first
# on sys.path; this drops it and runs the module as -m would.
RUN_MODULE_WITHOUT_CWD = ("import runpy, sys; del sys.path[0]; del sys.argv[0]; "
                          "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)")


def module_command(module: str, *args: str, version: tuple[int, int] = sys.version_info[:2]
                   ) -> list[str]:
    """`python -P -m MODULE ARGS` (before Python 3.11: the same through RUN_MODULE_WITHOUT_CWD)."""
    if version >= (3, 11):
        return [sys.executable, "-P", "-m", module, *args]
    return [sys.executable, "-c", RUN_MODULE_WITHOUT_CWD, module, *args]


def torchrun_module_args(module: str, *args: str) -> list[str]:
    """The tail of a torchrun command that runs MODULE on every rank like `module_command`:
    torchrun's own `-m` would start each rank with a plain `python -m`."""
    return ["--no-python", *module_command(module, *args)]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment, `extra` on top, and its import view as PYTHONPATH."""
    env = dict(os.environ)
    env.update(extra or {})
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env
