"""`make bench`'s last table: each target read as the bound it states."""

from benchmarks.summary import verdict


def test_a_target_is_read_as_the_bound_it_states():
    assert verdict(2.195, "<= 2.5 (poll interval + 0.5 s)") == "met"
    assert verdict(3.21, "< 3") == "MISSED" and verdict(3.0, "< 3") == "MISSED"
    assert verdict(3.0, "<= 3") == "met" and verdict(44.1, ">= 100") == "MISSED"
    assert verdict(0, "0") == "met" and verdict(2, "0") == "MISSED"
    assert verdict(None, "< 1") == "not measured" and verdict(True, "1") == "not measured"
    assert verdict(2.0, "~2.1 (measured on another day)") == "(not a bound)"
