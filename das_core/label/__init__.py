"""``das label`` without Ray: its settings, plan and resume rule, the unit table, the stages and the run's ledger.

- ``config``: ``LabelConfig``, the run's settings, checked at construction;
- ``plan``: ``plan_run`` (checks, listing, units to do) and the resume rule (``RESUME_KEYS``);
- ``units``: work units and the unit table (``OUT/_work/units.parquet``);
- ``decode``: the decode stage (a unit -> chunks of int16 windows); ``crash_watch``: which input kills a
  decoding process; ``decode_process``: decoding in a child process for local runs;
- ``encode``: the encode stage (``ChunkEncoder``); ``sink``: the unit sink (chunk parts, the commit per unit);
- ``local``: the stages in this process (``LocalStages``; on Ray: ``jobs.pipeline.RayStages``);
- ``ledger``: ``LabelRun``, the driver's counts, error budget and manifest; ``summary``: what das label prints.

The command's loop is ``jobs.label``.
"""
