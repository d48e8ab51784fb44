"""Checks that a stage's flags are exactly its config dataclass's fields, with its defaults."""
import argparse
from dataclasses import fields


def parse_stage_flags(add_arguments, config_cls, argv: list[str]):
    """Parse ``argv`` with the stage's flags; assert flag names == config fields; return the parser's namespace."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert {a.dest for a in parser._actions if a.dest != "help"} == {f.name for f in fields(config_cls)}
    return parser.parse_args(argv)
