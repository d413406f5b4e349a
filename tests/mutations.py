"""Byte-level mutations for the fuzz suites: a hypothesis strategy of edits and the function that
applies them (set a byte, cut the rest, or insert a byte, at a position taken modulo the length)."""

from __future__ import annotations

from hypothesis import strategies as st


def byte_edits(max_pos: int, max_size: int) -> st.SearchStrategy[list[tuple[int, int, str]]]:
    """Lists of 1..``max_size`` edits ``(position, byte value, "set" | "cut" | "add")``."""
    return st.lists(
        st.tuples(
            st.integers(0, max_pos), st.integers(0, 255), st.sampled_from(["set", "cut", "add"])
        ),
        min_size=1,
        max_size=max_size,
    )


def mutate(raw: bytes, changes: list[tuple[int, int, str]]) -> bytes:
    """``raw`` with the edits applied in order."""
    b = bytearray(raw)
    for pos, value, how in changes:
        k = pos % (len(b) + 1)
        if how == "set" and k < len(b):
            b[k] = value
        elif how == "cut":
            del b[k:]
        else:
            b[k:k] = bytes([value])
    return bytes(b)
