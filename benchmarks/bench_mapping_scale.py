"""Scale benchmark of the mapping model: time per full-data epoch and peak memory.

Two cases (counts drawn directly from the cell2location generative model, which is much faster than the
full simulator and gives the same matrix shapes and sparsity)::

    seed   5,563 spots × 12,809 genes × 59 types, full batch (the seed's problem size)
    large  100,000 spots × 18,000 genes × 100 types, spot minibatches (--batch-size)

Usage::

    python benchmarks/bench_mapping_scale.py --case seed --epochs 20
    python benchmarks/bench_mapping_scale.py --case large --epochs 1 --batch-size 10000

Each case runs in two processes: the first draws the counts and saves them (``--workdir``), the second
loads them, builds the model and trains; its peak RSS (``resource.getrusage``, which covers everything
the process did, loading the data included) is what is reported. Prints one Markdown table row.

A/B against an older likelihood on a shared (noisy) machine: ``--baseline REF`` runs the measuring process with
``FusedNBMean`` taken from ``src/spotmap/mapping/likelihood.py`` at git revision REF (everything else as checked
out), and ``--ab-rounds K`` alternates K measuring runs of the working tree and of REF in the same time window::

    python benchmarks/bench_mapping_scale.py --case seed --epochs 8 --threads 2 --baseline 1efafe0 --ab-rounds 3
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: no spin-waiting on a shared CPU

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

CASES = {
    "seed": dict(n_spots=5563, n_genes=12809, n_types=59, n_samples=1, counts_per_spot=12000),
    "large": dict(n_spots=100_000, n_genes=18_000, n_types=100, n_samples=20, counts_per_spot=6000),
    "small": dict(n_spots=500, n_genes=2000, n_types=12, n_samples=1, counts_per_spot=8000),
}


def generate(case: str, workdir: Path, seed: int = 0) -> None:
    """Draw counts from the model (Poisson–Gamma), in spot blocks, straight into CSR; save npz + signatures."""
    import torch

    c = CASES[case]
    S, G, F, E = c["n_spots"], c["n_genes"], c["n_types"], c["n_samples"]
    rng = np.random.default_rng(seed)
    base = rng.lognormal(0.0, 1.5, size=G)
    g = base[None, :] * rng.lognormal(0.0, 0.6, size=(F, G))
    for f in range(F):  # markers
        m = rng.choice(G, size=max(5, G // 50), replace=False)
        g[f, m] *= rng.uniform(4, 16, size=len(m))
    g = g / g.sum(1, keepdims=True) * rng.uniform(0.6, 1.6, size=(F, 1)) * 5000.0   # mRNA per cell
    m_g = rng.lognormal(0.0, 0.4, size=G)
    batch = np.sort(rng.integers(0, E, size=S))
    n_sf = rng.poisson(rng.gamma(0.3, 8.0 / F / 0.3, size=(S, F)))                 # ~8 cells per spot
    target = c["counts_per_spot"]
    y_s = rng.gamma(20.0, 1.0 / 20.0, size=S) * target / (8.0 * 5000.0)
    s_eg = 0.02 * (g.mean(0) * m_g)[None, :] * rng.lognormal(0, 0.5, size=(E, G))
    mg = torch.as_tensor(g * m_g[None, :], dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    blocks = []
    for r0 in range(0, S, 2000):
        r1 = min(S, r0 + 2000)
        mu = (torch.as_tensor(n_sf[r0:r1], dtype=torch.float32) @ mg
              + torch.as_tensor(s_eg[batch[r0:r1]], dtype=torch.float32)) * torch.as_tensor(y_s[r0:r1, None],
                                                                                            dtype=torch.float32)
        lam = torch._standard_gamma(torch.full_like(mu, 5.0), generator=gen) / 5.0 * mu   # NB, alpha = 5
        blocks.append(sp.csr_matrix(torch.poisson(lam, generator=gen).numpy()))
        del mu, lam
    X = sp.vstack(blocks, format="csr").astype(np.float32)
    workdir.mkdir(parents=True, exist_ok=True)
    sp.save_npz(workdir / f"{case}_X.npz", X, compressed=False)
    np.save(workdir / f"{case}_g.npy", g.T)            # genes × types
    np.save(workdir / f"{case}_batch.npy", batch)
    print(json.dumps({"case": case, "shape": list(X.shape), "nnz": int(X.nnz), "density": X.nnz / (S * G),
                      "mean_counts_per_spot": float(X.sum() / S)}), flush=True)


def _use_baseline_likelihood(ref: str) -> None:
    """Replace ``FusedNBMean`` by the class of the same name at git revision ``ref`` (for A/B timings)."""
    import types

    import spotmap.mapping.likelihood as lik

    root = Path(__file__).resolve().parent.parent
    src = subprocess.run(["git", "show", f"{ref}:src/spotmap/mapping/likelihood.py"], cwd=root, check=True,
                         capture_output=True, text=True).stdout
    old = types.ModuleType("spotmap_likelihood_baseline")
    old.__dict__["__name__"] = "spotmap_likelihood_baseline"
    sys.modules[old.__name__] = old
    exec(compile(src, f"{ref}:likelihood.py", "exec"), old.__dict__)
    lik.FusedNBMean = old.FusedNBMean   # nb_mean_loglik looks the class up at call time


def _time_likelihood() -> list[tuple[float, float]]:
    """Wrap the fused likelihood's forward (where all its work is done): (wall, CPU) seconds of each call."""
    import spotmap.mapping.likelihood as lik

    calls: list[tuple[float, float]] = []
    cls = lik.FusedNBMean
    fwd = cls.forward

    def timed(ctx, *args):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fwd(ctx, *args)
        calls.append((time.perf_counter() - t0, time.process_time() - c0))
        return out

    cls.forward = staticmethod(timed)
    return calls


