"""``das index`` without Ray: an approximate nearest-neighbour index (FAISS IVF) over an output's window or file
embeddings, and its use by ``das search``.

``record`` (what an index covers: ``index.json``), ``build`` (building and refreshing it unit by unit),
``lookup`` (opening it for a search, staleness, candidates re-ranked exactly). Its files and their removal:
``das_core.output.index_files``. Why FAISS, and the figures: ``bench/index.py`` and the README.
"""
