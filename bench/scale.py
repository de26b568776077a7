"""``python -m bench.scale``: a rehearsal of das's output at 10^7 windows on this machine (issue #23).

It writes a label run's output through das's real driver and writer (``jobs.label.label_units`` with the ledger,
``write_chunk``, the unit commits and the packs), with generated embeddings in place of decoding and encoding
(``synthetic_stages``): each 10 s clip's embedding comes from a seeded generator (unit vectors around a few
thousand centres on the sphere, as real embeddings cluster by sound). Then it times what people run on such an
output, each step in its own process, with its peak memory and the files it reads or writes:

- ``das rescore`` of the run, against a plain pyarrow read-and-write of the same Parquet data;
- ``das index`` (its build), ``das search`` with a text query through the index and as an exact scan,
  one-query latency with the index loaded (p50, p95) and recall@10 against an exact scan;
- the engines' queries: DuckDB's "100 windows most similar to this embedding, with their files" and a Polars
  group-by of labels;
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
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np

from bench.common import log
from bench.driver import _child_peak
from das_core.output.manifest import RunManifest
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


def synthetic_stages(plan):
    """The label stages of ``plan`` (whose inputs are all 10 s clips) with generated embeddings in place of
    decoding and encoding: das's ``LocalStages`` (its commits and packs, in this process) whose chunks are cut
    as the decode stage cuts them (one window per clip, ``windows_per_chunk`` per chunk) and written by das's
    own ``write_chunk``. Seeded by unit, so a rerun writes the same rows."""
    from das_core.label.decode import ChunkMeta
    from das_core.label.local import LocalStages, units_to_do
    from das_core.label.sink import write_chunk
    from das_core.output.store import OutputStore

    class SyntheticStages(LocalStages):
        """``LocalStages`` without the model: ``chunk_stats`` writes generated chunks."""

        starting = "generating embeddings"
        pending = "writing generated chunks"
        first_line = "starting: generating embeddings"

        def __enter__(self):
            self.around = centres(self.plan.cache.dim)
            return self

        def _chunks(self, unit: str, file_ids: list[str], paths: list[str]) -> Iterator[tuple]:
            """``(chunk index, last, meta, embeddings)`` of one unit's clips."""
            per = self.plan.config.windows_per_chunk
            rng = np.random.default_rng(int(unit[1:]))
            for index, first in enumerate(range(0, len(paths), per)):
                files = [{"file_id": f, "path": p, "piece": 0, "closes": True, "status": "ok", "error": None,
                          "error_kind": None, "n_emitted": 1, "duration_s": 10.0, "sample_rate": 44100,
                          "channels": 2, "decoder": "libsndfile"}
                         for f, p in zip(file_ids[first:first + per], paths[first:first + per])]
                windows = [[i, 0, 0.0, 10.0, None] for i in range(len(files))]
                yield index, first + per >= len(paths), ChunkMeta(windows, files), clustered(rng, self.around,
                                                                                               len(files))

        def chunk_stats(self) -> Iterator[dict]:
            """Every chunk of the units to do, written; the statistics of each."""
            store = OutputStore(self.plan.config.out)
            for group in units_to_do(self.plan.config.out, self.plan.row_groups_to_do()):
                for row in group.select(["unit", "file_ids", "paths"]).to_pylist():
                    for index, last, meta, emb in self._chunks(row["unit"], row["file_ids"], row["paths"]):
                        stats = write_chunk(store, row["unit"], index, last, meta, emb, self.plan.cache, self.write)
                        yield {**stats, "decoded_on": self.node}

    return SyntheticStages(plan)


def generate(out: str, inputs: str, ckpt: str, cache_uri: str, resume: bool = False) -> dict:
    """Write the label output of ``inputs`` into ``out`` through das's driver, ledger and writer, with
    ``synthetic_stages`` (``resume``: continue an interrupted generation as ``das label --resume`` does); its
    wall time, and its windows per second unless it resumed."""
    from das_core.label.config import LabelConfig
    from das_core.label.ledger import LabelRun
    from das_core.label.plan import plan_run
    from das_core.output.lease import Lease
    from jobs.label import label_units

    config = LabelConfig(input=inputs, cache=cache_uri, checkpoint=ckpt, out=out, overwrite=not resume,
                         resume=resume, files_per_unit=CLIPS_PER_UNIT, report=False)
    t = time.perf_counter()
    with Lease(config.out, "bench.scale") as lease:
        ledger = LabelRun(plan_run(config), run_id=lease.run_id)
        ledger.start()
        label_units(ledger, synthetic_stages(ledger.plan))
        manifest = ledger.finish()
    seconds = time.perf_counter() - t
    windows = manifest["counts"]["segments"]
    if resume:     # an interrupted run's manifest keeps no counts: what this call wrote is not known here
        return {"generate_s": seconds, "windows": windows, "generate_resumed": True}
    return {"generate_s": seconds, "windows": windows, "generate_windows_per_s": windows / seconds}


