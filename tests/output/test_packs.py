"""Packs (``das_core.output.pack``): ranges, layout, bytes, and readers through a crash at each step or a pack
happening while they read; on real label output written by the real sink."""

from __future__ import annotations

import json
import shutil

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from das_core.output.format import FILES_DIR, PACK_UNITS, SEGMENTS_DIR, pack_name
from das_core.output.pack import PackPlanner, pack_units, staged_tables, write_pack
from das_core.output.store import OutputStore

PACK_ROWS = 5
CLIPS = {f"c{i:02d}.wav": (2.0 + 10.0 * (i % 3), 16000, 300.0 + 40 * i) for i in range(9)}   # 1, 2 or 3 windows


def unit_rows(store: OutputStore) -> list[tuple[str, int]]:
    """Each committed unit with its segment rows (from its files rows, as --resume and compact count them)."""
    out = []
    for unit in store.listing().committed_units():
        files = store.read_files([unit], ["status", "n_segments"])
        out.append((unit, int(pc.sum(files.filter(pc.equal(files.column("status"), "ok")).column("n_segments"))
                              .as_py() or 0)))
    return out


def pack_all(out: str, pack_rows: int = PACK_ROWS) -> list[list[str]]:
    """Pack every committed unit of ``out`` as a finished run does; the ranges packed."""
    store = OutputStore(out)
    rows = unit_rows(store)
    planner = PackPlanner([u for u, _ in rows], pack_rows)
    for unit, n in rows:
        planner.add(unit, n)
    ranges = planner.ready(final=True)
    for units in ranges:
        pack_units(out, units)
    return ranges


def rows_of(out: str):
    store = OutputStore(out)
    return store.read_segments(), store.read_files()


@pytest.fixture(scope="module")
def staged(make_label_output, small_cache) -> str:
    """A label output left staged (--pack-rows 0): 9 units of one file each, 1 to 3 windows each."""
    return make_label_output(CLIPS, small_cache, files_per_unit=1, pack_rows=0, local=True)


@pytest.fixture
def copy(staged, tmp_path):
    """A fresh copy of the staged output."""
    def make(name: str = "out") -> str:
        return shutil.copytree(staged, tmp_path / name)

    return lambda name="out": str(make(name))


def test_the_planner_packs_consecutive_committed_units_from_the_lowest_and_the_tail_at_the_end():
    units = [f"u{i:08d}" for i in range(7)]
    planner = PackPlanner(units, 5)
    for unit, rows in (("u00000001", 3), ("u00000002", 0), ("u00000003", 4)):
        planner.add(unit, rows)
    assert planner.ready() == []                       # u00000000 is not committed yet: nothing starts
    planner.add("u00000000", 1)
    assert planner.ready() == [units[0:4]]             # 1 + 3 + 0 + 4 >= 5
    planner.add("u00000005", 9)
    planner.add("u00000004", 0)
    assert planner.ready() == [units[4:6]]             # a unit of 0 rows still joins a range
    assert planner.ready() == []
    planner.add("u00000006", 1)
    assert planner.ready() == [] and planner.ready(final=True) == [units[6:]]
    never = PackPlanner(units, 0)
    never.add("u00000000", 10**6)
    assert never.ready(final=True) == []


