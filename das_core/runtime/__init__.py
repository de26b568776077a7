"""Where and how a job runs, for every command: the engine choice (this process or Ray), ``map_rows`` in this
process, whether a demand fits the nodes (placement), and what a person watching sees (progress line, stall
watchdog). Nothing here knows a command's stages."""
