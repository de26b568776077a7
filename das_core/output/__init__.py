"""What das writes under an output and reads back: the on-disk format and commit rule (``format``), the rows
(``tables``), the parts (``store``: ``OutputStore``), ``_manifest.json`` (``manifest``), what every run record
shares (``record``), and the lock on an output (``lease``)."""