def count_files(folder: str) -> int:
    """Files under ``folder``, recursively (0 when it does not exist)."""
    return sum(len(names) for _, _, names in os.walk(folder))


def step(name: str, code: str, counted: str | None = None, timeout: float = 7200) -> dict:
    """Run ``code`` in a fresh Python: ``{name}_s`` (wall), ``{name}_peak_gib``, and ``{name}_files`` (files
    under ``counted``, when given)."""
    log(f"scale: {name} ...")
    try:
        wall, peak, stdout = _child_peak(code, timeout=timeout)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:     # recorded, and the other steps still run
        log(f"scale: {name} FAILED: {str(exc)[-600:]}")
        return {f"{name}_error": str(exc)[-600:]}
    out = {f"{name}_s": wall, f"{name}_peak_gib": peak / 2**30}
    for line in stdout.splitlines():
        if line.startswith("RESULT "):           # figures the child measured itself
            out.update(json.loads(line[len("RESULT "):]))
    if counted:
        out[f"{name}_files"] = count_files(counted)
    log(f"scale: {name} {wall:.1f} s, peak {peak / 2**30:.2f} GiB")
    return out


def das(command: str, args: list[str]) -> str:
    """Python code that runs ``das <command> args`` and fails unless it exits 0."""
    module = {"rescore": "jobs.rescore", "search": "jobs.search", "report": "jobs.report", "label": "jobs.label",
              "index": "jobs.index"}
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
con.execute("SET enable_progress_bar = false")   # its bar writes to stdout without a newline
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


def exact_top(out: str, queries, top: int = 10) -> list[set]:
    """Per query, the ``(file_id, start_s)`` of its ``top`` best windows by das's own scoring, from a scan of
    every pack's row groups (the truth recall is measured against)."""
    import glob

    import pyarrow.parquet as pq

    from das_core.output.tables import embeddings_to_numpy
    from das_core.search.queries import score_embeddings

    best = [[] for _ in range(len(queries.names))]
    for path in sorted(glob.glob(os.path.join(out, "segments", "*.parquet"))):
        pf = pq.ParquetFile(path)
        for g in range(pf.num_row_groups):
            table = pf.read_row_group(g, columns=["file_id", "start_s", "embedding"])
            scores = score_embeddings(embeddings_to_numpy(table.column("embedding")), queries)
            ids, starts = table.column("file_id").to_pylist(), table.column("start_s").to_pylist()
            for j in range(scores.shape[1]):
                for i in np.argpartition(-scores[:, j], top)[:top]:
                    best[j].append((float(scores[i, j]), ids[i], starts[i]))
                best[j] = sorted(best[j], reverse=True)[:top]
    return [{(f, s) for _, f, s in rows} for rows in best]


def index_queries(out: str, n: int = 100, truth_queries: int = 20) -> dict:
    """In this process: load the index as ``das search`` does, time ``n`` one-query searches through it (each
    query already embedded), and recall@10 of the first ``truth_queries`` against an exact scan."""
    from das_core.index.lookup import index_hits, open_for_search
    from das_core.output.store import OutputStore
    from das_core.search.queries import Queries

    started = time.perf_counter()
    opened = open_for_search(out, "segment", OutputStore(out).listing().committed_units())
    load_s = time.perf_counter() - started
    dim = opened.index.d
    vectors = clustered(np.random.default_rng(99), centres(dim), n).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    latencies, found = [], []
    for i in range(n):
        one = Queries((f"q{i}",), vectors[i:i + 1], np.zeros((1, dim), np.float32))
        t = time.perf_counter()
        hits = index_hits(opened, one, 10, None)
        latencies.append(time.perf_counter() - t)
        found.append(set(zip(hits.column("file_id").to_pylist(), hits.column("start_s").to_pylist())))
    several = Queries(tuple(f"q{i}" for i in range(truth_queries)), vectors[:truth_queries],
                      np.zeros((truth_queries, dim), np.float32))
    truth = exact_top(out, several)
    recall = float(np.mean([len(found[i] & truth[i]) / max(len(truth[i]), 1) for i in range(truth_queries)]))
    return {"index_load_s": load_s, "index_query_p50_ms": float(np.percentile(latencies, 50) * 1e3),
            "index_query_p95_ms": float(np.percentile(latencies, 95) * 1e3), "index_recall_at_10": recall}


