"""``das browse``: a local, read-only web app over a run: search it, filter by label, open a file's timeline,
"more like this", and listen. ``catalogue`` (what is read of the run, and how), ``sources`` (which audio may
be served), ``listen`` (one window's audio), ``engine`` (``das search``'s engine and the text encoder),
``page`` (the HTML), ``server`` (the aiohttp routes). The command, its binding and its loop: ``jobs/browse.py``.
"""
