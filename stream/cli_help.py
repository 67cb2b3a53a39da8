"""What every command line of the project shares: help text, log levels, a closed stdout.

Used by ``python -m stream`` and ``python -m producers``; imports nothing of the project.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator

__all__ = [
    "LOG_LEVELS",
    "HelpFormatter",
    "finish_parser",
    "parse_log_level",
    "stdout_may_close",
    "subparsers",
]

LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# What a process killed by SIGPIPE exits with (128 + 13), as `yes | head` does.
_BROKEN_PIPE_EXIT = 141


class HelpFormatter(argparse.HelpFormatter):
    """Appends an option's default to its help, unless it has none or the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or "default" in text.lower()
        ):
            return action.help
        shown = ",".join(str(v) for v in default) if isinstance(default, tuple) else "%(default)s"
        return f"{text} (default: {shown})" if text else f"default: {shown}"


def subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[argparse.ArgumentParser, str]]:
    """Every sub-command parser below ``parser`` (depth first), with its one-line help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield sub, helps.get(name, "")
                yield from subparsers(sub)


def finish_parser(parser: argparse.ArgumentParser, *, log_level_flag: bool = False) -> None:
    """Give every sub-command a description (its one-line help) and show option defaults.

    With ``log_level_flag``, ``--log-level`` is accepted after any sub-command too (the
    top-level parser must define it with ``dest="log_level"``); given there, it wins.
    """
    parser.formatter_class = HelpFormatter
    for sub, help_ in subparsers(parser):
        sub.formatter_class = HelpFormatter
        if not sub.description and help_:
            sub.description = help_[0].upper() + help_[1:] + "."
        if log_level_flag:
            sub.add_argument(
                "--log-level",
                dest="log_level",
                default=argparse.SUPPRESS,
                metavar="LEVEL",
                help=f"{', '.join(LOG_LEVELS)} [env STREAM_LOG_LEVEL]",
            )


def parse_log_level(flag: str | None, env: dict[str, str] | os._Environ[str]) -> int:
    """The logging level from ``--log-level`` or else ``STREAM_LOG_LEVEL`` (default INFO).

    Raises
    ------
    ValueError
        Not a level name; the message names where the value came from.

    >>> parse_log_level("debug", {}) == logging.DEBUG
    True
    """
    if flag is not None:
        value, source = flag, "--log-level"
    else:
        value, source = env.get("STREAM_LOG_LEVEL", "INFO"), "STREAM_LOG_LEVEL"
    name = value.strip().upper()
    if name == "WARN":
        name = "WARNING"
    if name not in LOG_LEVELS:
        sep = " " if source.startswith("--") else "="
        raise ValueError(f"{source}{sep}{value!r} is not a log level: use {', '.join(LOG_LEVELS)}")
    return int(getattr(logging, name))


def stdout_may_close(run: Callable[[], int]) -> int:
    """``run()``, ending quietly with exit status 141 when stdout's reader went away
    (``python -m stream settings | head``) instead of a ``BrokenPipeError`` traceback."""
    try:
        code = run()
        sys.stdout.flush()  # output still buffered fails here, not at interpreter exit
        return code
    except BrokenPipeError:
        # Point stdout at /dev/null so that the interpreter's own last flush cannot fail again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return _BROKEN_PIPE_EXIT
