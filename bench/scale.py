"""``python -m bench.scale``: a rehearsal of das's output at 10^7 windows on this machine (issue #23).

It writes a label run's output through das's real driver and writer (``jobs.label.label_units`` with the ledger,
``write_chunk``, the unit commits and the packs), with ``SyntheticStages`` in place of decoding and encoding:
each 10 s clip's embedding comes from a seeded generator (unit vectors around a few thousand centres on the
sphere, as real embeddings cluster by sound). Then it times what people run on such an output, each step in
its own process, with its peak memory and the files it reads or writes:

- ``das rescore`` of the run, against a plain pyarrow read-and-write of the same Parquet data;
- ``das search`` with a text query (exact scan), and the engines' queries: DuckDB's "100 windows most similar
  to this embedding, with their files" and a Polars group-by of labels;
- ``das report``;
- ``das label --resume --dry-run``: planning over the finished run.

    python -m bench.scale                      # 10^7 windows under /tmp/das-scale (about 12 GB of disk)
    python -m bench.scale --windows 100000     # a quick pass of every step

Not in CI and not in ``make bench``: the generation alone writes about 10 GB. The figures go to
``bench/scale.json`` (every run appended) and are printed as a table with the projection to 10^9 windows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator

import numpy as np

from bench.common import log
from bench.driver import _child_peak
from das_core.output.record import utc_now

HERE = os.path.dirname(os.path.abspath(__file__))
CLIPS_PER_UNIT = 64            # das label's default --files-per-unit
CENTRES = 4096                 # clusters of the generated embeddings
SPREAD = 0.35                  # noise around a centre, per unit-length dimension (cosine to it ~0.7-0.9)
CLASSES = 527                  # AudioSet's class count: the cache the run is labelled with


def path_list(work: str, n: int) -> str:
    """A path list of ``n`` 10 s clips (s3:// paths, never read: the stages generate their embeddings)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    uri = os.path.join(work, f"paths-{n}.parquet")
    if not os.path.exists(uri):
        paths = pa.array([f"s3://archive/{i // 10_000:05d}/clip-{i:09d}.flac" for i in range(n)])
        pq.write_table(pa.table({"path": paths}), uri)
    return uri


def centres(dim: int, seed: int = 0) -> np.ndarray:
    """The ``CENTRES`` unit vectors the generated embeddings cluster around."""
    x = np.random.default_rng(seed).standard_normal((CENTRES, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(rng: np.random.Generator, around: np.ndarray, n: int) -> np.ndarray:
    """``n`` float16 unit vectors, each a random centre of ``around`` plus Gaussian noise (``SPREAD``)."""
    dim = around.shape[1]
    x = around[rng.integers(0, len(around), n)] + rng.standard_normal((n, dim)).astype(np.float32) * (
        SPREAD / np.sqrt(dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


class SyntheticStages:
    """The label stages of a plan whose inputs are all 10 s clips, with generated embeddings in place of
    decoding and encoding: each unit's clips are cut into chunks as the decode stage cuts them (one window per
    clip, ``windows_per_chunk`` per chunk) and written by das's own ``write_chunk``; units are committed by
    ``finish_units``. Seeded by unit, so a rerun writes the same rows (``jobs.label.Stages``)."""

    starting = "generating embeddings"
    pending = "writing generated chunks"
    first_line = "starting: generating embeddings"
    nodes = None

    def __init__(self, plan):
        self.plan = plan
        self.write = plan.write_settings()
        self.committed = 0
        self.around = centres(plan.cache.dim)

    def __enter__(self) -> SyntheticStages:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def _chunks(self, unit: str, file_ids: list[str], paths: list[str]) -> Iterator[tuple]:
        from das_core.label.decode import ChunkMeta

        per = self.plan.config.windows_per_chunk
        rng = np.random.default_rng(int(unit[1:]))
        for index, first in enumerate(range(0, len(paths), per)):
            files = [{"file_id": f, "path": p, "piece": 0, "closes": True, "status": "ok", "error": None,
                      "error_kind": None, "n_emitted": 1, "duration_s": 10.0, "sample_rate": 44100,
                      "channels": 2, "decoder": "libsndfile"}
                     for f, p in zip(file_ids[first:first + per], paths[first:first + per])]
            windows = [[i, 0, 0.0, 10.0, None] for i in range(len(files))]
            last = first + per >= len(paths)
            yield index, last, ChunkMeta(windows, files), clustered(rng, self.around, len(files))

    def chunk_stats(self) -> Iterator[dict]:
        """Every chunk of the units to do, written; the statistics of each."""
        from das_core.label.local import units_to_do
        from das_core.label.sink import write_chunk
        from das_core.output.store import OutputStore

        store = OutputStore(self.plan.config.out)
        node = socket.gethostname()
        for group in units_to_do(self.plan.config.out, self.plan.row_groups_to_do()):
            for row in group.select(["unit", "file_ids", "paths"]).to_pylist():
                for index, last, meta, emb in self._chunks(row["unit"], row["file_ids"], row["paths"]):
                    stats = write_chunk(store, row["unit"], index, last, meta, emb, self.plan.cache, self.write)
                    yield {**stats, "decoded_on": node}

    def commit(self, unit: tuple[str, list[int]]) -> None:
        """Commit ``unit`` now."""
        from das_core.label.sink import finish_units

        self.committed += finish_units(self.plan.config.out, [unit], self.plan.cache, self.write)

    def flush(self) -> None:
        """Nothing waits: every unit was committed as it became whole."""


def generate(out: str, inputs: str, ckpt: str, cache_uri: str) -> dict:
    """Write the label output of ``inputs`` into ``out`` through das's driver, ledger and writer, with
    ``SyntheticStages``; its wall time and windows per second."""
    from das_core.label.config import LabelConfig
    from das_core.label.ledger import LabelRun
    from das_core.label.plan import plan_run
    from das_core.output.lease import Lease
    from jobs.label import label_units

    config = LabelConfig(input=inputs, cache=cache_uri, checkpoint=ckpt, out=out, overwrite=True,
                         files_per_unit=CLIPS_PER_UNIT, report=False)
    t = time.perf_counter()
    with Lease(config.out, "bench.scale") as lease:
        ledger = LabelRun(plan_run(config), run_id=lease.run_id)
        ledger.start()
        label_units(ledger, SyntheticStages(ledger.plan))
        manifest = ledger.finish()
    seconds = time.perf_counter() - t
    windows = manifest["counts"]["segments"]
    return {"generate_s": seconds, "windows": windows, "generate_windows_per_s": windows / seconds}


def count_files(folder: str) -> int:
    """Files under ``folder``, recursively (0 when it does not exist)."""
    return sum(len(names) for _, _, names in os.walk(folder))


def step(name: str, code: str, counted: str | None = None, timeout: float = 7200) -> dict:
    """Run ``code`` in a fresh Python: ``{name}_s`` (wall), ``{name}_peak_gib``, and ``{name}_files`` (files
    under ``counted``, when given)."""
    log(f"scale: {name} ...")
    wall, peak, stdout = _child_peak(code, timeout=timeout)
    out = {f"{name}_s": wall, f"{name}_peak_gib": peak / 2**30}
    if counted:
        out[f"{name}_files"] = count_files(counted)
    log(f"scale: {name} {wall:.1f} s, peak {peak / 2**30:.2f} GiB")
    return out


def das(command: str, args: list[str]) -> str:
    """Python code that runs ``das <command> args`` and fails unless it exits 0."""
    module = {"rescore": "jobs.rescore", "search": "jobs.search", "report": "jobs.report", "label": "jobs.label"}
    return (f"from {module[command]} import main\nrc = main({json.dumps(args)})\n"
            f"assert rc == 0, rc\n")


def engine_code(out: str) -> dict[str, str]:
    """The engines' queries on ``out``, each as Python code: DuckDB's 100 nearest windows with their files, a
    Polars group-by of labels, and a plain pyarrow read-and-write of the segments (rescore's yardstick)."""
    seg, files = os.path.join(out, "segments", "*.parquet"), os.path.join(out, "files", "*.parquet")
    duckdb = f"""
import duckdb, pyarrow.parquet as pq, glob
first = pq.ParquetFile(sorted(glob.glob({seg!r}))[0]).read_row_group(0, columns=["embedding"])
q = first.column("embedding")[0].as_py()
con = duckdb.connect()
rows = con.execute(f'''
  SELECT s.path, s.start_s, s.label, f.label AS file_label,
         list_cosine_similarity(s.embedding, $q) AS similarity
  FROM read_parquet({seg!r}) s JOIN read_parquet({files!r}) f USING (file_id)
  ORDER BY similarity DESC LIMIT 100''', {{"q": q}}).fetchall()
assert len(rows) == 100 and rows[0][-1] > 0.99, rows[:2]
"""
    polars = f"""
import polars as pl
top = (pl.scan_parquet({seg!r}).group_by("label").agg(pl.len().alias("windows"), pl.col("score").mean())
       .sort("windows", descending=True).collect())
assert top["windows"].sum() > 0
"""
    plain = f"""
import pyarrow.dataset as ds, pyarrow.parquet as pq, os, shutil
dst = {os.path.join(os.path.dirname(out), "plain-copy")!r}
shutil.rmtree(dst, ignore_errors=True); os.makedirs(dst)
src = ds.dataset({os.path.join(out, "segments")!r}, format="parquet")
for i, frag in enumerate(src.get_fragments()):
    pq.write_table(frag.to_table(), os.path.join(dst, f"part-{{i:05d}}.parquet"))
"""
    return {"duckdb_top100": duckdb, "polars_group_by": polars, "plain_read_write": plain}


def rehearse(work: str, n: int) -> dict:
    """Generate the run and time every step (``rehearsal`` in ``bench/scale.json``)."""
    from bench.inputs import make_cache
    from das_core.clap.random_weights import write_random_checkpoint

    os.makedirs(work, exist_ok=True)
    ckpt = os.path.join(work, "HTSAT-tiny-transformer-random.pt")
    if not os.path.exists(ckpt):
        write_random_checkpoint(ckpt)
    cache_uri = os.path.join(work, "cache.npz")
    if not os.path.exists(cache_uri):
        cache, _ = make_cache(ckpt, [f"class_{i:03d}" for i in range(CLASSES)], ["rain", "traffic", "wind"])
        cache.save(cache_uri)
    out, inputs = os.path.join(work, "labels"), path_list(work, n)
    results = {"windows_asked": n}
    log(f"scale: generating {n} windows into {out}")
    results.update(generate(out, inputs, ckpt, cache_uri))
    results["label_files"] = count_files(out)
    results["segments_files"] = count_files(os.path.join(out, "segments"))
    rescored = os.path.join(work, "rescored")
    shutil.rmtree(rescored, ignore_errors=True)
    results.update(step("rescore", das("rescore", ["--embeddings", out, "--cache", cache_uri, "--out", rescored,
                                                   "--no-report"]), rescored))
    results.update(step("plain_read_write", engine_code(out)["plain_read_write"]))
    results["rescore_over_plain"] = results["plain_read_write_s"] / results["rescore_s"]
    results.update(step("search_exact", das("search", ["--embeddings", out, "--checkpoint", ckpt, "--text",
                                                       "class_001", "--top", "10"])))
    for name in ("duckdb_top100", "polars_group_by"):
        results.update(step(name, engine_code(out)[name]))
    results.update(step("report", das("report", [out]), os.path.join(out, "report")))
    results.update(step("resume_planning", das("label", ["--input", inputs, "--cache", cache_uri, "--checkpoint",
                                                         ckpt, "--out", out, "--resume", "--dry-run"])))
    return results


def projection(results: dict, target: float = 1e9) -> list[str]:
    """Lines projecting each timed step to ``target`` windows, linearly from this run (the arithmetic shown)."""
    factor = target / results["windows"]
    lines = [f"projection to {target:.0e} windows: x {factor:.0f} of this run's {results['windows']} windows"]
    for key in sorted(k for k in results if k.endswith("_s") and not k.endswith("_per_s")):
        lines.append(f"  {key[:-2]}: {results[key]:.1f} s x {factor:.0f} = {results[key] * factor / 3600:.1f} h "
                     "on this machine's 2 cores (linear in windows; start-up included)")
    return lines


def table(results: dict) -> str:
    """The rehearsal's figures, one per line."""
    return "\n".join(f"{k:32s} {v:.3f}" if isinstance(v, float) else f"{k:32s} {v}" for k, v in results.items())


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.scale [--windows N] [--work DIR]``: rehearse, record, print."""
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=10_000_000, help="windows (10 s clips) to generate")
    parser.add_argument("--work", default="/tmp/das-scale", help="where the run and its inputs go")
    parser.add_argument("--keep", action="store_true", help="keep --work afterwards (it is removed otherwise)")
    args = parser.parse_args(argv)
    t = time.perf_counter()
    try:
        results = rehearse(os.path.abspath(args.work), args.windows)
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    record_uri = os.path.join(HERE, "scale.json")
    record = json.load(open(record_uri)) if os.path.exists(record_uri) else []
    record.append({"when": utc_now(),
                   "duration_s": round(time.perf_counter() - t, 1), "results": results})
    with open(record_uri, "w") as f:
        json.dump(record, f, indent=1)
    print(table(results))
    print("\n".join(projection(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
