"""What every dts program's options share: the parser (flag > DTS_* variable > config file >
default, usage errors in one line), the value types and the checks of values."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import configargparse

from dts.domain import MAX_LIMIT
from dts.errors import InvalidArgument
from dts.limits import LimitUnit, parse_size

ENV_PREFIX = "DTS_"
CONFIG_DIR = "/etc/dts"


class ArgumentParser(configargparse.ArgumentParser):  # type: ignore[misc]
    """An argument parser whose usage errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def new_parser(prog: str, description: str) -> ArgumentParser:
    return ArgumentParser(
        prog=prog,
        description=description,
        default_config_files=[f"{CONFIG_DIR}/{prog.removeprefix('dts-')}.conf"],
        auto_env_var_prefix=ENV_PREFIX,
        args_for_setting_config_path=["-c", "--config"],
        config_arg_help_message="config file (key = value lines; missing default files are fine)",
        formatter_class=configargparse.ArgumentDefaultsHelpFormatter,
    )


def size_arg(text: str) -> int:
    """An argparse type: bytes, with K, M, G or T (binary) allowed."""
    try:
        value = parse_size(text)
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value > MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"size too large: {text!r}")
    return value


def count_arg(text: str) -> int:
    """An argparse type: a whole number from 0 on."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_LIMIT}, got {value}")
    return value


def limit_arg(unit: LimitUnit) -> Callable[[str], int]:
    """The argparse type of a resource limit (dts.limits.LIMITS) of `unit`."""
    return size_arg if unit is LimitUnit.SIZE else count_arg


def parse(parser: ArgumentParser, argv: Sequence[str] | None, env: Mapping[str, str] | None) -> Any:
    return parser.parse_args(
        args=list(argv) if argv is not None else None,
        env_vars=dict(env) if env is not None else os.environ,
    )


def positive(name: str, value: float) -> None:
    if not value > 0:
        raise InvalidArgument(f"{name} must be greater than 0, got {value}")


def non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise InvalidArgument(f"{name} must not be negative, got {value}")
