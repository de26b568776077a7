"""``das rescore`` without Ray: re-label the embeddings a ``das label`` run stored, with another drift cache.

``config`` (RescoreConfig, the run folder's name), ``plan`` (committed units, earlier runs, the watermark),
``unit`` (re-scoring one committed unit: one task), ``ledger`` (statistics, manifest, summary). The loop over
the units is ``jobs/rescore.py``'s.
"""
