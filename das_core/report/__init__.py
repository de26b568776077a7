"""``das report``: a Markdown report with PNG figures of a label output or a rescore run folder, in OUT/report/.

``tally`` (counts folded unit by unit), ``figures`` (the PNGs), ``markdown`` (report.md's text), ``record`` (the
files a report wrote, the only ones it replaces or removes), ``write`` (writing it, and the report after a run).
"""
