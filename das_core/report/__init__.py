"""``das report``: report.md with PNG figures, and report.html with playable excerpts, of a label output or a
rescore run folder, in OUT/report/.

``tally`` (counts folded unit by unit), ``figures`` (the PNGs), ``markdown`` (report.md's text), ``picks`` (the
windows report.html plays, picked while tallying), ``excerpts`` (cutting them from the source audio as Opus),
``page`` (report.html's text), ``write`` (writing it all, and the report after a run). The files a report wrote,
the only ones it replaces or removes, are on its record (``das_core.output.report_files``).
"""
