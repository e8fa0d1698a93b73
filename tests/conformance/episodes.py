"""What the episode tests share: an episode only adds steps, on its own stream."""

from __future__ import annotations


def added_steps(steps: list[dict], base: list[dict]) -> list[dict]:
    """The steps of ``steps`` beyond ``base`` (the same scenario without the episode), which must appear in
    ``steps`` whole and in order."""
    extra, rest = [], iter(base)
    want = next(rest, None)
    for step in steps:
        if step == want:
            want = next(rest, None)
        else:
            extra.append(step)
    assert want is None, f"a step of the scenario without the episode is missing: {want}"
    return extra
