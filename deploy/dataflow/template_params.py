"""The Flex Template's parameters, derived from the stages' own argparse flags.

One source of truth: every stage module ``pipelines/<stage>.py`` declares its
flags in ``add_arguments(parser)``. This module turns those declarations into

* Flex Template metadata (``metadata/<stage>.json``, written by
  ``make_metadata.py``): one parameter per flag, named by the flag's argparse
  ``dest`` (``--batch-size`` -> ``batch_size``, the snake_case Beam uses for
  its own options), ``isOptional`` from ``required``, ``regexes`` from the
  flag's type or ``choices``, ``helpText`` from ``help`` and ``default``;
* the launcher's translation (``launch.py``): Dataflow hands the launcher
  ``--batch_size=64 --overwrite=true ...``; :func:`to_stage_argv` rewrites
  those to the stage's own spelling (``--batch-size=64 --overwrite``) and
  leaves every other argument (``--runner``, ``--project``,
  ``--sdk_container_image``, ...) untouched for Beam.

A flag whose type this module does not know stops metadata generation with an
error naming the flag, so a new flag cannot silently lose its validation.

Standard library only (plus ``pipelines`` for the stage modules).
"""
from __future__ import annotations

import argparse
import importlib
import re

# Subcommands of ``dupmine`` that are not Beam pipelines, so have no template.
NOT_PIPELINES = {
    "run": "runs several pipelines one after another and must wait for each; launch the stages one by one "
           "(or schedule them with deploy/schedule)",
    "download": "wraps img2dataset on one machine; not a Beam pipeline",
    "report": "renders static HTML in plain Python; not a Beam pipeline",
    "demo": "builds a local synthetic dataset and runs the pipeline on it in-process",
    "train": "trains a small diffusion model with torch on one machine; not a Beam pipeline",
}

# The launcher image bakes the worker image it was built with into this
# variable (build.sh); it becomes --sdk_container_image unless the launch
# names another one (the GPU image, for example).
WORKER_IMAGE_ENV = "DUPMINE_WORKER_IMAGE"

INT_RE = r"^-?[0-9]+$"
POSITIVE_INT_RE = r"^[1-9][0-9]*$"
FLOAT_RE = r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$"
BOOL_RE = r"^(?:true|false)$"
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class UnsupportedFlag(ValueError):
    """A stage flag this module cannot describe as a template parameter."""


def _subcommands() -> dict:
    from pipelines.cli import SUBCOMMANDS

    return SUBCOMMANDS


def stage_module(stage: str):
    """The ``pipelines`` module behind ``dupmine <stage>``."""
    commands = _subcommands()
    if stage not in commands:
        raise ValueError(f"unknown stage {stage!r}; dupmine has {sorted(commands)}")
    return importlib.import_module(commands[stage][0])


def pipeline_stages() -> list[str]:
    """Every ``dupmine`` subcommand that runs a Beam pipeline, in CLI order."""
    return [name for name in _subcommands() if name not in NOT_PIPELINES]


def template_stages() -> list[str]:
    """Pipeline stages whose module declares its flags in ``add_arguments`` (the ones a template can expose)."""
    return [name for name in pipeline_stages() if hasattr(stage_module(name), "add_arguments")]


def stages_without_flags() -> list[str]:
    """Pipeline stages left out of the templates because their module has no ``add_arguments``."""
    return [name for name in pipeline_stages() if not hasattr(stage_module(name), "add_arguments")]


def stage_parser(stage: str) -> argparse.ArgumentParser:
    """The stage's own flag parser, built exactly as ``pipelines/<stage>.py`` builds it."""
    parser = argparse.ArgumentParser(prog=f"dupmine {stage}")
    stage_module(stage).add_arguments(parser)
    return parser


def stage_actions(stage: str) -> list[argparse.Action]:
    """The stage's flags (argparse actions), in declaration order, without ``--help``."""
    return [a for a in stage_parser(stage)._actions if not isinstance(a, argparse._HelpAction)]


def _long_option(action: argparse.Action) -> str:
    longs = [s for s in action.option_strings if s.startswith("--")]
    if not longs:
        raise UnsupportedFlag(f"{action.option_strings}: a template parameter needs a --long option")
    return longs[0]


def _is_flag(action: argparse.Action) -> bool:
    return isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction))


def _regexes(action: argparse.Action) -> list[str]:
    """Regexes a template value must match, from the flag's choices or type."""
    from pipelines.common import positive_int

    if _is_flag(action):
        return [BOOL_RE]
    if action.choices is not None:
        return ["^(?:" + "|".join(re.escape(str(c)) for c in action.choices) + ")$"]
    if action.type is None or action.type is str:
        return []
    if action.type is int:
        return [INT_RE]
    if action.type is positive_int:
        return [POSITIVE_INT_RE]
    if action.type is float:
        return [FLOAT_RE]
    raise UnsupportedFlag(f"{_long_option(action)}: type {action.type!r} has no template regex; "
                          f"add one to deploy/dataflow/template_params.py")


def _type_words(action: argparse.Action) -> str:
    from pipelines.common import positive_int

    if _is_flag(action):
        return "true or false"
    if action.choices is not None:
        return "one of " + ", ".join(str(c) for c in action.choices)
    return {int: "integer", positive_int: "positive integer", float: "number"}.get(action.type, "text")


