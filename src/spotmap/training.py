"""The SVI loop shared by the reference and the mapping models.

One loop gives every model the same guarantees:

* **Seeds** — ``seed`` fixes pyro/torch RNGs and the minibatch order (a ``torch.Generator``
  seeded with ``seed + epoch``), so a CPU run is bit-for-bit repeatable.
* **Convergence rule** — after ``min_epochs``, training stops when the change of the smoothed
  -ELBO over the last window, relative to its decrease since the first epoch, falls below ``tol``:
  with ``w = window`` epochs and ``L`` the -ELBO per epoch,
  ``|mean(L[-w:]) - mean(L[-2w:-w])| / (L[0] - mean(L[-w:])) < tol`` (:func:`relative_change`).
  Both numbers are recorded in the history (``elbo_smoothed``, ``rel_change``). The -ELBO's level holds
  constants the models drop (the log d! of the counts), and even its sign is arbitrary: a rule relative to
  the level would stop at an epoch that depends on them; differences do not.
* **Checkpoints** — every ``checkpoint_every`` epochs the parameters, optimiser state, RNG
  state and history are written atomically to ``checkpoint_path`` (tensors only, loaded with
  ``torch.load(weights_only=True)``). Rerunning the same command resumes from it and ends
  bit-identical to an uninterrupted CPU run.
* **Non-finite loss** — a clean :class:`~spotmap.errors.SpotmapError` naming the epoch and the
  likely cause, instead of NaNs propagating into the results.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import PyroOptim

from spotmap.errors import SpotmapError
from spotmap.optim import LazyClippedAdam
from spotmap.utils import atomic_path, log


@dataclass
class TrainConfig:
    """Settings of :func:`train_svi` (units in brackets)."""

    max_epochs: int = 1000            #: upper bound on passes over the data
    lr: float = 0.01                  #: Adam learning rate (spotmap.optim.LazyClippedAdam)
    #: learning rate of the observation-level parameters named in ``local_params`` when training in minibatches
    #: (None: ``lr``). The lazy optimiser moves their rows once per epoch, global parameters once per step.
    local_lr: float | None = None
    local_params: tuple[str, ...] = ()  #: param-store names of observation-level (one row per obs) parameters
    clip_norm: float = 10.0           #: gradients are clipped to [-clip_norm, clip_norm] elementwise
    #: in minibatches, clip the global parameters' gradients at clip_norm × n_obs / batch_size as well (the
    #: observation-level ones always are): see :func:`train_svi`
    scale_global_clip: bool = False
    batch_size: int | None = None     #: observations per step; None = full batch
    seed: int = 0
    min_epochs: int = 100             #: the convergence rule is not checked before this epoch
    window: int = 50                  #: epochs in each smoothing window of the convergence rule
    tol: float = 1e-3                 #: change of the smoothed -ELBO per window, relative to its decrease so far
    checkpoint_every: int | None = None  #: epochs between checkpoints; None = no checkpoints
    checkpoint_path: Path | None = None
    progress: bool = True             #: progress bar on stderr (only when stderr is a terminal)
    log_every: int = 100              #: epochs between log lines when there is no progress bar
    #: ... and at most this many seconds between them (an epoch over a whole Visium HD sample on a CPU is long:
    #: 100 epochs would leave a pipeline's task log silent for a long time); 0: by epochs only
    log_seconds: float = 60.0
    nan_hint: str = "check the input counts and lower the learning rate"
    fingerprint: dict = field(default_factory=dict)  #: inputs and settings a checkpoint must match


def relative_change(elbos: list[float], window: int) -> float:
    """The convergence rule's statistic (module docstring): the change of the window mean of the -ELBO between
    the last two windows over its decrease since the first epoch; NaN before two windows, inf while the -ELBO
    has not decreased. Unchanged when a constant is added to (or a positive factor multiplies) the loss."""
    w = window
    if len(elbos) < 2 * w:
        return float("nan")
    last, prev = float(np.mean(elbos[-w:])), float(np.mean(elbos[-2 * w:-w]))
    decrease = float(elbos[0]) - last
    return abs(last - prev) / decrease if decrease > 0 else float("inf")


def fingerprint_of(**items) -> str:
    """A short hash of JSON-able items (settings, data shapes and sums) for checkpoint matching."""
    blob = json.dumps(items, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _save_checkpoint(path: Path, epoch: int, optim: PyroOptim, history: list[dict], fp: str,
                     converged: bool) -> None:
    state = {
        "epoch": epoch,
        "params": {k: v.detach().cpu().clone() for k, v in pyro.get_param_store().named_parameters()},
        "optim": optim.get_state(),
        "rng": torch.get_rng_state(),
        "history": {k: [h[k] for h in history] for k in (history[0].keys() if history else [])},
        "fingerprint": fp,
        "converged": converged,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint safely: only tensors and plain containers are accepted."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise SpotmapError(f"{path}: cannot be loaded as a spotmap checkpoint ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it to start afresh") from None


def _duration(seconds: float) -> str:
    """``1 h 05 min``, ``12 min 30 s`` or ``45 s``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def _optimizer(config: TrainConfig, n_obs: int) -> tuple[PyroOptim, bool]:
    """Clipped Adam that leaves the rows of spot/cell-level parameters outside a minibatch alone
    (:mod:`spotmap.optim`), and whether training is full batch."""
    full = config.batch_size is None or config.batch_size >= n_obs
    local_lr = config.lr if full or config.local_lr is None else config.local_lr
    # A minibatch's likelihood is scaled by n_obs / batch_size (an unbiased estimate for the global
    # parameters), so an observation's own parameters see that multiple of their full-data gradient:
    # their clip threshold scales alike, so they are clipped as in full-batch training. A global
    # parameter's minibatch gradient is an estimate whose spread grows with the same factor; clipping it at
    # the full-batch threshold cuts its rare large values (a gene's high counts) and biases it (the spatial
    # model's overdispersion ran towards Poisson), so with scale_global_clip it scales too.
    scale = 1.0 if full else n_obs / config.batch_size
    local_clip = config.clip_norm * scale
    global_clip = config.clip_norm * (scale if config.scale_global_clip else 1.0)
    local = frozenset(config.local_params)

    def optim_args(name: str) -> dict:
        if name in local:
            return {"lr": local_lr, "clip_norm": local_clip}
        return {"lr": config.lr, "clip_norm": global_clip}

    return PyroOptim(LazyClippedAdam, optim_args), full


