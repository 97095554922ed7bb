"""spotmap's side of ``benchmarks/agreement_c2l.py`` and the agreement table (imported by it, not run alone).

``cmd_spotmap`` maps every prepared case with spotmap on cell2location's signatures (``<case>/input/``) and
writes ``<case>/spotmap_<tag>/`` (q05.csv, means.csv, history.csv, post_means.npz, run.json).
``cmd_report`` compares each case's ``c2l_<epochs>/`` with ``spotmap_<tag>/`` (and the truth of simulations)
and writes ``<workdir>/agreement_<tag>.{json,md}``.

Definitions (per case):

* r between tools: Pearson r across spots of each type's q05 (and posterior mean), median over types;
* total ratio: Σ_f posterior-mean w_sf per spot, spotmap / cell2location: median and IQR over spots;
* against the truth: per-type r of q05 (median over types); RMSE of cell counts = mean over spots of
  sqrt(mean over types (mean w_sf − true cells)²); estimated / true total = mean total cells per spot of the
  posterior means / the true mean;
* one objective: the NB log-likelihood of the counts, log d! included, at each tool's posterior means of the
  model's sites (mu_sg = (m_g Σ_f w_sf g_fg + s_eg) y_s, alpha_eg = 1 / mean(alpha_eg_inv)²), per spot.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd


def log(msg: str) -> None:
    from agreement_c2l import log as _log

    _log(msg)


def cmd_spotmap(a) -> None:
    import anndata as ad
    import torch

    from spotmap.mapping import map_cell_types
    from spotmap.results import table

    torch.set_num_threads(a.threads)
    settings = json.loads(a.settings)
    for case in a.cases:
        wd = a.workdir / case
        if not (wd / "input" / "signatures.csv").exists():
            log(f"{case}: no cell2location signatures yet (run the c2l step first); skipped")
            continue
        out = wd / f"spotmap_{a.tag}"
        if (out / "run.json").exists():
            log(f"{case}: spotmap {a.tag} done already")
            continue
        meta = json.loads((wd / "case.json").read_text())
        sp = ad.read_h5ad(wd / "input" / "sp.h5ad")
        sig = pd.read_csv(wd / "input" / "signatures.csv", index_col=0)
        t = time.perf_counter()
        res, hist, mapper = map_cell_types(sp, sig, n_cells_per_location=meta["n_cells"],
                                           detection_alpha=meta["detection_alpha"], seed=a.seed, progress=False,
                                           return_mapper=True, **settings)
        wall = time.perf_counter() - t
        out.mkdir(parents=True, exist_ok=True)
        for k in ("q05", "means"):
            table(res, k).to_csv(out / f"{k}.csv")
        hist.to_csv(out / "history.csv", index=False)
        pm = mapper.posterior_mean
        np.savez_compressed(out / "post_means.npz", w_sf=pm("w_sf"), m_g=pm("m_g"), y_s=pm("y_s"), s_eg=pm("s_eg"),
                            alpha_eg_inv=pm("alpha_eg_inv"), y_e=mapper.detection,
                            batch=mapper.batch_codes, obs_names=np.asarray(res.obs_names, dtype=str))
        (out / "run.json").write_text(json.dumps({
            "wall_s": wall, "epochs": int(len(hist)), "converged": bool(hist.attrs.get("converged")),
            "settings": settings, "seed": a.seed, "threads": a.threads, "globals": res.uns["mod"]["globals"],
            "batch_names": mapper.batch_names}, indent=2, default=str))
        log(f"{case}: spotmap {a.tag}: {len(hist)} epochs, {wall:.0f} s")


# ------------------------------------------------------------------------------------------------ scoring
def nb_loglik(X, mu: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Σ_g log NB(d_sg | mu_sg, alpha_sg) per spot, log d! included (``X`` dense or sparse; shapes (S, G))."""
    from scipy.special import gammaln

    d = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)
    mu = np.maximum(mu, 1e-12)
    ll = (gammaln(d + alpha) - gammaln(alpha) - gammaln(d + 1) + alpha * np.log(alpha / (alpha + mu))
          + d * np.log(mu / (alpha + mu)))
    return ll.sum(1)


def _batch_codes(sp) -> np.ndarray:
    return pd.Categorical(sp.obs["sample"].astype(str)).codes.astype(np.int64)


