"""``das build-cache``: encode K x (1 + P) prompts once into a DriftCache file (``das_core.scoring.build``)."""

from __future__ import annotations

import argparse
import sys

from das_core.scoring.build import BuildConfig, build_cache
from jobs.common import HelpFormatter, add_common_options, add_settings, job_main, settings_from_args


def build_parser(prog: str = "das build-cache") -> argparse.ArgumentParser:
    """The options of ``das build-cache``: one per field of ``BuildConfig``, then the common ones."""
    parser = argparse.ArgumentParser(prog=prog, formatter_class=HelpFormatter, description=(
        "Encode each class's clean prompt and its noise-conditioned prompts once, with the text tower of "
        "CHECKPOINT, and save the drift cache DAS scores with (METHOD.md section 2)."))
    add_settings(parser, BuildConfig)
    add_common_options(parser)
    return parser


def run(config: BuildConfig) -> None:
    """Build and save the drift cache ``config`` describes; print the summary ``build_cache`` returns."""
    print(build_cache(config), flush=True)


def main(argv: list[str] | None = None, prog: str = "das build-cache") -> int:
    """``das build-cache``: parse ``argv`` into a ``BuildConfig`` and ``run`` it under das's error reporting; the
    exit status."""
    return job_main(argv, prog, build_parser, lambda args: settings_from_args(BuildConfig, args), run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.build_cache"))