def rehearse(work: str, n: int, reuse: bool = False, only: set[str] | None = None) -> dict:
    """Generate the run (``reuse``: keep a finished one of ``n`` windows already in ``work``) and time every
    step (``only``: those named), the ``results`` of one record in ``bench/scale.json``."""
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
    previous = RunManifest.read(out) if reuse else None
    if previous is not None and previous.status == "complete" and previous.counts.get("files") == n:
        log(f"scale: reusing the run of {n} windows in {out} (--reuse)")
        results.update({"windows": previous.counts["segments"], "generated": "reused"})
    elif previous is not None and previous.settings.get("input") == inputs:     # interrupted: counts not yet kept
        log(f"scale: resuming the interrupted generation of {n} windows in {out} (--reuse)")
        results.update(generate(out, inputs, ckpt, cache_uri, resume=True))
    else:
        log(f"scale: generating {n} windows into {out}")
        results.update(generate(out, inputs, ckpt, cache_uri))
    results["label_files"] = count_files(out)
    results["segments_files"] = count_files(os.path.join(out, "segments"))
    wanted = (lambda name: True) if only is None else (lambda name: name in only)
    rescored = os.path.join(work, "rescored")
    if wanted("rescore"):
        shutil.rmtree(rescored, ignore_errors=True)
        results.update(step("rescore", das("rescore", ["--embeddings", out, "--cache", cache_uri, "--out", rescored,
                                                       "--no-report"]), rescored))
    if wanted("plain_read_write"):
        results.update(step("plain_read_write", engine_code(out)["plain_read_write"]))
        shutil.rmtree(os.path.join(work, "plain-copy"), ignore_errors=True)      # a yardstick: 10 GB at 10^7
    if "rescore_s" in results and "plain_read_write_s" in results:
        results["rescore_over_plain"] = results["plain_read_write_s"] / results["rescore_s"]
    search = ["--embeddings", out, "--checkpoint", ckpt, "--text", "class_001", "--top", "10"]
    if wanted("search_exact"):
        results.update(step("search_exact", das("search", [*search, "--exact"])))
    if wanted("index_build"):
        results.update(step("index_build", das("index", [out, "--rebuild"]), os.path.join(out, "_index")))
    if wanted("search_index"):
        results.update(step("search_index", das("search", search)))
    if wanted("index_queries"):
        results.update(step("index_queries", f"import json\nfrom bench.scale import index_queries\n"
                                             f"print('RESULT', json.dumps(index_queries({out!r})))\n"))
    for name in ("duckdb_top100", "polars_group_by"):
        if wanted(name):
            results.update(step(name, engine_code(out)[name]))
    if wanted("report"):
        results.update(step("report", das("report", [out]), os.path.join(out, "report")))
    if wanted("resume_planning"):
        results.update(step("resume_planning", das("label", ["--input", inputs, "--cache", cache_uri,
                                                             "--checkpoint", ckpt, "--out", out, "--resume",
                                                             "--dry-run"])))
    return results


LINEAR_STEPS = ("generate", "rescore", "plain_read_write", "search_exact", "index_build", "duckdb_top100",
                "polars_group_by", "report", "resume_planning")     # steps that read or write every row


def projection(results: dict, target: float = 1e9) -> list[str]:
    """Lines projecting the steps that touch every row to ``target`` windows, linearly from this run (the
    arithmetic shown; start-up included, so small runs overstate it). An index query is not linear: it scans
    ``nprobe x rows / lists`` rows, about ``sqrt(rows)`` with das's ``lists = 4 sqrt(rows)``."""
    factor = target / results["windows"]
    lines = [f"projection to {target:.0e} windows: x {factor:.0f} of this run's {results['windows']} windows"]
    for step_name in LINEAR_STEPS:
        seconds = results.get(f"{step_name}_s")
        if seconds is not None and not (step_name == "generate" and results.get("generate_resumed")):
            lines.append(f"  {step_name}: {seconds:.1f} s x {factor:.0f} = {seconds * factor / 3600:.1f} h on this "
                         "machine's 2 cores")
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
    parser.add_argument("--reuse", action="store_true", help="time the steps on the run a --keep left in "
                        "--work (of as many windows) instead of generating it again; an interrupted generation "
                        "is resumed")
    parser.add_argument("--only", metavar="STEP,STEP", help="these steps alone (names as in the table: rescore, "
                        "plain_read_write, search_exact, index_build, ...; 'generate': the run and no step)")
    args = parser.parse_args(argv)
    t = time.perf_counter()
    try:
        results = rehearse(os.path.abspath(args.work), args.windows, args.reuse,
                           set(args.only.split(",")) if args.only else None)
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
