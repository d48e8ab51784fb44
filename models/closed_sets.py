"""Closed sets of strings as enums: one parser whose error lists every accepted form."""
from __future__ import annotations

import enum


def choice(enum_type: type[enum.Enum], value, what: str | None = None) -> enum.Enum:
    """``value`` (a member or its string) as a member of ``enum_type``; the error lists every accepted form.

    ``what`` names the setting in the error (default: the enum's class name).
    """
    try:
        return enum_type(value)
    except ValueError:
        accepted = ", ".join(m.value for m in enum_type)
        raise ValueError(f"{value!r} is not a {what or enum_type.__name__}; expected one of: {accepted}") from None