def loglik_spotmap(sp, sig: pd.DataFrame, out: Path) -> np.ndarray:
    z = np.load(out / "post_means.npz")
    order = pd.Index(z["obs_names"]).get_indexer(sp.obs_names)
    w, y = z["w_sf"][order], z["y_s"][order]
    mg = z["m_g"] * sig.to_numpy().T                                       # (F, G)
    b = z["batch"][order]
    mu = (w @ mg + z["s_eg"][b]) * y
    return nb_loglik(sp.X, mu, 1.0 / z["alpha_eg_inv"][b] ** 2)


def loglik_c2l(sp, sig: pd.DataFrame, out: Path) -> np.ndarray:
    z = np.load(out / "post_means.npz")
    b = _batch_codes(sp)
    mg = z["m_g"].reshape(1, -1) * sig.to_numpy().T
    mu = (z["w_sf"] @ mg + z["s_g_gene_add"][b]) * z["detection_y_s"].reshape(-1, 1)
    return nb_loglik(sp.X, mu, 1.0 / z["alpha_g_inverse"][b] ** 2)


def globals_c2l(out: Path, n_batches: int) -> dict:
    z = np.load(out / "post_means.npz")
    alpha = 1.0 / z["alpha_g_inverse"] ** 2
    return {"y_e": [float(v) for v in np.asarray(z["detection_mean_y_e"]).ravel()[:n_batches]],
            "m_g_median": float(np.median(z["m_g"])), "alpha_median": float(np.median(alpha))}


def globals_spotmap(out: Path) -> dict:
    z = np.load(out / "post_means.npz")
    return {"y_e": [float(v) for v in z["y_e"].ravel()], "m_g_median": float(np.median(z["m_g"])),
            "alpha_median": float(np.median(1.0 / z["alpha_eg_inv"] ** 2))}


def against_truth(q05: pd.DataFrame, mean: pd.DataFrame, truth: pd.DataFrame) -> dict:
    from spotmap.metrics import per_type_pearson, rmse_proportions

    tr = truth.loc[mean.index, mean.columns]
    return {"r_q05": float(per_type_pearson(q05, tr).median()), "r_mean": float(per_type_pearson(mean, tr).median()),
            "rmse_counts": float(np.sqrt(((mean - tr) ** 2).mean(1)).mean()),
            "total_ratio": float(mean.sum(1).mean() / tr.sum(1).mean()),
            "rmse_proportions": float(rmse_proportions(q05, tr))}


def _median_r(x: pd.DataFrame, y: pd.DataFrame) -> float:
    from spotmap.metrics import per_type_pearson

    return float(per_type_pearson(x, y.loc[x.index, x.columns]).median())


def c2l_flatness(out: Path) -> dict:
    """cell2location's -ELBO: mean of the last 1,000 epochs against the 1,000 before (relative change)."""
    h = pd.read_csv(out / "history.csv", index_col=0).iloc[:, 0].to_numpy()
    last, before = h[-1000:].mean(), h[-2000:-1000].mean()
    return {"elbo_last1000": float(last), "rel_change_last_2x1000": float(abs(last - before) / abs(last))}


