"""What every job shares: logging, user-facing errors, S3 endpoint option, Ray start-up."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from das_core import storage
from das_core.audio import AudioDecodeError
from das_core.cache import CacheError
from das_core.checkpoint import CheckpointError
from das_core.encoder import EncoderError

log = logging.getLogger("das")

# Variables a worker on another machine needs to see as the driver does.
FORWARDED_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "HF_HUB_OFFLINE",
                 "DAS_TOKENIZER_DIR", "DAS_CACHE_DIR")


class UsageError(Exception):
    """A bad argument or artefact, refused before any work starts."""


class JobFailed(Exception):
    """The job ran but its result is not acceptable (e.g. too many bad files)."""


USER_ERRORS = (UsageError, CacheError, CheckpointError, EncoderError, AudioDecodeError, FileNotFoundError,
               PermissionError)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--s3-endpoint", metavar="URL",
                        help="S3-compatible endpoint (MinIO, Ceph, ...); same as AWS_ENDPOINT_URL_S3. "
                             "Credentials come from the usual AWS environment variables or config files.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def apply_common_options(args: argparse.Namespace) -> None:
    setup_logging(args.verbose)
    if args.s3_endpoint:
        storage.set_s3_endpoint(args.s3_endpoint)


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run ``body``; turn refusals into a one-line message and exit status 2, failures into status 1."""
    try:
        return body()
    except USER_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except JobFailed as exc:
        print(f"{prog}: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; committed results are kept (rerun with --resume)", file=sys.stderr)
        return 130


def job_main(argv: list[str] | None, prog: str, build_parser, config_from_args, run) -> int:
    """The ``main`` of a job whose work is ``run(config_from_args(parsed arguments))``."""
    args = build_parser(prog).parse_args(argv)
    apply_common_options(args)

    def body() -> int:
        run(config_from_args(args))
        return 0

    return run_main(prog, body)


def worker_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}


def init_ray() -> None:
    """Connect to ``RAY_ADDRESS`` when set (cluster, ``ray job submit``), else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    log.info("connecting to Ray cluster at %s" if address else "starting a local Ray instance%s",
             address or "")
    ray.init(address=address or None, log_to_driver=True, logging_level=logging.WARNING)


def read_lines_from(uri: str, what: str) -> list[str]:
    from das_core.prompts import read_lines

    try:
        return read_lines(storage.read_bytes(uri).decode("utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{what} file {uri} does not exist") from None
    except UnicodeDecodeError:
        raise UsageError(f"{what} file {uri} is not UTF-8 text") from None
