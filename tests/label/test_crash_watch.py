"""The decode-crash watch: an input is given up only after two known deaths on it."""

from __future__ import annotations

from das_core.label.crash_watch import DecodeProgress


def test_decode_progress_gives_up_only_after_two_known_deaths():
    p = DecodeProgress()
    assert p.begin("u1") == (False, {}, -1)
    p.at("u1", 0, "a.wav")
    p.chunk("u1", 1)
    p.at("u1", 1, "b.wav")                                 # first attempt dies here: position not trusted
    assert p.begin("u1") == (True, {}, 1)
    p.at("u1", 0, "a.wav")
    p.at("u1", 1, "b.wav")                                 # a careful attempt dies: one known death
    p.chunk("u1", 3)
    assert p.begin("u1") == (True, {}, 3)
    p.at("u1", 0, "a.wav")
    p.at("u1", 1, "b.wav")                                 # second known death on b.wav
    assert p.begin("u1") == (True, {1: "b.wav"}, 3)
    p.at("u1", 2, "c.wav")
    p.done("u1")
    assert p.units == {} and p.begin("u1") == (False, {}, -1)  # a finished unit is forgotten
    p.done("u1")
    assert p.begin("u2") == (False, {}, -1)
    p.at("u2", 0, "x.wav")
    assert p.begin("u2") == (True, {}, -1)                 # deaths at different inputs never add up
    p.at("u2", 0, "x.wav")
    assert p.begin("u2") == (True, {}, -1)
    p.at("u2", 1, "y.wav")
    assert p.begin("u2") == (True, {}, -1)