def score_case(wd: Path, tag: str, epochs: int) -> dict | None:
    import anndata as ad

    c2l, sm = wd / f"c2l_{epochs}", wd / f"spotmap_{tag}"
    if not ((c2l / "timing.json").exists() and (sm / "run.json").exists()):
        return None
    sp = ad.read_h5ad(wd / "input" / "sp.h5ad")
    sig = pd.read_csv(wd / "input" / "signatures.csv", index_col=0)
    q = {f"{t}_{k}": pd.read_csv(d / f"{k}.csv", index_col=0) for t, d in (("c2l", c2l), ("sm", sm))
         for k in ("q05", "means")}
    tot_c, tot_s = q["c2l_means"].sum(1), q["sm_means"].sum(1).loc[q["c2l_means"].index]
    ratio = tot_s / tot_c
    ll_s, ll_c = loglik_spotmap(sp, sig, sm), loglik_c2l(sp, sig, c2l)
    run = json.loads((sm / "run.json").read_text())
    row = {"case": wd.name, "n_spots": int(sp.n_obs), "n_genes": int(sp.n_vars), "n_types": int(sig.shape[1]),
           "r_tools_q05": _median_r(q["sm_q05"], q["c2l_q05"]), "r_tools_means": _median_r(q["sm_means"], q["c2l_means"]),
           "total_ratio_median": float(ratio.median()), "total_ratio_q25": float(ratio.quantile(0.25)),
           "total_ratio_q75": float(ratio.quantile(0.75)),
           "c2l": globals_c2l(c2l, len(run["batch_names"])), "spotmap": globals_spotmap(sm),
           "loglik_per_spot_spotmap": float(ll_s.mean()), "loglik_per_spot_c2l": float(ll_c.mean()),
           "spotmap_epochs": run["epochs"], "spotmap_wall_s": run["wall_s"],
           "c2l_train_s": json.loads((c2l / "timing.json").read_text())["train_seconds"], **c2l_flatness(c2l)}
    seed1 = wd / f"c2l_{epochs}_seed1"
    if (seed1 / "q05.csv").exists():  # cell2location against itself: how far two of its own seeds agree
        o_q, o_m = (pd.read_csv(seed1 / f"{k}.csv", index_col=0) for k in ("q05", "means"))
        self_ratio = o_m.sum(1).loc[tot_c.index] / tot_c
        row["c2l_seeds"] = {"r_q05": _median_r(o_q, q["c2l_q05"]), "r_means": _median_r(o_m, q["c2l_means"]),
                            "total_ratio_median": float(self_ratio.median())}
    if (wd / "truth.csv").exists():
        truth = pd.read_csv(wd / "truth.csv", index_col=0)
        row["truth_spotmap"] = against_truth(q["sm_q05"], q["sm_means"], truth)
        row["truth_c2l"] = against_truth(q["c2l_q05"], q["c2l_means"], truth)
        for e in (3000, 10000, 20000):  # cell2location's checkpoints on the way
            if (c2l / f"q05_{e}.csv").exists():
                row[f"truth_c2l_{e}"] = against_truth(pd.read_csv(c2l / f"q05_{e}.csv", index_col=0),
                                                      pd.read_csv(c2l / f"means_{e}.csv", index_col=0), truth)
    return row


def table_md(rows: list[dict]) -> str:
    f = lambda x, p=3: "—" if x is None else f"{x:.{p}f}"  # noqa: E731
    out = ["| case | r tools q05 / means | total spotmap/c2l median [IQR] | y_e c2l / spotmap | median m_g c2l / "
           "spotmap | median alpha c2l / spotmap | loglik/spot spotmap − c2l | spotmap epochs |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ye = lambda d: ", ".join(f"{v:.3f}" for v in d["y_e"])  # noqa: E731
        out.append(f"| {r['case']} | {f(r['r_tools_q05'])} / {f(r['r_tools_means'])} | {f(r['total_ratio_median'])} "
                   f"[{f(r['total_ratio_q25'])}–{f(r['total_ratio_q75'])}] | {ye(r['c2l'])} / {ye(r['spotmap'])} | "
                   f"{f(r['c2l']['m_g_median'])} / {f(r['spotmap']['m_g_median'])} | {f(r['c2l']['alpha_median'], 1)} / "
                   f"{f(r['spotmap']['alpha_median'], 1)} | {f(r['loglik_per_spot_spotmap'] - r['loglik_per_spot_c2l'], 2)} "
                   f"| {r['spotmap_epochs']} |")
    seeds = [r for r in rows if "c2l_seeds" in r]
    if seeds:
        out += ["", "| case | cell2location seed 1 vs seed 0: r q05 / means | total ratio median |", "|---|---|---|"]
        out += [f"| {r['case']} | {f(r['c2l_seeds']['r_q05'])} / {f(r['c2l_seeds']['r_means'])} | "
                f"{f(r['c2l_seeds']['total_ratio_median'])} |" for r in seeds]
    sims = [r for r in rows if "truth_spotmap" in r]
    if sims:
        out += ["", "| case | fit | per-type r (q05) | RMSE of cell counts | estimated / true total | RMSE prop. |",
                "|---|---|---|---|---|---|"]
        for r in sims:
            for name, key in (("cell2location 3,000", "truth_c2l_3000"), ("cell2location 30,000", "truth_c2l"),
                              ("spotmap", "truth_spotmap")):
                if key in r:
                    t = r[key]
                    out.append(f"| {r['case']} | {name} | {f(t['r_q05'])} | {f(t['rmse_counts'])} | "
                               f"{f(t['total_ratio'])} | {f(t['rmse_proportions'], 4)} |")
    return "\n".join(out)


def cmd_report(a) -> None:
    rows = [r for r in (score_case(a.workdir / c, a.tag, a.epochs) for c in a.cases) if r is not None]
    (a.workdir / f"agreement_{a.tag}.json").write_text(json.dumps(rows, indent=2))
    md = table_md(rows)
    (a.workdir / f"agreement_{a.tag}.md").write_text(md + "\n")
    print(md)
