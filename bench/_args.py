"""Argument types shared by the benchmark scripts, with errors that name the fix."""

from __future__ import annotations

import argparse
from pathlib import Path


def _whole_number(text: str, minimum: int) -> int:
    """Parse a whole number of at least ``minimum``."""
    try:
        number = int(text)
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected a whole number of at least {minimum}"
        )
    return number


def positive_int(text: str) -> int:
    """Parse a whole number of at least 1."""
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """Parse a whole number of at least 0."""
    return _whole_number(text, 0)


def positive_seconds(text: str) -> float:
    """Parse a number of seconds above 0."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected seconds above 0"
        ) from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(
            f"invalid value {seconds}: expected seconds above 0"
        )
    return seconds


def non_negative_seconds(text: str) -> float:
    """Parse a number of seconds of at least 0."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected seconds of at least 0"
        )
    return seconds


def positive_ints(text: str) -> list[int]:
    """Parse comma-separated whole numbers of at least 1."""
    return [positive_int(part.strip()) for part in text.split(",")]


def check_output(parser: argparse.ArgumentParser, path: Path) -> None:
    """Stop with a usage error unless ``path`` can be written after the run."""
    directory = path.resolve().parent
    if not directory.is_dir():
        parser.error(
            f"argument --output: directory {directory} not found; "
            "create it or give another path"
        )
