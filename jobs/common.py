"""What every command shares: options from a settings object, das's reporting, S3 probes, Ray start-up."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from das_core.errors import ClusterError
from das_core.failure import DEBUG_ENV, one_line
from das_core.io.s3 import check_s3_access, is_s3, set_s3_endpoint
from das_core.settings import described
from jobs.reporting import debug_requested, exit_after, run_reporting, setup_logging

log = logging.getLogger("das")
_PROG = "das"          # the running command, for messages printed outside run_main

# What a worker on another machine must see as the driver does; the last two: test-only fault switches.
FORWARDED_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "HF_HUB_OFFLINE",
                 "DAS_TOKENIZER_DIR", "DAS_CACHE_DIR", "DAS_TEST_CRASH_ON", "DAS_TEST_FAIL_WRITE")

RAY_CONNECT_TIMEOUT_S = 60.0        # ray.init retries an absent cluster for minutes; das gives up after this
RAY_PROBE_TIMEOUT_S = 5.0
CLUSTER_WAIT_ENV = "DAS_CLUSTER_WAIT_S"


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Add the options every command has: ``--s3-endpoint``, ``-v/--verbose`` and ``--debug`` (``run_main``
    applies them)."""
    parser.add_argument("--s3-endpoint", metavar="URL",
                        help="S3-compatible endpoint (MinIO, Ceph, ...); same as AWS_ENDPOINT_URL_S3. "
                             "Credentials come from the usual AWS environment variables or config files.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help=f"on failure, print the Python traceback as well (same as {DEBUG_ENV}=1)")


def s3_uris(args: argparse.Namespace) -> list[str]:
    """Every ``s3://`` URI among the parsed options (lists included)."""
    found = []
    for value in vars(args).values():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, str) and is_s3(item):
                found.append(item)
    return found


def run_main(prog: str, body: Callable[[], int], args: argparse.Namespace | None = None) -> int:
    """``body()`` under ``jobs.reporting.run_reporting``: one line and an exit status for every failure.

    With ``args``, its common options are applied first and the buckets of its ``s3://`` options are
    probed, so that a missing bucket or credentials are refused before any model is loaded.
    """
    global _PROG
    _PROG = prog

    def checked() -> int:
        """The body, after the common options are applied and the S3 buckets named are probed."""
        if args is not None:
            setup_logging(getattr(args, "verbose", False))
            if getattr(args, "s3_endpoint", None):
                set_s3_endpoint(args.s3_endpoint)
            check_s3_access(s3_uris(args))
        return body()

    hint = "committed results are kept; rerun with --resume to continue" if hasattr(args, "resume") else None
    debug = debug_requested(getattr(args, "debug", False))
    return run_reporting(prog, checked, debug=debug, interrupted_hint=hint)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown after each option (none for a flag or an unset one); descriptions and epilogs keep their
    paragraphs (each is wrapped, one with an indented line is kept as it is)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        unset = action.default is None or action.default is False or action.default == []
        return action.help if unset else super()._get_help_string(action)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text
        return "\n\n".join(para if any(line.startswith(" ") for line in para.splitlines()) else
                           fill(para, width, indent) for para in text.split("\n\n"))


def add_settings(parser: argparse.ArgumentParser, settings_class: type,
                 groups: dict[str, argparse._ArgumentGroup] | None = None) -> None:
    """Add an option per described field of ``settings_class`` (``das_core.settings``), in field order: a flag
    for a bool, a repeatable option for a list, required where the field has no default. A field with a group
    goes into that argument group, made once and kept in ``groups`` so that several classes can share it."""
    groups = {} if groups is None else groups
    for field in described(settings_class):
        target = (parser if field.group is None
                  else groups.setdefault(field.group, parser.add_argument_group(field.group)))
        kw: dict = {"help": field.help, "dest": field.name}
        if field.kind is bool:
            kw["action"] = "store_true"
        else:
            kw.update(type=field.kind, metavar=field.metavar, choices=field.choices,
                      **({"required": True} if field.required else {"default": field.default}))
            if field.repeat:
                kw.update(action="append", default=[])
        target.add_argument(field.flag, **kw)


def settings_from_args(settings_class: type, args: argparse.Namespace, **given):
    """A ``settings_class`` (a das_core settings dataclass) from the parsed options named as its fields; ``given``
    values take precedence. Its own validation runs (and refuses) as it is constructed."""
    fields = settings_class.__dataclass_fields__
    return settings_class(**{**{k: v for k, v in vars(args).items() if k in fields}, **given})


