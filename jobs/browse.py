"""``das browse OUT``: a local, read-only web app over a label output or a rescore run folder (local or s3://):
search it as ``das search`` does, filter by label and score, open a file's timeline, "more like this", and
listen to any window. Options, checks, binding and the serving loop only; the app is ``das_core.browse``.
One process, no Ray."""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import sys
import webbrowser

from das_core.browse.catalogue import RunCatalogue
from das_core.browse.engine import TextEncoder
from das_core.browse.server import Browser
from das_core.browse.sources import guard_for
from das_core.errors import BrowseRefused
from das_core.io import storage
from das_core.output.manifest import RunManifest
from jobs.common import HelpFormatter, add_common_options, run_main
from jobs.report import require_output

DEFAULT_PORT = 8765
DEFAULT_HOST = "127.0.0.1"


def build_parser(prog: str = "das browse") -> argparse.ArgumentParser:
    """The options of ``das browse``: OUT, --port, --host, --checkpoint, --open and the common ones."""
    parser = argparse.ArgumentParser(prog=prog, formatter_class=HelpFormatter, description=(
        "Serve a local web page over OUT (the output of `das label`, or a `das rescore` run folder, local or "
        "s3://): search it with text (the run's checkpoint) as `das search` does, through its index where `das "
        "index` built one; list a label's best windows; open a file's timeline; find more windows like one; "
        "listen to any window, cut from the source audio. Read-only; serves audio only from the inputs the run's "
        "manifest names. Ctrl-C stops it."))
    parser.add_argument("out", metavar="OUT", help="output folder or s3:// prefix of das label, or a das rescore run "
                        "folder")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="the TCP port to listen on")
    parser.add_argument("--host", default=DEFAULT_HOST, help="the address to listen on; anything but a loopback "
                        "address serves the archive's audio to the network, unauthenticated")
    parser.add_argument("--checkpoint", metavar="CKPT", help="the CLAP checkpoint for text queries (default: the "
                        "one the run's manifest names); refused if the run was labelled with another")
    parser.add_argument("--open", action="store_true", help="open the page in this machine's web browser")
    add_common_options(parser)
    return parser


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def prepare(out: str, checkpoint: str | None = None) -> Browser:
    """The ``Browser`` of ``out``, after every refusal (not a das output, nothing committed, no input named, a
    ``--checkpoint`` of another model); says on stderr when text queries are off."""
    out = storage.absolute(out)
    require_output(out)
    manifest = RunManifest.read(out)
    catalogue = RunCatalogue(out, manifest)
    if not catalogue.units:
        raise BrowseRefused(f"{out} has no committed unit yet: nothing to browse; let `das label` commit some")
    guard = guard_for(out, manifest)
    text = TextEncoder(out, manifest, storage.absolute_if_local(checkpoint) if checkpoint else None)
    if checkpoint:
        text.verify()
    why_not = text.available()
    if why_not:
        print(f"das browse: text queries are off: {why_not}; labels, timelines, more-like-this and playback work",
              file=sys.stderr, flush=True)
    return Browser(catalogue, guard, text)


async def serve(browser: Browser, host: str, port: int, open_page: bool = False) -> None:
    """Listen on ``host:port`` and answer until cancelled; a port in use is refused with one line."""
    from aiohttp import web

    runner = web.AppRunner(browser.app(), access_log=None)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise BrowseRefused(f"port {port} on {host} is in use; pass --port N to listen on another") from None
            raise BrowseRefused(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --host or "
                                "--port") from None
        url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
        print(f"das browse: serving {browser.catalogue.uri} at {url} (Ctrl-C to stop)", flush=True)
        browser.start_loading()
        if open_page:
            webbrowser.open(url)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run(args: argparse.Namespace) -> None:
    """``das browse``: check, then serve until Ctrl-C (one line: stopped)."""
    if not 1 <= args.port <= 65535:
        raise BrowseRefused(f"--port {args.port} is not a TCP port; give one in 1..65535")
    if not is_loopback(args.host):
        print(f"das browse: warning: --host {args.host} serves this archive's audio to the network, "
              "unauthenticated, to anyone who can reach this port", file=sys.stderr, flush=True)
    browser = prepare(args.out, args.checkpoint)
    try:
        asyncio.run(serve(browser, args.host, args.port, args.open))
    except KeyboardInterrupt:
        print("das browse: stopped", flush=True)
    finally:
        browser.pool.shutdown(wait=False, cancel_futures=True)


def main(argv: list[str] | None = None, prog: str = "das browse") -> int:
    """``das browse``: parse ``argv``, serve, and return the exit status (0 after Ctrl-C)."""
    args = build_parser(prog).parse_args(argv)

    def body() -> int:
        run(args)
        return 0

    return run_main(prog, body, args)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.browse"))