@pytest.mark.integration
def test_packs_hold_the_same_rows_in_unit_order_with_their_offsets_and_the_same_bytes_twice(copy):
    first, second = copy("a"), copy("b")
    before_seg, before_files = rows_of(first)
    per_unit = {u: OutputStore(first).read_segments([u]) for u in OutputStore(first).listing().committed_units()}
    ranges = pack_all(first)
    assert len(ranges) > 2 and [u for r in ranges for u in r] == sorted(per_unit)
    listing = OutputStore(first).listing()
    names = {pack_name(r[0], r[-1]) for r in ranges}
    assert listing.names[FILES_DIR] == names and listing.names[SEGMENTS_DIR] == names     # nothing staged left
    assert listing.committed_units() == sorted(per_unit) and listing.uncommitted_units() == []
    after_seg, after_files = rows_of(first)
    assert after_seg.equals(before_seg) and after_files.equals(before_files)     # same rows, same order
    for unit, table in per_unit.items():
        assert OutputStore(first).read_segments([unit]).equals(table)          # one unit out of its pack
    meta = pq.read_metadata(f"{first}/{SEGMENTS_DIR}/{pack_name(ranges[0][0], ranges[0][-1])}")
    spans = json.loads(meta.metadata[PACK_UNITS.encode()])
    assert [s[0] for s in spans] == ranges[0] and spans[0][1] == 0
    assert all(a[1] + a[2] == b[1] for a, b in zip(spans, spans[1:]))
    assert pack_all(second) == ranges
    for folder in (SEGMENTS_DIR, FILES_DIR):
        for name in names:
            with open(f"{first}/{folder}/{name}", "rb") as x, open(f"{second}/{folder}/{name}", "rb") as y:
                assert x.read() == y.read()


@pytest.mark.integration
def test_a_pack_stopped_after_its_segments_file_is_ignored_by_readers_and_cleared(copy):
    out = copy()
    before = rows_of(out)
    store = OutputStore(out)
    units = store.listing().committed_units()[:3]
    staged_parts = [(u, staged_tables(store, SEGMENTS_DIR, store.listing().units(SEGMENTS_DIR).get(u, [])))
                    for u in units]
    write_pack(store, SEGMENTS_DIR, pack_name(units[0], units[-1]), staged_parts, skip_empty=True)   # step (1)
    listing = store.listing()
    assert listing.orphan_packs() == [pack_name(units[0], units[-1])]
    assert listing.committed_units() == sorted(listing.committed_units()) and not listing.packed_units()
    assert all(t.equals(b) for t, b in zip(rows_of(out), before))            # the orphan's rows are not read twice
    assert store.remove_stale(listing) == 1 and not store.listing().orphan_packs()
    pack_units(out, units)
    assert all(t.equals(b) for t, b in zip(rows_of(out), before))


@pytest.mark.integration
def test_a_pack_stopped_while_deleting_staged_parts_reads_from_the_pack(copy):
    out = copy()
    before = rows_of(out)
    store = OutputStore(out)
    listing = store.listing()
    units = listing.committed_units()[:4]
    name = pack_name(units[0], units[-1])
    for folder, skip in ((SEGMENTS_DIR, True), (FILES_DIR, False)):                # steps (1) and (2)
        write_pack(store, folder, name, [(u, staged_tables(store, folder, listing.units(folder).get(u, [])))
                                         for u in units], skip_empty=skip)
    store.remove_part(FILES_DIR, listing.units(FILES_DIR)[units[0]][0])             # step (3), begun
    after = store.listing()
    assert set(after.packed_units()) == set(units) and after.uncommitted_units() == []
    assert all(t.equals(b) for t, b in zip(rows_of(out), before))            # the pack wins over staged parts
    stale = after.stale_parts()
    assert stale and all(n != name for _, n in stale)
    assert store.remove_stale(after) == len(stale) and not store.listing().stale_parts()
    assert all(t.equals(b) for t, b in zip(rows_of(out), before))


@pytest.mark.integration
def test_a_reader_that_listed_before_a_pack_lists_again_and_reads_the_pack(copy):
    out = copy()
    store = OutputStore(out)
    listing = store.listing()
    units = listing.committed_units()
    expected = store.read_units(units, SEGMENTS_DIR, listing)
    pack_units(out, units[:5])                       # packed between the listing and the read
    got = store.read_units(units, SEGMENTS_DIR, listing)
    assert sum(t.num_rows for t in got) == sum(t.num_rows for t in expected)
    import pyarrow as pa
    assert pa.concat_tables(got).equals(pa.concat_tables(expected))
