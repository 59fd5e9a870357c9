"""What every dts program's options share: the parser (flag > DTS_* variable > config file >
default, usage errors in one line), the value types and the checks of values."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import configargparse

import dts
from dts.domain import MAX_LIMIT
from dts.errors import InvalidArgument
from dts.limits import LimitUnit, parse_size

ENV_PREFIX = "DTS_"
CONFIG_DIR = "/etc/dts"


def version() -> str:
    """dts's version: the installed package's, else the source tree's."""
    try:
        return importlib.metadata.version("dts")
    except importlib.metadata.PackageNotFoundError:
        return dts.__version__


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each option's help (not empty ones); the description and the epilog
    (examples) as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, "", False, [], ()):
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(configargparse.ArgumentParser):  # type: ignore[misc]
    """An argument parser whose usage errors are one line on stderr and exit code 2, and
    whose help ends with its epilog (examples), not configargparse's footer."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)

    def format_help(self) -> str:
        for action in self._actions:
            env = getattr(action, "env_var", None)
            tag = f" [env: {env}]"
            if env and action.help and action.help != argparse.SUPPRESS and tag not in action.help:
                action.help += tag
        return str(argparse.ArgumentParser.format_help(self))


def new_parser(
    prog: str, description: str, examples: str = "", more_config_files: Sequence[str] = ()
) -> ArgumentParser:
    """A dts program's parser: flag > DTS_* variable > config file > default; --version;
    help ending with how settings are found and `examples` (lines, indented as shown).
    `more_config_files` are read after the default one (and win over it) when they exist."""
    files = [f"{CONFIG_DIR}/{prog.removeprefix('dts-')}.conf", *more_config_files]
    shown = " and ".join(files)
    p = ArgumentParser(
        prog=prog,
        description=description,
        default_config_files=files,
        auto_env_var_prefix=ENV_PREFIX,
        args_for_setting_config_path=["-c", "--config"],
        config_arg_help_message=f"config file of key = value lines (default: {shown}, if found)",
        formatter_class=HelpFormatter,
        add_config_file_help=False,
        add_env_var_help=False,
        epilog=settings_note(shown) + (f"\n\nexamples:\n{examples}" if examples else ""),
    )
    add_version(p, prog)
    return p


def settings_note(files: str) -> str:
    return textwrap.fill(
        "Each --option can also be set as a DTS_* variable (shown as [env: ...]) or in a "
        f"config file ({files}, or -c FILE; key = value): a flag wins over a variable, a "
        "variable over a file.",
        width=88,
        break_on_hyphens=False,
    )


def checkout_client_conf() -> list[str]:
    """Where `make run` leaves the address of the cluster it started (.run/client.conf of
    the checkout dts runs from), for a plain dts-client there to find it; none for an
    installed dts (no Makefile beside the package)."""
    root = Path(dts.__file__).resolve().parent.parent
    return [str(root / ".run" / "client.conf")] if (root / "Makefile").is_file() else []


def add_version(p: argparse.ArgumentParser, prog: str) -> None:
    p.add_argument(
        "--version", action="version", version=f"{prog} {version()}", help="print the version"
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
