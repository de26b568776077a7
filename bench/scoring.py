"""Scoring on the host: the DAS overhead over plain cosine scores, and this project's own speed-ups (text
prefix, top-k, label columns), each against the way it was done before."""

from __future__ import annotations

import numpy as np

from bench.common import Sizes, best_of


def bench_scoring(sizes: Sizes) -> dict:
    """DAS scores against plain cosine scores on the same random unit embeddings: ``das_overhead`` is the extra
    time over the plain time."""
    from das_core.scoring.cache import DriftCache

    rng = np.random.default_rng(1)
    d = 512

    def unit(n):
        """``n`` random unit rows of dimension ``d``."""
        x = rng.standard_normal((n, d))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    k = sizes.score_classes
    cache = DriftCache(tuple(f"c{i}" for i in range(k)), tuple(f"c{i}" for i in range(k)), ("p",),
                       "sound of {label}", "{label} with {noise}", 0.1, None, unit(k), unit(k),
                       np.ones(k, dtype=np.float32))
    z = unit(sizes.score_rows)
    plain, das = [], []
    for _ in range(7):         # interleaved, best of 7: the two are the same product with other matrices
        plain.append(best_of(lambda: cache.clean_scores(z), 1))
        das.append(best_of(lambda: cache.scores(z), 1))
    plain, das = min(plain), min(das)
    return {"das_overhead": (das - plain) / plain, "das_scoring_s": das, "plain_scoring_s": plain,
            "scoring_rows": sizes.score_rows, "scoring_classes": k}


def _columns_row_by_row(lab, n: int) -> dict:
    """Arrow label columns built one row at a time in Python: how they were built before (the reference)."""
    import pyarrow as pa

    cols = {"label": [], "score": [], "top_k_labels": [], "top_k_scores": [], "zs_label": [], "zs_score": []}
    labels, top, zs = lab.label, lab.top_k_labels, lab.zs_label
    for i in range(n):
        cols["label"].append(labels[i])
        cols["score"].append(float(lab.score[i]))
        cols["top_k_labels"].append(top[i])
        cols["top_k_scores"].append(lab.top_k_scores[i].tolist())
        cols["zs_label"].append(zs[i])
        cols["zs_score"].append(float(lab.zs_score[i]))
    return {k: pa.array(v) for k, v in cols.items()}


def bench_changes(ckpt: str, sizes: Sizes) -> dict:
    """The effect of this project's own speed-ups, each against the way it was done before, in this run."""
    from das_core.clap.encoder import ClapEncoder
    from das_core.clap.laion import laion
    from das_core.output.tables import labelled_columns
    from das_core.scoring.scorer import _labelled, top_k

    enc = ClapEncoder.from_checkpoint(ckpt)
    prompts = [f"class {i:03d} with noise kind {j}" for i in range(sizes.cache_classes) for j in range(2)][:512]

    def full_context():
        """laion-clap's encode_text over all 77 positions (the old way)."""
        import torch

        with torch.inference_mode():
            for start in range(0, len(prompts), 64):
                enc.model.encode_text(laion().tokenize(prompts[start:start + 64]), device=enc.device)

    text_full = best_of(full_context, 1)
    text_prefix = best_of(lambda: enc.embed_text(prompts), 1)
    rng = np.random.default_rng(3)
    das = rng.standard_normal((sizes.score_rows, sizes.score_classes)).astype(np.float32)
    plain = rng.standard_normal(das.shape).astype(np.float32)
    sort_s = best_of(lambda: np.argsort(-das, axis=1, kind="stable")[:, :5], 1)
    partition_s = best_of(lambda: top_k(das, 5), 1)
    lab = _labelled(das, plain, tuple(f"c{i}" for i in range(das.shape[1])), 5)
    rows_s = best_of(lambda: _columns_row_by_row(lab, len(das)), 1)
    vector_s = best_of(lambda: labelled_columns(lab, len(das)), 1)
    return {"text_prefix_speedup": text_full / text_prefix, "topk_speedup": sort_s / partition_s,
            "label_columns_vectorised_speedup": rows_s / vector_s, "text_prompts_timed": len(prompts)}