def measure(case: str, workdir: Path, epochs: int, batch_size: int | None, threads: int | None,
            baseline: str | None = None) -> dict:
    """Load the saved counts, build the model, train ``epochs`` epochs; return timings and peak RSS."""
    import anndata as ad
    import pandas as pd
    import torch

    if threads:
        torch.set_num_threads(threads)
    if baseline:
        _use_baseline_likelihood(baseline)
    lik_calls = _time_likelihood()
    from spotmap.mapping.model import MappingSettings, SpatialMapper

    X = sp.load_npz(workdir / f"{case}_X.npz").tocsr()
    g = np.load(workdir / f"{case}_g.npy")
    batch = np.load(workdir / f"{case}_batch.npy")
    S, G = X.shape
    genes = [f"g{i}" for i in range(G)]
    adata = ad.AnnData(X=X, obs=pd.DataFrame({"sample": [f"s{b}" for b in batch]}, index=[f"spot{i}" for i in range(S)]),
                       var=pd.DataFrame(index=genes))
    sig = pd.DataFrame(g, index=genes, columns=[f"type{f}" for f in range(g.shape[1])])
    del X
    t0 = time.perf_counter()
    mapper = SpatialMapper(adata, sig, settings=MappingSettings(max_epochs=epochs, min_epochs=10**9, progress=False,
                                                                 batch_size=batch_size, device="cpu"))
    mapper.module()
    t_init = time.perf_counter() - t0
    c0 = time.process_time()
    hist = mapper.train()
    cpu = time.process_time() - c0
    secs = hist["seconds"].to_numpy()
    # first epoch includes one-off work (allocations); report the median of the later ones
    per_epoch = float(np.median(np.diff(np.r_[0.0, secs])[1:])) if len(secs) > 1 else float(secs[0])
    t1 = time.perf_counter()
    mapper.export_posterior(adata)
    t_export = time.perf_counter() - t1
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return {"case": case, "spots": S, "genes": G, "types": g.shape[1], "nnz": int(mapper.X.nnz),
            "batch_size": batch_size or "full", "epochs": len(hist), "init_s": round(t_init, 2),
            "s_per_epoch": round(per_epoch, 3), "cpu_s_per_epoch": round(cpu / len(hist), 3),
            # the likelihood alone (median over its calls after the first; one call per full-data epoch)
            "likelihood_s": round(float(np.median([c[0] for c in lik_calls[1:] or lik_calls])), 3),
            "likelihood_cpu_s": round(float(np.median([c[1] for c in lik_calls[1:] or lik_calls])), 3),
            "export_s": round(t_export, 2), "peak_rss_gb": round(rss_gb, 2), "threads": torch.get_num_threads(),
            "final_elbo": float(hist["elbo"].iloc[-1]), "likelihood": baseline or "working tree",
            "load_avg_1min": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=sorted(CASES), default="seed")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workdir", type=Path, default=Path("benchmarks/.scale_data"))
    ap.add_argument("--step", choices=["all", "generate", "measure"], default="all")
    ap.add_argument("--baseline", default=None, help="git revision whose FusedNBMean the measuring run uses")
    ap.add_argument("--ab-rounds", type=int, default=0,
                    help="with --baseline: alternate this many runs of the working tree and of the baseline")
    args = ap.parse_args()
    if args.step in ("all", "generate") and not (args.workdir / f"{args.case}_X.npz").exists():
        if args.step == "all":  # separate process, so its memory does not count
            subprocess.run([sys.executable, __file__, "--case", args.case, "--workdir", str(args.workdir),
                            "--step", "generate"], check=True)
        else:
            generate(args.case, args.workdir)
    if args.step in ("all", "measure"):
        if args.step == "all":
            cmd = [sys.executable, __file__, "--case", args.case, "--workdir", str(args.workdir), "--step", "measure",
                   "--epochs", str(args.epochs)]
            if args.batch_size:
                cmd += ["--batch-size", str(args.batch_size)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            if args.baseline and args.ab_rounds > 0:
                for _ in range(args.ab_rounds):
                    subprocess.run(cmd, check=True, env=os.environ)
                    subprocess.run(cmd + ["--baseline", args.baseline], check=True, env=os.environ)
            else:
                subprocess.run(cmd + (["--baseline", args.baseline] if args.baseline else []), check=True,
                               env=os.environ)
            return
        r = measure(args.case, args.workdir, args.epochs, args.batch_size, args.threads, args.baseline)
        print(json.dumps(r))
        print("| " + " | ".join(str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
