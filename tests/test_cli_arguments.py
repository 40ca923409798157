"""Every command's ``--help`` says what each option is, and a bad value is an argument error naming
the option and what it takes (exit 2), never a traceback or a config Envoy would refuse later."""

from __future__ import annotations

import argparse

import pytest

from zpilot.cli import build_parser
from zpilot.logs import FIELDS


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, (*path, name))


def test_every_option_of_every_command_has_help():
    undocumented = [
        f"zpilot {' '.join(path)} {action.option_strings[-1]}"
        for path, parser in _commands(build_parser())
        for action in parser._actions
        if action.option_strings and not action.help
    ]
    assert undocumented == []


def test_the_log_format_help_names_every_json_field():
    [log_format] = [a for a in build_parser()._actions if "--log-format" in a.option_strings]
    assert all(field in log_format.help for field in FIELDS), log_format.help


@pytest.mark.parametrize(("argv", "message"), [
    (["bootstrap", "--node", "n", "--xds", "127.0.0.1:15010", "--admin-port", "99999"],
     "argument --admin-port: 99999 is not a port number from 0 to 65535"),
    (["serve", "--manifests", "m", "--debug-port", "http"], "argument --debug-port: 'http' is not a port number"),
    (["bootstrap", "--node", "n", "--xds", "127.0.0.1:15010", "--credential-lifetime", "inf"],
     "argument --credential-lifetime: 'inf': must be a finite number of seconds, more than zero"),
    (["diff", "--envoy-admin", "http://127.0.0.1:15000", "--timeout", "nan"],
     "argument --timeout: 'nan': must be a finite number of seconds, more than zero"),
    (["render", "--manifests", "m", "--node", "n", "--idle-timeout", "-1"],
     "argument --idle-timeout: '-1': must be a finite number of seconds, zero or more and at most 31536000"),
    (["render", "--manifests", "m", "--node", "n", "--max-requests", "0"],
     "argument --max-requests: 0 is not a whole number from 1 to"),
    (["serve", "--manifests", "m", "--max-streams", "many"], "argument --max-streams: 'many' is not a whole number"),
    (["cni", "plan", "--node", "n", "--manifests", "m", "--mtu", "big"],
     "argument --mtu: 'big' is not an MTU (a whole number of bytes)"),
])
def test_a_bad_value_is_an_argument_error_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args(argv)
    assert exit.value.code == 2
    assert message in capsys.readouterr().err
