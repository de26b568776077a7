"""The commands, one module per command: options, the command's loop over the library, and its Ray wiring.

The library (``das_core``) plans, scores, writes and keeps the ledger; a command here builds the config,
runs the stages (in this process or on Ray) and hands their statistics to the library.
"""
