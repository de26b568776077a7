"""The Ray wiring of ``das label`` (``jobs.pipeline``) that can be checked without a cluster."""

from __future__ import annotations

import pyarrow as pa

from das_core.label.units import plan_units, unit_table_uri, write_unit_table
from jobs.pipeline import UnitTableDatasource


def test_unit_table_read_tasks_are_row_groups_keeping_only_units_to_do(tmp_path):
    n = 5
    inputs = pa.table({"file_id": [f"f{i}" for i in range(n)], "path": [f"/a/f{i}.wav" for i in range(n)],
                       "size": pa.array([None] * n, pa.int64()), "shard": pa.array([None] * n, pa.string())})
    write_unit_table(str(tmp_path), plan_units(inputs, files_per_unit=2, unit_bytes=2**30))
    uri = unit_table_uri(str(tmp_path))
    every = UnitTableDatasource(uri).get_read_tasks(parallelism=1)
    assert [t.metadata.num_rows for t in every] == [1, 1, 1]
    assert [read(t).column("unit").to_pylist() for t in every] == [["u00000000"], ["u00000001"], ["u00000002"]]
    some = UnitTableDatasource(uri, keep={1: ["u00000001"], 2: []}).get_read_tasks(parallelism=1)
    assert [t.metadata.num_rows for t in some] == [1, 0]
    assert [read(t).column("file_ids").to_pylist() for t in some] == [[["f2", "f3"]], []]


def read(task) -> pa.Table:
    return pa.concat_tables(list(task()))
