"""What ``das label`` prints: the dry run's plan, and the closing lines of a run."""

from __future__ import annotations

from das_core.label.plan import LabelPlan
from das_core.output.record import weights_line


def print_dry_run(plan: LabelPlan) -> dict:
    """Print what the run of ``plan`` would do (``--dry-run``); return it as a dict with ``dry_run``."""
    p, c = plan, plan.config
    skipped = p.skipped.as_dict()
    lines = [f"das label --dry-run: {c.input} -> {c.out}",
             f"  inputs:    {p.n_inputs} file(s) in {len(p.units)} unit(s) of <= {c.files_per_unit} files / "
             f"{c.unit_bytes / 2**20:g} MiB",
             f"  skipped:   {skipped['total']}" + "".join(
                 f"; {reason} {n} (e.g. {', '.join(skipped['examples'].get(reason, []))})"
                 for reason, n in skipped["by_reason"].items()),
             f"  to do:     {len(p.todo)} unit(s), {p.todo_files} file(s)"
             + (f" ({len(p.units) - len(p.todo)} unit(s) already committed: --resume skips them)"
                if len(p.todo) != len(p.units) else ""),
             f"  chunks:    <= {c.windows_per_chunk} windows each; encoder batch {c.batch_size}",
             f"  cache:     {len(p.cache.labels)} classes, lam {p.cache.lam:g}; checkpoint "
             f"{p.checkpoint_info.get('weights', '')} weights",
             "  nothing was written; no Ray, no model"]
    print("\n".join(lines), flush=True)
    return {"dry_run": True, "inputs": p.n_inputs, "units": len(p.units), "todo_units": len(p.todo),
            "todo_files": p.todo_files, "skipped": skipped}


def _not_done_text(not_done: dict) -> str:
    files, shards = not_done.get("files", 0), not_done.get("shards", 0)
    return ((f" + {files} not done" if files else "")
            + (f" (+ {shards} shard(s) not finished, members not yet counted)" if shards else ""))


def _errors_text(manifest: dict) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in manifest["counts"]["errors_by_kind"].items()) or "none"
    examples = (manifest["runs"] or [{}])[-1].get("error_examples") or []
    return kinds + (f"; e.g. {', '.join(examples)}" if examples else "")


def summary(manifest: dict, out: str, wall: float, segments_now: int, not_done: dict, steady: float | None) -> str:
    """The closing lines of ``das label``. "files" are ``files/`` rows (plain files and shard members);
    ``not_done``: plain files and shards of the plan that no row counts yet (never negative)."""
    counts = manifest["counts"]
    files_in = counts["files"] + not_done.get("files", 0)
    skipped = manifest.get("skipped") or {}
    return (f"das label: {manifest['status']} in {wall:.1f} s\n"
          f"  files in:  {files_in} = {counts['ok']} ok + {counts['error']} error" + _not_done_text(not_done) + "\n"
          + (f"  skipped:   {skipped['total']} not picked up ("
             + ", ".join(f"{k} {v}" for k, v in skipped["by_reason"].items()) + ")\n" if skipped.get("total") else "")
          + f"  segments:  {counts['segments']} ({segments_now} this run, "
          f"{segments_now / wall if wall > 0 else 0:.2f} clips/s"
          + (f"; {steady:.2f} windows/s after start-up" if steady else "") + ")\n"
          f"  errors:    {_errors_text(manifest)}\n"
          + weights_line(manifest["checkpoint"].get("weights"))
          + f"\n  output:    {out} (segments/, files/, _manifest.json)")
