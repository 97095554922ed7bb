"""Training settings of the reference regression (pure Python: the CLI reads its defaults without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SignatureSettings:
    """Training settings of the reference regression and their defaults (cell2location's)."""

    batch_size: int = 2500   #: cells per step
    lr: float = 0.01         #: Adam learning rate
    seed: int = 0
    threads: int = 1         #: CPU threads for torch during training