def _resume(ckpt: Path | None, fp: str, optim: PyroOptim) -> tuple[list[dict], int, bool]:
    """``(history, epoch, converged)`` of the checkpoint ``ckpt`` when it belongs to this run (parameters,
    optimiser and RNG state restored), else an empty start."""
    if ckpt is None or not Path(ckpt).exists():
        return [], 0, False
    state = load_checkpoint(Path(ckpt))
    if state.get("fingerprint") != fp:
        log.warning("%s belongs to other inputs or settings; starting afresh (it will be overwritten)", ckpt)
        return [], 0, False
    params = dict(pyro.get_param_store().named_parameters())
    with torch.no_grad():
        for name, value in state["params"].items():
            if name not in params:
                raise SpotmapError(f"{ckpt}: parameter {name!r} does not belong to this model; delete it")
            params[name].copy_(value.to(params[name].device))
    optim.set_state(state["optim"])
    torch.set_rng_state(state["rng"])
    hist = state["history"]
    history = [dict(zip(hist.keys(), vals)) for vals in zip(*hist.values())] if hist else []
    log.info("resuming from %s at epoch %d", ckpt, int(state["epoch"]))
    return history, int(state["epoch"]), bool(state["converged"])


def _epoch_loss(svi: SVI, batch_kwargs: Callable, config: TrainConfig, n_obs: int, full: bool, epoch: int) -> float:
    """One pass over the data: the mean -ELBO of its steps (minibatches in an order seeded by the epoch)."""
    try:
        if full:
            step_losses = [svi.step(**batch_kwargs(None))]
        else:
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
            perm = torch.randperm(n_obs, generator=gen)
            step_losses = [svi.step(**batch_kwargs(perm[i:i + config.batch_size]))
                           for i in range(0, n_obs, config.batch_size)]
    except ValueError as exc:
        # pyro's argument validation meets NaN/inf parameters before the loss does
        text = str(exc)
        if isinstance(exc, SpotmapError) or not ("invalid values" in text or "nan" in text.lower()):
            raise
        raise SpotmapError(f"training stopped at epoch {epoch + 1}: the loss is not finite (non-finite "
                           f"values reached the model: {text.splitlines()[0][:160]}); likely cause: "
                           f"{config.nan_hint}") from None
    value = float(np.mean(step_losses))
    if not math.isfinite(value):
        raise SpotmapError(f"training stopped at epoch {epoch + 1}: the loss is not finite ({value}); "
                           f"likely cause: {config.nan_hint}")
    return value


