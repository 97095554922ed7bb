"""Run cell2location 0.1.5 on prepared inputs; meant for its own virtual environment.

Called by ``benchmarks/compare_cell2location.py`` as
``<c2l-venv>/bin/python benchmarks/c2l_runner.py --adata sp.h5ad --signatures sig.csv --epochs N --out DIR``.
It imports nothing from spotmap (the cell2location venv does not have it).

Settings are cell2location's documented ones for the spatial model: ``Cell2location(adata,
cell_state_df, N_cells_per_location=8, detection_alpha=20)`` with ``batch_key='sample'``, then
``train(max_epochs=N, batch_size=None, train_size=1, lr=0.002)`` (full batch), then
``export_posterior`` with 1,000 posterior samples (tutorial: ``num_samples=1000, batch_size=n_obs``;
``--export quantiles`` uses ``use_quantiles=True`` instead).

With ``--checkpoints 500,1000,...`` one uninterrupted training run also writes ``q05_<epochs>.csv`` and
``means_<epochs>.csv`` at those epochs, computed exactly from the mean-field (AutoNormal) guide by a
Lightning callback whose time is excluded from the training time.

With ``--save-every K`` the run also keeps ``resume.pt`` in ``--out`` (every K epochs, written to a temporary
name and renamed): the guide's parameters, the optimizer's state (Adam moments and step counts), torch's RNG
state, the per-epoch ELBO so far and the checkpoint timings. ``--resume`` continues from it, so a 30,000-epoch
run can span several sessions: the resumed steps are the ones the uninterrupted run would take (checked: 40
epochs in one process and 20 + 20 resumed, batch setting, give bit-identical q05, checkpoints and ELBO history;
BENCHMARKS.md). ``--stop-after`` ends a process early to make that check. A state saved with other inputs
(sha256 of both files) or settings (seed, lr, N, detection_alpha) is refused; another thread count continues
the same run, though not bit for bit (sums then round in another order). In ``timing.json`` of a
resumed run, ``train_seconds`` and the checkpoint timings count every process; ``import_seconds``,
``setup_seconds``, ``export_seconds``, ``checkpoint_seconds`` and ``total_seconds`` the last one only
(``resumed_at`` says from which epoch).

Writes into ``--out``: ``q05.csv``, ``means.csv`` or ``q50.csv`` (spots × types, plain type names), ``history.csv``
(elbo per epoch), ``timing.json`` (seconds for import, setup, training, export; epochs; versions) and, with
``--export samples``, ``post_means.npz`` (the posterior mean of every site: w_sf, m_g, detection_y_s, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

T0 = time.perf_counter()


def _digest(path: str) -> str:
    """sha256 of a file's bytes (hex)."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adata", required=True, help="spots × genes h5ad, raw counts in X, obs['sample']")
    ap.add_argument("--signatures", required=True, help="genes × types CSV (index = var_names)")
    ap.add_argument("--epochs", type=int, default=3000)
    ap.add_argument("--checkpoints", default="", help="comma-separated epochs to export at (optional)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2") or 2))
    ap.add_argument("--n-cells-per-location", type=float, default=8.0)
    ap.add_argument("--detection-alpha", type=float, default=20.0)
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--save-every", type=int, default=0, help="keep resume.pt every K epochs (0: never)")
    ap.add_argument("--resume", action="store_true", help="continue from --out/resume.pt when it exists")
    ap.add_argument("--stop-after", type=int, default=0,
                    help="end this process once resume.pt holds this many more epochs (a multiple of --save-every; "
                         "for checking resume)")
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument("--export", choices=("samples", "quantiles"), default="samples",
                    help="final export: 'samples' = num_samples posterior samples (tutorial, spotless); "
                         "'quantiles' = use_quantiles=True (q05 straight from the guide, no means)")
    a = ap.parse_args(argv)

    import anndata as ad
    import numpy as np
    import pandas as pd
    import torch

    torch.set_num_threads(a.threads)
    import cell2location
    import pyro
    import scvi
    from cell2location.models import Cell2location

    t_import = time.perf_counter() - T0
    scvi.settings.seed = a.seed
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    adata = ad.read_h5ad(a.adata)
    sig = pd.read_csv(a.signatures, index_col=0)
    sig = sig.loc[adata.var_names]  # cell2location requires identical gene order
    Cell2location.setup_anndata(adata=adata, batch_key="sample")
    mod = Cell2location(adata, cell_state_df=sig, N_cells_per_location=a.n_cells_per_location,
                        detection_alpha=a.detection_alpha)
    t_setup = time.perf_counter() - t

    checkpoints = sorted({int(x) for x in a.checkpoints.split(",") if x.strip()})
    checkpoints = [c for c in checkpoints if 0 < c < a.epochs]
    types = list(sig.columns)
    t_export, legs = 0.0, []

    def write(df_values, tag: str) -> None:
        df = pd.DataFrame(np.asarray(df_values), index=adata.obs_names, columns=types)
        df.index.name = "spot_id"
        df.to_csv(out / f"{tag}.csv")

    import lightning.pytorch as pl
    from scipy.special import ndtri

    class Checkpoints(pl.Callback):
        """At each checkpoint epoch, write q05 and mean of w_sf straight from the AutoNormal guide.

        For the mean-field guide, w_sf = exp(Normal(loc, scale)), so q05 = exp(loc + scale · Φ⁻¹(0.05))
        (what ``export_posterior(use_quantiles=True)`` computes) and mean = exp(loc + scale²/2).
        Training is not interrupted; the seconds spent here are subtracted from the training time.
        """

        def __init__(self, done: int, done_seconds: float):
            self.t_start, self.spent, self.done, self.done_seconds = None, 0.0, done, done_seconds

        def on_train_start(self, trainer, pl_module):
            self.t_start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            epoch = self.done + trainer.current_epoch + 1
            if epoch not in checkpoints:
                return
            t = time.perf_counter()
            g = mod.module.guide
            with torch.no_grad():
                loc, scale = g.locs.w_sf.detach().cpu().double(), g.scales.w_sf.detach().cpu().double()
                write(torch.exp(loc + scale * float(ndtri(0.05))).numpy(), f"q05_{epoch}")
                write(torch.exp(loc + 0.5 * scale**2).numpy(), f"means_{epoch}")
            legs.append({"epochs": epoch,
                         "train_seconds_cumulative": self.done_seconds + t - self.t_start - self.spent - rs.spent})
            # progress so far, so a run stopped early still tells its checkpoints' timings
            (out / "checkpoints.json").write_text(json.dumps({"threads": a.threads, "checkpoints": legs}, indent=2))
            self.spent += time.perf_counter() - t

    resume_file = out / "resume.pt"
    # what makes a saved state this run's: the inputs' bytes and every setting that changes the steps
    fingerprint = {"adata": _digest(a.adata), "signatures": _digest(a.signatures), "seed": a.seed, "lr": a.lr,
                   "n_cells": a.n_cells_per_location, "detection_alpha": a.detection_alpha}
    state = torch.load(resume_file, weights_only=False) if a.resume and resume_file.exists() else None
    saved = state.get("fingerprint", fingerprint) if state else fingerprint  # states saved before the check had none
    if saved != fingerprint:
        differ = ", ".join(f"{k} {saved.get(k)!s:.12} here {v!s:.12}"
                           for k, v in fingerprint.items() if saved.get(k) != v)
        sys.exit(f"{resume_file}: saved by a run with other inputs or settings ({differ}); "
                 "move it away to start afresh")
    if state and state["epoch"] >= a.epochs:
        sys.exit(f"{resume_file}: holds {state['epoch']} epochs, not fewer than --epochs {a.epochs}")
    done = state["epoch"] if state else 0
    if state:
        legs.extend(state["legs"])
        print(f"resuming at epoch {done} from {resume_file}", flush=True)

    class StopForResume(Exception):
        """--stop-after reached, resume.pt written: end this process (for testing resume)."""

    class Resume(pl.Callback):
        """Restore the saved state before the first step; keep it every --save-every epochs.

        State is taken at the start of a step (after the data loader has drawn that epoch's batch and before
        ``svi.step``), the very point at which a resumed run restores it, so the RNG stream carries on exactly.
        """

        def __init__(self):
            self.losses, self.t_start, self.spent = list(state["losses"]) if state else [], None, 0.0
            self.restored = state is None

        def on_train_start(self, trainer, pl_module):
            self.t_start = time.perf_counter()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            epoch = done + trainer.current_epoch  # epochs completed before this step
            if not self.restored:  # after scvi's guide warm-up (its callback's on_train_start), before svi.step
                self.restore(pl_module)
            elif a.save_every and epoch % a.save_every == 0 and epoch > done:
                self.save(pl_module, epoch)
                if a.stop_after and epoch - done >= a.stop_after:
                    raise StopForResume(epoch)

        def restore(self, pl_module):
            mod.module.guide.load_state_dict(state["guide"])
            pl_module.optim.set_state(state["optim"])
            torch.set_rng_state(state["rng"])
            # nothing else counts epochs: the model takes no kl_weight, so scvi's KL warm-up is off
            self.restored = True

        def save(self, pl_module, epoch: int):
            t = time.perf_counter()
            keep = {"epoch": epoch, "guide": mod.module.guide.state_dict(), "optim": pl_module.optim.get_state(),
                    "rng": torch.get_rng_state(), "losses": self.losses,
                    "train_seconds": done_seconds + t - self.t_start - self.spent - cb.spent, "legs": legs,
                    "fingerprint": fingerprint}
            torch.save(keep, out / "resume.pt.tmp")
            os.replace(out / "resume.pt.tmp", resume_file)
            self.spent += time.perf_counter() - t

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))

    done_seconds = state["train_seconds"] if state else 0.0
    cb, rs = Checkpoints(done, done_seconds), Resume()
    t = time.perf_counter()
    try:
        mod.train(max_epochs=a.epochs - done, batch_size=None, train_size=1, lr=a.lr, accelerator="cpu",
                  callbacks=[cb, rs])
    except StopForResume as stop:  # scvi prints "Exception raised during training. <class 'NameError'>" for any
        print(f"stopped at epoch {stop.args[0]} (--stop-after); resume.pt kept", flush=True)
        return 0
    t_train = done_seconds + time.perf_counter() - t - cb.spent - rs.spent
    legs.append({"epochs": a.epochs, "train_seconds_cumulative": t_train})

    t = time.perf_counter()
    if a.export == "samples":
        adata = mod.export_posterior(adata, sample_kwargs={"num_samples": a.num_samples, "batch_size": adata.n_obs})
        keys = ("q05", "means")
    else:
        adata = mod.export_posterior(adata, sample_kwargs={"batch_size": adata.n_obs},
                                     add_to_obsm=["q05", "q50"], use_quantiles=True)
        keys = ("q05", "q50")
    for k in keys:
        obsm = adata.obsm[f"{k}_cell_abundance_w_sf"]
        prefix = f"{k}cell_abundance_w_sf_"
        names = [str(c)[len(prefix):] if str(c).startswith(prefix) else str(c) for c in obsm.columns]
        write(pd.DataFrame(np.asarray(obsm), columns=names)[types].to_numpy(), k)
    t_export = time.perf_counter() - t
    if a.export == "samples":
        # posterior means of every site (for the common objective and the global parameters' comparison)
        means = adata.uns["mod"]["post_sample_means"]
        np.savez_compressed(out / "post_means.npz",
                            **{k: np.asarray(v) for k, v in means.items() if np.asarray(v).size < 5e7})
    hist = mod.history_["elbo_train"]
    if state:  # earlier sessions' epochs first (full batch: one step per epoch, its loss is elbo_train)
        earlier = pd.DataFrame({"elbo_train": np.asarray(state["losses"])},
                               index=pd.RangeIndex(len(state["losses"]), name="epoch"))
        hist = pd.concat([earlier, hist.set_axis(hist.index + done)])
    hist.to_csv(out / "history.csv")
    timing = {
        "epochs": a.epochs, "checkpoints": legs, "import_seconds": t_import, "setup_seconds": t_setup,
        "train_seconds": t_train, "export_seconds": t_export,
        "checkpoint_seconds": cb.spent, "resumed_at": done, "resume_saving_seconds": rs.spent, "export": a.export,
        "seconds_per_epoch": t_train / a.epochs,
        "total_seconds": time.perf_counter() - T0, "threads": a.threads, "lr": a.lr,
        "N_cells_per_location": a.n_cells_per_location, "detection_alpha": a.detection_alpha,
        "num_samples": a.num_samples, "n_spots": int(adata.n_obs), "n_genes": int(adata.n_vars),
        "n_types": len(types), "final_elbo": float(np.asarray(hist).ravel()[-1]),
        "versions": {"cell2location": getattr(cell2location, "__version__", "?"), "scvi-tools": scvi.__version__,
                     "pyro-ppl": pyro.__version__, "torch": torch.__version__, "python": sys.version.split()[0]},
    }
    (out / "timing.json").write_text(json.dumps(timing, indent=2))
    print(json.dumps({k: timing[k] for k in ("epochs", "train_seconds", "seconds_per_epoch", "total_seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
