"""What keeps the command line's user errors to one line: argument types that check
their range, checks of output paths before any work, and the mapping from exceptions to
exit codes.

A user error (a bad flag, file or setting) prints ``dalle COMMAND: error: WHAT`` on
stderr and exits 2. An interrupt exits 128 + the signal number. Anything else is a bug:
one line asking for ``--debug``, which shows the traceback, and exit 1.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

import torch
from PIL import Image

from dalle.config import ConfigError
from dalle.data.images import UnreadableImage, load_image
from dalle.interrupts import Interrupted

# Exceptions that mean "the user asked for something that cannot be done" and carry a
# message that names what. OSError covers missing, unreadable and unwritable paths.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ValueError, OSError)
DEBUG_ENV = "DALLE_DEBUG"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``prog: error: message``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = _parse(int, text, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _parse(int, text, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value


def finite_float(text: str) -> float:
    """An argparse type: a float that is neither nan nor infinite."""
    value = _parse(float, text, "a number")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {value}")
    return value


def probability(text: str) -> float:
    """An argparse type: a number in (0, 1]."""
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {value}")
    return value


def _parse(kind: type, text: str, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}") from None


def check_output_file(path: Path, flag: str) -> None:
    """Fails now, before any work, if ``path`` cannot be written as an image file."""
    if path.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"{flag} {path}: name an image file (.png, .jpg, .webp)")
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; name an image file")
    _check_writable_folder(path.parent, flag, path)


def check_output_dir(path: Path, flag: str) -> None:
    """Fails now if ``path`` cannot be (or become) a folder that files are written to."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a folder")
    _check_writable_folder(path, flag, path)


def _check_writable_folder(folder: Path, flag: str, named: Path) -> None:
    """Creates ``folder`` if needed and writes (and removes) a probe file in it: the
    only check that also holds for root, read-only mounts and full disks."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except FileExistsError:
        raise ValueError(f"{flag} {named}: a part of that path is a file") from None
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(f"{flag} {named}: cannot write in {folder} ({reason})") from None


def read_image(path: Path, size: int, flag: str) -> torch.Tensor:
    """An image argument as uint8 ``[3, size, size]``; a bad one is a user error that
    names the flag and the file."""
    if not path.is_file():
        raise ValueError(f"{flag} {path}: no such file")
    try:
        return load_image(path, size)
    except UnreadableImage as err:
        raise ValueError(f"{flag} {path}: {err.reason}") from None


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def report(command: str, err: BaseException, debug: bool) -> int:
    """Prints ``err`` as the one line a user needs and returns the exit code (re-raising
    instead with ``debug``, for the traceback)."""
    if isinstance(err, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return err.exit_code if isinstance(err, Interrupted) else 130
    if debug:
        raise err
    if isinstance(err, USER_ERRORS):
        print(f"dalle {command}: error: {first_line(err)}", file=sys.stderr)
        return 2
    print(
        f"dalle {command}: internal error: {type(err).__name__}: {first_line(err)} "
        f"(run again with --debug or {DEBUG_ENV}=1 for the traceback, and please report it)",
        file=sys.stderr,
    )
    return 1


def first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """What every text-to-image command takes: captions, images per caption, outputs."""
    parser.add_argument("prompt", nargs="*", help="caption(s)")
    parser.add_argument("--prompts", type=Path, help="a file of prompts, one a line")
    parser.add_argument("--num", type=positive_int, default=8, help="images per prompt")
    parser.add_argument("--out", type=Path, help="grid PNG")
    parser.add_argument("--out-dir", type=Path, help="every image as NNNN.png + NNNN.txt")
    parser.add_argument("--batch-size", type=positive_int, default=16)
