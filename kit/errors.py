"""User errors: one line that says what to fix, not a traceback.

A mistake in what you give a command (a data row, a recipe, a knob's value, a model name, a
missing or damaged file) is a *user error*: its message says what is wrong, where, what is
allowed and how to fix it. The kit raises them as ValueError (the kit's convention since its
first function), as one of the UserError types below, or as FileNotFoundError; an OSError
about a path you gave (not there, not a folder, not yours) is one too.

    @command                      # on a command's entry point main(argv) -> exit code
    def main(argv): ...

`command` prints a user error as one line, `error: <message>`, on stderr and returns 2.
Anything else is a bug and keeps its traceback; so does a ValueError raised inside a
library (torch, transformers, ...) rather than by a line of the kit. (One a kit line makes
Python raise, a bad unpacking say, reads as a user error.) `--debug`, anywhere on the
command line, shows the traceback of a user error too; `reported` does the same for a
function that takes no argv (kit.commands.gpu_check.main).
"""
from __future__ import annotations

import functools
import sys
import traceback
from pathlib import Path

KIT = Path(__file__).resolve().parent
PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError)
_debug = False  # --debug was given to the command running now


class UserError(ValueError):
    """What the user gave cannot be used; the message says what, where and the fix."""


class DataError(UserError):
    """A row of the user's data cannot be used (kit.engine.formats names its file and line)."""


def _raised_by_the_kit(error: BaseException) -> bool:
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(KIT)


def is_user_error(error: BaseException) -> bool:
    """A UserError anywhere; a path that is not there or not yours (an OSError naming its
    file); or a ValueError / FileNotFoundError that a line of the kit raised."""
    if isinstance(error, UserError):
        return True
    if isinstance(error, PATH_ERRORS) and error.filename:
        return True
    return isinstance(error, (ValueError, FileNotFoundError)) and _raised_by_the_kit(error)


def one_line(error: BaseException) -> str:
    """The error's message on one line (a YAML parser's message, say, spans several)."""
    if isinstance(error, PATH_ERRORS) and error.filename:
        return (f"{error.strerror}: {str(error.filename)!r}. Check the path, and that you may "
                "read and write there.")
    return " ".join(str(error).split()) or type(error).__name__


def reported(fn):
    """Decorator: a user error raised by `fn` is printed as `error: <message>` on stderr and
    `fn` returns 2 (with --debug, after the traceback); any other error propagates."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            if not is_user_error(error):
                raise
            if _debug:
                traceback.print_exc()
            print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
            return 2
    return wrapped


def command(main):
    """Decorator for a command's entry point `main(argv) -> exit code`: takes `--debug` out
    of argv (sys.argv[1:] if None), then reports user errors as `reported` does."""
    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        global _debug
        argv = list(sys.argv[1:] if argv is None else argv)
        outer, _debug = _debug, _debug or "--debug" in argv   # a nested command keeps it
        try:
            return reported(main)([a for a in argv if a != "--debug"])
        finally:
            _debug = outer
    return wrapped
