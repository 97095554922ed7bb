"""``spotmap qc-batch``: the across-sample batch-effect view (UMAP of spots coloured by sample)."""

from __future__ import annotations

import os
from pathlib import Path

from spotmap.errors import input_error
from spotmap.report import sections


def run(*, spatial: list[str | os.PathLike], outdir: str | os.PathLike, n_top_genes: int = 2000,
        seed: int = 0) -> Path:
    """Write ``outdir/qc_batch_umap_mqc.png`` (:func:`spotmap.pl.batch_umap`) from the QC'd samples ``spatial``
    (``.h5ad`` files of ``spotmap qc``); return its path. Samples that form separate islands show a batch
    effect worth a batch per sample in mapping."""
    from spotmap import pl
    from spotmap.io import read_h5ad_counts
    from spotmap.qc import batch_embedding
    from spotmap.report.mqc import save_mqc_figure

    adatas = {}
    for p in map(Path, spatial):
        a = read_h5ad_counts(p, counts_layer="auto")
        name = str(a.obs["sample"].iloc[0]) if "sample" in a.obs and a.n_obs else p.name.removesuffix(".h5ad")
        if name in adatas:
            raise input_error(p, "duplicate sample id among --spatial inputs", field="sample", value=name)
        adatas[name] = a
    comb = batch_embedding(adatas, n_top_genes=n_top_genes, seed=seed)
    return save_mqc_figure(pl.batch_umap(comb, seed=seed), Path(outdir) / sections.QC_BATCH_UMAP.file)