def template_value(action: argparse.Action, value) -> str:
    """How ``value`` (an argparse default) is written as a template parameter."""
    if _is_flag(action):
        return "true" if value else "false"
    return str(value)


def _help_text(action: argparse.Action, prog: str) -> str:
    text = action.help % dict(vars(action), prog=prog) if action.help else _label(action.dest)
    parts = [text.rstrip(".") + ".", f"Flag {_long_option(action)} of {prog} ({_type_words(action)})."]
    if action.required:
        parts.append("Required.")
    elif _is_flag(action):
        parts.append(f"Default: {template_value(action, action.default)}.")
    elif action.default is not None and "%(default)" not in (action.help or ""):
        parts.append(f"Default: {action.default}.")
    return " ".join(parts)


def _label(dest: str) -> str:
    return dest.replace("_", " ").capitalize()


def parameter(action: argparse.Action, prog: str) -> dict:
    """One Flex Template parameter (Dataflow ``ParameterMetadata``) for one stage flag."""
    if action.nargs not in (None, 0) or not isinstance(action, (argparse._StoreAction, argparse._StoreTrueAction,
                                                                 argparse._StoreFalseAction,
                                                                 argparse.BooleanOptionalAction)):
        raise UnsupportedFlag(f"{_long_option(action)}: only single-valued flags and on/off flags can be template "
                              f"parameters (got {type(action).__name__}, nargs={action.nargs!r})")
    if not NAME_RE.match(action.dest):
        raise UnsupportedFlag(f"{_long_option(action)}: dest {action.dest!r} is not a valid parameter name")
    param = {
        "name": action.dest,
        "label": _label(action.dest),
        "helpText": _help_text(action, prog),
        "isOptional": not action.required,
    }
    regexes = _regexes(action)
    if regexes:
        param["regexes"] = regexes
    return param


def stage_parameter(stage: str) -> dict:
    """The ``stage`` parameter: which ``dupmine`` command the launcher runs (one allowed value per template)."""
    return {
        "name": "stage",
        "label": "Stage",
        "helpText": f"The dupmine command this template runs; must be {stage}.",
        "isOptional": False,
        "regexes": [f"^{re.escape(stage)}$"],
    }


def metadata(stage: str) -> dict:
    """The Flex Template metadata of one stage: its name, description and parameters (``stage`` first)."""
    module = stage_module(stage)
    summary = _subcommands()[stage][1]
    prog = f"dupmine {stage}"
    return {
        "name": f"dupmine {stage}",
        "description": f"dupmine {stage}: {summary}. Parameters are the flags of `{prog}` (snake_case); "
                       f"Beam and Dataflow options pass through unchanged. Source: {module.__name__}.",
        "streaming": False,
        "parameters": [stage_parameter(stage)] + [parameter(a, prog) for a in stage_actions(stage)],
    }


def split_stage(argv: list[str]) -> tuple[str, list[str]]:
    """``--stage NAME`` (required, one of :func:`template_stages`) and the remaining arguments."""
    parser = argparse.ArgumentParser(prog="launch.py", allow_abbrev=False)
    parser.add_argument("--stage", required=True, choices=template_stages())
    args, rest = parser.parse_known_args(argv)
    return args.stage, rest


def _parse_bool(option: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise ValueError(f"{option}={value!r}: expected true or false")
    return lowered == "true"


def to_stage_argv(stage: str, argv: list[str]) -> list[str]:
    """Rewrite template parameters (``--batch_size=64``) into the stage's flags (``--batch-size=64``).

    On/off flags arrive as ``--overwrite=true|false`` and become ``--overwrite``
    or nothing (``--increment_index=false``, a flag with a ``--no-`` form,
    becomes ``--no-increment-index``). The stage's own spelling (``--batch-size``) passes through as
    is, and so does every argument that is not one of the stage's parameters
    (Beam and Dataflow options), in its original order after the stage's flags.
    """
    actions = {a.dest: a for a in stage_actions(stage)}
    by_dest = argparse.ArgumentParser(prog=f"launch.py --stage {stage}", allow_abbrev=False, add_help=False)
    for dest in actions:
        by_dest.add_argument(f"--{dest}", dest=dest, default=argparse.SUPPRESS)
    given, rest = by_dest.parse_known_args(argv)
    out: list[str] = []
    for dest, value in vars(given).items():
        action = actions[dest]
        option = _long_option(action)
        if isinstance(action, argparse.BooleanOptionalAction):  # --name / --no-name: always explicit
            out.append(option if _parse_bool(f"--{dest}", value) else "--no-" + option[2:])
        elif _is_flag(action):
            wanted = _parse_bool(f"--{dest}", value)
            if wanted != bool(action.default):
                out.append(option)
        else:
            out.append(f"{option}={value}")
    return out + rest


def with_worker_image(argv: list[str], image: str | None) -> list[str]:
    """Add ``--sdk_container_image=image`` unless ``argv`` already names one (or no image is given)."""
    if not image or any(a == "--sdk_container_image" or a.startswith("--sdk_container_image=") for a in argv):
        return list(argv)
    return [*argv, f"--sdk_container_image={image}"]
