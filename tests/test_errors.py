"""das_core.errors: one tree under DasError, defined in one module; das_core.failure: the line of each kind."""

from __future__ import annotations

import errno
import importlib
import inspect
import pickle
import pkgutil

import pytest

import das_core
from das_core import errors
from das_core.failure import FAILED, INTERNAL, REFUSED, explain


def test_every_exception_of_das_core_is_defined_in_errors_under_das_error():
    for info in pkgutil.walk_packages(das_core.__path__, "das_core."):
        module = importlib.import_module(info.name)
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("das_core"):
                assert obj.__module__ == "das_core.errors", (info.name, name)
    for name, obj in inspect.getmembers(errors, inspect.isclass):
        if obj.__module__ == "das_core.errors":
            assert issubclass(obj, errors.DasError), name


def test_refusals_and_failures_keep_their_built_ins():
    assert issubclass(errors.StorageError, errors.Refused) and issubclass(errors.StorageError, OSError)
    assert issubclass(errors.BucketNotFoundError, FileNotFoundError)
    assert issubclass(errors.AudioDecodeError, errors.Refused)
    assert issubclass(errors.ConfigError, ValueError) and not issubclass(errors.WriteFailed, errors.RunFailed)
    decode = errors.AudioDecodeError("a.wav", "not_audio", "no header")
    assert (decode.name, decode.kind, decode.cause, str(decode)) == ("a.wav", "not_audio", "no header",
                                                                    "a.wav: not_audio: no header")
    write = pickle.loads(pickle.dumps(errors.WriteFailed(errno.ENOSPC, "No space left on device", "/o/p")))
    assert (type(write), write.errno, write.filename) == (errors.WriteFailed, errno.ENOSPC, "/o/p")


def test_each_kind_has_its_line():
    assert explain(errors.AudioDecodeError("n.wav", "not_audio", "x")) == (REFUSED, "n.wav: not_audio: x")
    assert explain(errors.RunFailed("3 of\n4 failed")) == (FAILED, "3 of 4 failed")
    assert explain(OSError(errno.EROFS, "Read-only file system", "/o")) == (
        FAILED, "cannot write /o (Read-only file system); free space or choose a location you can write to, then rerun")
    kind, text = explain(KeyError("k"))
    assert kind == INTERNAL and text.startswith("internal error (KeyError: 'k'); rerun with --debug (or DAS_DEBUG=1)")


def test_causes_walks_ray_wrappers_and_chained_exceptions():
    class Wrapped(Exception):
        def __init__(self, cause):
            super().__init__("remote traceback")
            self.cause = cause

    full = OSError(errno.ENOSPC, "No space left on device", "/o")
    try:
        raise RuntimeError("task") from Wrapped(full)
    except RuntimeError as outer:
        assert [type(e) for e in errors.causes(outer)] == [RuntimeError, OSError]
    assert errors.unwrap(Wrapped(Wrapped(full))) is full


def _wrapped_interrupt() -> RuntimeError:
    """A Ctrl-C that landed inside a library's import: Python wraps what ``__set_name__`` raises."""
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:
            raise RuntimeError("Error calling __set_name__ on 'env_bool' instance 'cache'") from interrupt
    except RuntimeError as wrapped:
        return wrapped


def test_a_wrapped_ctrl_c_ends_as_an_interrupt_not_an_internal_error(capsys):
    from das_core.output.record import ended_by
    from jobs.reporting import EXIT_INTERRUPTED, run_reporting

    wrapped = _wrapped_interrupt()
    assert errors.interrupted_by(wrapped) is wrapped.__cause__
    assert errors.interrupted_by(RuntimeError("plain")) is None
    assert ended_by(wrapped) == ("interrupted", "interrupted (Ctrl-C)")

    def body() -> int:
        raise wrapped

    assert run_reporting("das label", body, interrupted_hint="rerun with --resume") == EXIT_INTERRUPTED
    line = capsys.readouterr().err.strip()
    assert line == "das label: error: interrupted (KeyboardInterrupt); rerun with --resume"


def test_a_failure_raised_from_none_while_handling_an_interrupt_is_that_failure(capsys):
    # the stall watchdog interrupts the driver, which raises RunFailed "from None": the run failed (exit 1)
    from jobs.reporting import run_reporting

    def body() -> int:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise errors.RunFailed("no chunk finished for 3 s") from None

    assert errors.interrupted_by(errors.RunFailed("x")) is None
    assert run_reporting("das label", body) == 1
    assert capsys.readouterr().err.strip() == "das label: error: no chunk finished for 3 s"


def test_an_interrupt_inside_a_held_block_is_raised_when_it_ends():
    import os
    import signal

    from das_core.runtime.interrupts import interrupts_held

    steps = []
    before = signal.signal(signal.SIGINT, signal.default_int_handler)    # other tests may have set another
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts_held():
                os.kill(os.getpid(), signal.SIGINT)
                steps.append("the block went on")
        assert steps == ["the block went on"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            with interrupts_held():
                os.kill(os.getpid(), signal.SIGTERM)
        with interrupts_held():
            steps.append("no signal, nothing raised")
    finally:
        signal.signal(signal.SIGINT, before)
