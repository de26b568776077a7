"""``das search`` without Ray: rank the stored windows (or files) of a label output against text or audio queries.

``config`` (SearchConfig), ``queries`` (query vectors, scores, per-unit top rows and their merge), ``plan`` (checks
on the output searched, queries encoded once, groups of units), ``task`` (ranking one group), ``results`` (the
merged ranking printed and written). The loop over the groups is ``jobs/search.py``'s.
"""
