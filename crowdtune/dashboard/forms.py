"""Streamlit form fields drawn from a pydantic config model, so the UI asks for exactly what the
jobs and the CLI read (SFTConfig, GenerationConfig, a face's Config) with the same defaults.

`config_fields` draws one input per model field inside the caller's `st.form` and returns the raw
values; `validate_config` turns them into the model or a list of readable problems. Help text is
the field's description (`Field(8, description=...)`), the one place a config explains a setting.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ValidationError


def _options(annotation) -> tuple[list, bool]:
    """The non-None members of a union annotation, and whether None is allowed."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = list(typing.get_args(annotation))
        return [a for a in args if a is not type(None)], type(None) in args
    return [annotation], False


def field_help(model: type[BaseModel], name: str) -> str | None:
    """The help text of field `name`: its description (None when it has none)."""
    return model.model_fields[name].description


def _default(field) -> Any:
    return field.get_default(call_default_factory=True)


def config_fields(model: type[BaseModel], key_prefix: str, columns: int = 3, disabled: bool = False) -> dict[str, Any]:
    """Draw an input for every field of `model` (call inside an st.form); return {name: raw value}.

    Simple types get typed inputs (checkbox, number, select for Literal); optional values and
    anything else get a text box where blank means None and JSON is accepted for lists and dicts.
    """
    import streamlit as st

    values: dict[str, Any] = {}
    grid = st.columns(columns)
    for index, (name, field) in enumerate(model.model_fields.items()):
        members, optional = _options(field.annotation)
        default = _default(field)
        key = f"{key_prefix}_{name}"
        label = name.replace("_", " ")
        help_text = field_help(model, name)
        with grid[index % columns]:
            kind = members[0] if len(members) == 1 else None
            if kind is bool and not optional:
                values[name] = st.checkbox(label, **_initial(st, key, bool(default)), key=key, help=help_text,
                                           disabled=disabled)
            elif typing.get_origin(kind) is Literal and not optional:
                choices = list(typing.get_args(kind))
                values[name] = st.selectbox(label, choices, index=choices.index(default) if default in choices else 0,
                                            key=key, help=help_text, disabled=disabled)
            elif kind is int and not optional:
                values[name] = st.number_input(label, **_initial(st, key, int(default)), step=1, key=key,
                                               help=help_text, disabled=disabled)
            elif kind is float and not optional:
                values[name] = st.number_input(label, **_initial(st, key, float(default)), format="%g", key=key,
                                               help=help_text, disabled=disabled)
            elif kind is str and not optional:
                values[name] = st.text_input(label, value=default or "", key=key, help=help_text, disabled=disabled)
            else:
                shown = "" if default is None else (default if isinstance(default, str) else json.dumps(default))
                text = st.text_input(label, value=shown, key=key, disabled=disabled,
                                     help=(help_text or "") + " (blank = none; lists as JSON)")
                values[name] = _parse_loose(text, members, optional)
    return values


def _initial(st, key: str, default: Any) -> dict[str, Any]:
    """The `value` argument of a widget: its default, unless the page already set the widget's value
    (a default that follows another choice, e.g. the online form's time acceleration follows the face)."""
    return {} if key in st.session_state else {"value": default}


def _parse_loose(text: str, members: list, optional: bool) -> Any:
    text = text.strip()
    if not text:
        return None if optional else ""
    if text[0] in "[{":
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text  # pydantic coerces "3" to int and "0.5" to float where the field wants numbers


def validate_config(model: type[BaseModel], values: dict[str, Any]) -> tuple[BaseModel | None, list[str]]:
    """The validated model, or None and one 'field: problem' line per invalid value."""
    try:
        return model(**values), []
    except ValidationError as exc:
        return None, [f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()]