class _Progress:
    """A progress bar on a terminal, else a log line every ``log_every`` epochs or ``log_seconds`` seconds."""

    def __init__(self, config: TrainConfig, start_epoch: int):
        self.config, self.start_epoch = config, start_epoch
        self.bar = None
        if config.progress and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("-ELBO {task.fields[loss]}"), TimeRemainingColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("train", total=config.max_epochs, completed=start_epoch, loss="…")
        self.session_t0 = self.last_log = time.perf_counter()

    def update(self, epoch: int, value: float, rel: float) -> None:
        c = self.config
        if self.bar is not None:
            self.bar.update(self.task, completed=epoch, loss=f"{value:.4g}")
        elif c.log_every and (epoch % c.log_every == 0 or (
                c.log_seconds and time.perf_counter() - self.last_log >= c.log_seconds)):
            self.last_log = time.perf_counter()
            per_epoch = (self.last_log - self.session_t0) / (epoch - self.start_epoch)
            log.info("epoch %d/%d  -ELBO %.6g  rel.change %.2e  %.3g s per epoch, at most %s to go",
                     epoch, c.max_epochs, value, rel, per_epoch, _duration(per_epoch * (c.max_epochs - epoch)))

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def train_svi(model: Callable, guide: Callable, n_obs: int, batch_kwargs: Callable[[torch.Tensor | None], dict],
              config: TrainConfig, loss: pyro.infer.ELBO | None = None) -> pd.DataFrame:
    """Fit ``guide`` to ``model`` by SVI; return the training history (one row per epoch).

    Parameters
    ----------
    model, guide
        Pyro callables taking the keyword arguments produced by ``batch_kwargs``.
    n_obs
        Number of observations (cells or spots) that minibatches are drawn from.
    batch_kwargs
        ``batch_kwargs(idx)`` returns the model/guide keyword arguments for the observations
        ``idx`` (a LongTensor), or for all observations when ``idx`` is None.
    config
        See :class:`TrainConfig`.
    loss
        Pyro ELBO, :class:`~pyro.infer.Trace_ELBO` by default.

    Returns
    -------
    DataFrame with columns ``epoch, elbo, elbo_smoothed, rel_change, seconds`` where ``elbo``
    is the negative ELBO per epoch (mean over its minibatch steps, each an estimate for the full data).
    """
    fp = fingerprint_of(**config.fingerprint) if config.fingerprint else ""
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    optim, full = _optimizer(config, n_obs)
    svi = SVI(model, guide, optim, loss=loss or Trace_ELBO())
    # Create the parameters (the guide's first call draws from the RNG in a fresh and a resumed run alike).
    with torch.no_grad():
        guide(**batch_kwargs(None if full else torch.arange(min(n_obs, config.batch_size or n_obs))))
    ckpt = config.checkpoint_path
    history, epoch, converged = _resume(ckpt, fp, optim)
    elbos = [h["elbo"] for h in history]
    progress = _Progress(config, epoch)
    t0 = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    try:
        while epoch < config.max_epochs and not converged:
            value = _epoch_loss(svi, batch_kwargs, config, n_obs, full, epoch)
            epoch += 1
            elbos.append(value)
            w = config.window
            smoothed = float(np.mean(elbos[-w:]))
            rel = relative_change(elbos, w)
            converged = epoch >= config.min_epochs and rel < config.tol
            history.append({"epoch": epoch, "elbo": value, "elbo_smoothed": smoothed, "rel_change": rel,
                            "seconds": time.perf_counter() - t0})
            progress.update(epoch, value, rel)
            if ckpt is not None and config.checkpoint_every and (epoch % config.checkpoint_every == 0 or converged):
                _save_checkpoint(Path(ckpt), epoch, optim, history, fp, converged)
    finally:
        progress.stop()
    if ckpt is not None and config.checkpoint_every and history:
        _save_checkpoint(Path(ckpt), epoch, optim, history, fp, converged)
    if converged:
        log.info("converged at epoch %d (change of the smoothed -ELBO per %d epochs < %g of its decrease so far)",
                 epoch, config.window, config.tol)
    df = pd.DataFrame(history, columns=["epoch", "elbo", "elbo_smoothed", "rel_change", "seconds"])
    df.attrs["converged"] = converged
    return df