def job_main(argv: list[str] | None, prog: str, build_parser: Callable[[str], argparse.ArgumentParser],
             config_from_args: Callable[[argparse.Namespace], object], run: Callable[[object], object]) -> int:
    """The ``main`` of a job whose work is ``run(config_from_args(parsed arguments))``: ``argv`` parsed by
    ``build_parser(prog)``, the work done under ``run_main``; the exit status (0 when ``run`` returns)."""
    args = build_parser(prog).parse_args(argv)

    def body() -> int:
        """The job's work; 0."""
        run(config_from_args(args))
        return 0

    return run_main(prog, body, args)


def worker_env() -> dict[str, str]:
    """The environment variables of this process that Ray workers need too (S3 endpoint, credentials, das's)."""
    return {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}


def _probe_ray_address(address: str) -> None:
    """Refuse at once a ``host:port`` where nothing listens (ray.init would retry it for minutes)."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return                               # "auto", "local": Ray finds the address itself
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({exc.strerror or exc}); "
                           "start the cluster or correct RAY_ADDRESS, or unset RAY_ADDRESS to run on a local "
                           "Ray") from None


def init_ray(gpus: float = 0.0, cpus: float = 0.0, fits: Callable[[list[dict]], list[str]] | None = None) -> None:
    """Connect to ``RAY_ADDRESS`` when set (cluster, ``ray job submit``), else start a private local Ray.

    Without ``RAY_ADDRESS`` das never joins a cluster that another process started on this machine (which a
    plain ``ray.init()`` finds in Ray's current-cluster file) and leaves that file as it was. Bounded: an
    address where nothing listens is refused within seconds (``ClusterError``); a connection or start-up
    still pending after ``DAS_RAY_CONNECT_TIMEOUT_S`` (default 60 s; 120 s for a local start) ends the
    process with one line and status 2. With ``gpus`` / ``cpus``, the cluster must offer that many, and
    with ``fits`` its nodes must fit the job (``require_cluster_resources``).
    """
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        if address:
            log.info("connecting to the Ray cluster at RAY_ADDRESS=%s...", address)
            _probe_ray_address(address)
        else:
            log.info("starting Ray (local, %d CPUs)...", os.cpu_count() or 1)
        timeout = float(os.environ.get("DAS_RAY_CONNECT_TIMEOUT_S") or (RAY_CONNECT_TIMEOUT_S * (1 if address else 2)))
        where = f"the Ray cluster at RAY_ADDRESS={address}" if address else "the local Ray instance"
        late = (f"{_PROG}: error: {where} did not answer within {timeout:g} s (ray.init is still waiting); "
                + ("check that the cluster is up and RAY_ADDRESS is right, or unset RAY_ADDRESS for a local Ray"
                   if address else LOCAL_RAY_ADVICE))
        quiet = not log.isEnabledFor(logging.DEBUG)
        try:
            with exit_after(timeout, late), _current_cluster_file_kept():
                _quiet_ray_logs(quiet)
                # "local": a new private instance; None would join the cluster named in the current-cluster file
                ray.init(address=address or "local", include_dashboard=None if address else False,
                         log_to_driver=True, logging_level=logging.WARNING)
                _quiet_ray_logs(quiet)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError, ...
            where = f"connect to the Ray cluster at RAY_ADDRESS={address}" if address else "start a local Ray"
            raise ClusterError(f"cannot {where} ({type(exc).__name__}: {one_line(exc)}); "
                               + ("check RAY_ADDRESS, or unset it to run on a local Ray" if address
                                  else LOCAL_RAY_ADVICE)) from exc
    if gpus or cpus or fits:
        require_cluster_resources(gpus=gpus, cpus=cpus, fits=fits)


# Advice for a local start that failed: never `ray stop`, which stops every Ray cluster on the machine.
LOCAL_RAY_ADVICE = ("check free memory and space in /tmp (Ray's session folder), and that no das run of yours "
                    "still runs (`ps -ef | grep das`), then retry; set RAY_ADDRESS to use a running cluster")


@contextmanager
def _current_cluster_file_kept() -> Iterator[None]:
    """Ray's current-cluster file (/tmp/ray/ray_current_cluster) as it was before the block: das's private
    instance must not be found by another process's ``ray.init()``; another cluster's entry is never removed."""
    from ray._common.utils import get_ray_address_file

    path = get_ray_address_file(None)
    try:
        with open(path) as f:
            before: str | None = f.read()
    except OSError:
        before = None
    try:
        yield
    finally:
        try:
            with open(path) as f:
                after: str | None = f.read()
        except OSError:
            after = None
        if after != before and after is not None and after.strip() == _own_gcs_address():
            log.debug("restoring Ray's current-cluster file %s (das's own instance is private)", path)
            with suppress(OSError):
                if before is None:
                    os.remove(path)
                else:
                    with open(path, "w") as f:
                        f.write(before)


def _own_gcs_address() -> str | None:
    import ray

    return ray.get_runtime_context().gcs_address if ray.is_initialized() else None


class _RayNoise(logging.Filter):
    """Drops the Ray lines a das user cannot act on: Ray Data's INFO lines (execution plans, block progress;
    they stay in Ray's session log folder, logs/ray-data/) and the token-authentication notice."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is shown."""
        if record.name.startswith("ray.data"):
            return record.levelno >= logging.WARNING and not record.getMessage().startswith("Progress bars disabled")
        return not record.name.endswith("authentication_token_setup")


def _quiet_ray_logs(quiet: bool) -> None:
    """With ``quiet`` (no -v), Ray's console handlers drop ``_RayNoise``; its log files keep everything."""
    import ray.data  # noqa: F401 - configures the "ray.data" logger and its handlers

    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if type(handler).__name__ == "SessionFileHandler":
                continue
            for f in [f for f in handler.filters if isinstance(f, _RayNoise)]:
                handler.removeFilter(f)
            if quiet:
                handler.addFilter(_RayNoise())


def require_cluster_resources(gpus: float = 0.0, cpus: float = 0.0, wait_s: float | None = None,
                              gpu_option: str = "--num-gpus", fits: Callable[[list[dict]], list[str]] | None = None
                              ) -> None:
    """Refuse a job that asks for more GPUs / CPUs than the Ray cluster has, or (``fits``: the live nodes'
    total resources -> what does not fit) whose actors and tasks fit no node, instead of waiting forever.

    A cluster's autoscaler may still add nodes: with ``RAY_ADDRESS`` set, wait
    up to ``wait_s`` (default ``$DAS_CLUSTER_WAIT_S`` or 300 s), logging what
    is missing every 15 s; a local Ray is refused at once.
    """
    import ray

    if wait_s is None:
        wait_s = float(os.environ.get(CLUSTER_WAIT_ENV) or (300 if os.environ.get("RAY_ADDRESS") else 0))
    deadline = time.monotonic() + wait_s
    while True:
        total = ray.cluster_resources()
        have_gpus, have_cpus = float(total.get("GPU", 0)), float(total.get("CPU", 0))
        missing = ([f"it needs {gpus:g} GPU(s) ({gpu_option} {gpus:g}) but it has {have_gpus:g}"] if gpus > have_gpus
                   else []) + ([f"it needs {cpus:g} CPU(s) but it has {have_cpus:g}"] if cpus > have_cpus else [])
        if not missing and fits is not None:
            missing = fits(node_resources())
        if not missing:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            where = "the Ray cluster" if os.environ.get("RAY_ADDRESS") else "the local Ray instance (this machine)"
            raise ClusterError(f"{where} cannot run this job ({'; '.join(missing)}); "
                               + (f"use {gpu_option} 0 to encode on CPU, " if gpus > have_gpus else "")
                               + "ask for fewer resources (--actors, --cpus-per-actor), or run on a larger "
                                 "cluster (RAY_ADDRESS)"
                               + (f"; waited {wait_s:g} s for the autoscaler ({CLUSTER_WAIT_ENV})" if wait_s else ""))
        log.info("waiting up to %.0f s for the Ray cluster to grow (%s)", left, "; ".join(missing))
        time.sleep(min(15.0, left))


def node_resources(available: bool = False) -> list[dict]:
    """Each live node's total (or, with ``available``, currently free) Ray resources, in a stable order."""
    import ray

    nodes = sorted((n for n in ray.nodes() if n.get("Alive")), key=lambda n: n["NodeID"])
    if not available:
        return [dict(n.get("Resources") or {}) for n in nodes]
    from ray._private.state import available_resources_per_node

    free = available_resources_per_node()
    return [dict(free.get(n["NodeID"]) or {}) for n in nodes]

