"""das_core.evaluation.report: CSV records, number formats and where each condition sits on the plot."""

from __future__ import annotations

import math

from das_core.evaluation import Condition
from das_core.evaluation.report import RESULT_FIELDS, _positions, percent, records_csv


def test_records_csv_writes_none_as_an_empty_cell():
    records = [{"dataset": "esc50", "method": "das", "snr_db": None, "metric": "accuracy", "value": 0.5, "lam": 0.1,
                "split": "test"}]
    assert records_csv(records, RESULT_FIELDS).decode().splitlines() == [
        "dataset,method,snr_db,metric,value,lam,split", "esc50,das,,accuracy,0.5,0.1,test"]


def test_percent_and_plot_positions():
    assert percent(0.12345) == "12.35" and percent(None) == "n/a" and percent(math.nan) == "n/a"
    conds = [Condition(None), Condition(20.0), Condition(0.0), Condition(-5.0)]
    # clean sits one average step (at least 5 dB) above the highest SNR
    assert _positions(conds) == {conds[0]: 32.5, conds[1]: 20.0, conds[2]: 0.0, conds[3]: -5.0}
    assert _positions([Condition(None)]) == {Condition(None): 0.0}
    assert _positions([Condition(None), Condition(0.0)]) == {Condition(None): 5.0, Condition(0.0): 0.0}
