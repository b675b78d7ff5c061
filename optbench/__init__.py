"""optbench: what an optimizer costs in memory and time, and what it buys in loss."""

__version__ = "0.1.0"
