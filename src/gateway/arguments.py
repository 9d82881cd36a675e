"""argparse types shared by every `kanmon` command: a bad number is argparse's one-line
refusal (exit 2), never a traceback or a value the program then bends into range."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def whole_number(unit: str, least: int, most: int | None = None) -> Callable[[str], int]:
    """A type for `--option N`: an integer of `unit`s from `least` to `most`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"a whole number of {unit}, not {text!r}") from None
        if value < least or (most is not None and value > most):
            bounds = f"from {least} to {most}" if most is not None else f"{least} or more"
            raise argparse.ArgumentTypeError(f"{unit}: {bounds}, not {value}")
        return value

    return parse
