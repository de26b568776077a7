"""Reaching bytes and finding inputs: local paths and ``s3://`` URIs (``storage``), S3's client, settings and
named failures (``s3``), the checks of an output location before any work (``checks``), what to label
(``inputs``: folders, prefixes, single files, path lists) and the members of archive shards (``shards``)."""
