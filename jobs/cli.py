"""The ``das`` command: one subcommand per job; each is also ``python -m jobs.<name>``."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "label": ("jobs.label", "label an audio archive (local folder, s3:// prefix or path list) to Parquet"),
    "build-cache": ("jobs.build_cache", "encode the class and noise prompts once into a drift cache"),
    "rescore": ("jobs.rescore", "re-label stored embeddings with another cache (no audio, no model)"),
    "search": ("jobs.search", "find the windows or files closest to a text or an audio query"),
    "compact": ("jobs.compact", "rewrite an output's small parts into large packs (--pack-rows), atomically"),
    "index": ("jobs.index", "build or refresh the index that makes `das search` fast on a large output"),
    "report": ("jobs.report", "write a label or rescore output's report: report.md with figures, report.html to "
                              "listen to"),
    "browse": ("jobs.browse", "serve a local web page to search a run, filter by label, see timelines and listen"),
    "evaluate": ("jobs.evaluate", "compare DAS with the baselines across SNRs on a public dataset"),
    "demo": ("jobs.demo", "generate a small example and label it end to end"),
}


def usage() -> str:
    """The top-level help: the usage line, what das does, and each command with its one-line summary."""
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: das <command> [options]   (das <command> --help for its options)", "",
             "Noise-robust zero-shot audio labelling: LAION-CLAP + Drift-Augmented Scoring on Ray.", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``das <command> ...``: hand ``argv`` (default ``sys.argv[1:]``) after the command name to that command's
    ``main``; the exit status (0 for help and ``--version``, 2 for an unknown command, else the command's)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from das_core import __version__

        print(f"das {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"das: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest, prog=f"das {name}")


if __name__ == "__main__":
    sys.exit(main())
