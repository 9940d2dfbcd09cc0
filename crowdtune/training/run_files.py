"""Run files: a training run's settings as TOML, for `crowdtune train offline|online --config run.toml`.

    RunRequest                         what a run file holds: kind, face, the typed config (and the offline
                                       run's base model and parent version)
    run_file_text(request) -> str      the TOML the Training page offers for download
    parse_run_file(text, kind, ...)    RunRequest, or SettingsError naming the bad field and the fix
    read_run_file(path, kind, ...)     the same from a file

An offline file's [settings] are SFTConfig's, an online file's OnlineConfig's (with its nested tables,
[settings.algorithm_settings] ...): the same typed configs the form, the CLI's --set and the jobs read.
TOML has no null, so the string "none" stands for None wherever a setting may be None (`grad_clip = "none"`
turns clipping off). Free of torch: the dashboard writes these files.

    kind = "offline"
    face = "tweets"
    base_model = "smollm2-135m"

    [settings]
    learning_rate = 0.0002
    max_steps = "none"
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from crowdtune.errors import SettingsError
from crowdtune.online.controller import OnlineConfig
from crowdtune.training.configs import GenerationConfig, SFTConfig
from crowdtune.training.rl.configs import ALGORITHMS, DEFAULT_ALGORITHM

NONE = "none"  # a run file's None (TOML has no null)


class RunKind(StrEnum):
    OFFLINE = "offline"
    ONLINE = "online"


CONFIGS: dict[RunKind, type[BaseModel]] = {RunKind.OFFLINE: SFTConfig, RunKind.ONLINE: OnlineConfig}
# the top-level keys of each kind of file, and what they mean
TOP_KEYS = {
    RunKind.OFFLINE: {"kind": "offline", "face": "the face to train on (--face overrides it)",
                      "base_model": "the base model (--base-model overrides it)",
                      "parent_version": "the version the run continues from", "settings": "SFTConfig settings"},
    RunKind.ONLINE: {"kind": "online", "face": "the face to train online (--face overrides it)",
                     "settings": "OnlineConfig settings"},
}


@dataclass
class RunRequest:
    """One run as a run file says it: `config` is an SFTConfig (offline) or an OnlineConfig (online, whose
    base_model is one of its settings); base_model and parent_version are the offline run's."""

    kind: RunKind
    config: BaseModel
    face: str | None = None
    base_model: str | None = None
    parent_version: str | None = None


# --------------------------------------------------------------------------------------------
# Writing


def run_file_text(request: RunRequest) -> str:
    """The run file of `request`: every setting, None written as "none"; parse_run_file reads it back equal."""
    model = CONFIGS[request.kind]
    lines = [f"# Crowdtune {request.kind} run: `crowdtune train {request.kind} --config THIS_FILE`.",
             f"# [settings] are {model.__name__}'s (`crowdtune config-docs {model.__name__}`); TOML has no null:",
             f'# "{NONE}" stands for None.',
             f"kind = {_value(str(request.kind))}"]
    top = {"face": request.face}
    if request.kind is RunKind.OFFLINE:
        top |= {"base_model": request.base_model, "parent_version": request.parent_version}
    lines += [f"{key} = {_value(value)}" for key, value in top.items() if value is not None]
    lines += _table("settings", request.config.model_dump())  # Python values: inf stays inf
    return "\n".join(lines) + "\n"


def _table(name: str, values: dict) -> list[str]:
    """`[name]` with the plain values first, then each non-empty dict as a table of its own."""
    lines = ["", f"[{name}]"]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in values.items() if not (isinstance(v, dict) and v)]
    for key, value in values.items():
        if isinstance(value, dict) and value:
            lines += _table(f"{name}.{_key(key)}", value)
    return lines


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _string(key)


def _string(text: str) -> str:
    # JSON's escapes are TOML's, except that TOML also refuses a raw DEL
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: Any) -> str:
    if value is None:
        return _string(NONE)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"a run file cannot hold {type(value).__name__} values")


# --------------------------------------------------------------------------------------------
# Reading


def read_run_file(path: Path, kind: RunKind | str, overrides: dict | None = None) -> RunRequest:
    """parse_run_file of the file at `path`; SettingsError when it cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(f"There is no run file {str(path)!r}.",
                            "Give the path of a TOML file, e.g. one downloaded from the Training page.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"The run file {str(path)!r} cannot be read: {exc}.",
                            "Give a readable UTF-8 TOML file.") from None
    return parse_run_file(text, kind, source=str(path), overrides=overrides)


def parse_run_file(text: str, kind: RunKind | str, source: str = "the run file",
                   overrides: dict | None = None, section: str = "settings.") -> RunRequest:
    """The RunRequest of a run file's `text` for a run of `kind`, with `overrides` (the CLI's --set, nested
    dicts merged) on top of its [settings]. Raises SettingsError naming the file, the bad field and the fix:
    bad TOML (with its line), an unknown key (with the nearest known one), a value of the wrong type or
    range, a file of the other kind. Fields are named as `section` + the setting's name."""
    kind = RunKind(kind)
    model = CONFIGS[kind]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{source} is not valid TOML: {exc}.", 'Fix that line: one `key = value` per line, '
                            'text in "quotes", lists in [brackets].') from None
    _unknown(data, TOP_KEYS[kind], source, "", f"{kind.capitalize()} run files hold only {', '.join(TOP_KEYS[kind])}.")
    said = data.get("kind", str(kind))
    if said != kind:
        raise SettingsError(f"{source} says kind = {said!r}, but `crowdtune train {kind}` reads it.",
                            f"Use `crowdtune train {said} --config {source}`, or set kind = \"{kind}\" in it."
                            if said in [k.value for k in RunKind] else f'Set kind = "{kind}" in {source}.')
    for key in ("face", "base_model", "parent_version"):
        if key in data and not isinstance(data[key], str):
            raise SettingsError(f"{source}: {key} must be text, not {data[key]!r}.",
                                f'Write it in quotes, e.g. {key} = "name".')
    settings = data.get("settings", {})
    if not isinstance(settings, dict):
        raise SettingsError(f"{source}: settings must be a table, not {settings!r}.",
                            f"Write the settings under a [settings] line, as `crowdtune config-docs {model.__name__}` "
                            "lists them.")
    values = _nones(_merged(settings, overrides or {}), model)
    _unknown(values, model.model_fields, source, section,
             f"`crowdtune config-docs {model.__name__}` lists every setting and its default.")
    try:
        config = model(**values)
    except ValidationError as exc:
        problems = [_problem(error, section) for error in exc.errors()]
        where = problems[0][0]
        raise SettingsError(f"{source}: " + "; ".join(f"{w}: {m}" for w, m in problems) + ".",
                            f"Fix {where} in {source}; `crowdtune config-docs {model.__name__}` lists every setting, "
                            "its type and its default.") from None
    face, base_model, parent = (_none(data.get(k)) for k in ("face", "base_model", "parent_version"))
    return RunRequest(kind, config, face, base_model, parent)


def _none(value):
    return None if value == NONE else value


def _problem(error: dict, section: str) -> tuple[str, str]:
    """(the field as the file names it, what is wrong with the value given) of one pydantic error."""
    where = section + ".".join(map(str, error["loc"])) if error["loc"] else section.rstrip(".") or "the settings"
    message = error["msg"].removeprefix("Value error, ")
    if error.get("type") != "value_error" and "input" in error and not isinstance(error["input"], dict):
        message += f" (got {error['input']!r})"
    return where, message


def _unknown(values: dict, known, source: str, prefix: str, fix: str) -> None:
    unknown = [key for key in values if key not in known]
    if unknown:
        near = difflib.get_close_matches(unknown[0], list(known), n=1)
        hint = f"did you mean {prefix}{near[0]}? " if near else ""
        raise SettingsError(f"{source}: there is no setting {prefix}{unknown[0]}"
                            + (f" (nor {', '.join(prefix + k for k in unknown[1:])})" if unknown[1:] else "") + ".",
                            f"Remove it or correct its name: {hint}{fix}")


def _merged(base: dict, top: dict) -> dict:
    """`top` over `base`, nested dicts merged key by key."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _nested_models(model: type[BaseModel], values: dict) -> dict[str, type[BaseModel]]:
    """The typed config behind each free dict setting of `model` (OnlineConfig's algorithm_settings ...)."""
    if model is not OnlineConfig:
        return {}
    from crowdtune.training.rl.rewards import RewardConfig

    algorithm = ALGORITHMS.get(values.get("algorithm", DEFAULT_ALGORITHM))
    nested = {"reward": RewardConfig, "generation": GenerationConfig, "offline": SFTConfig}
    return nested | ({"algorithm_settings": algorithm} if algorithm is not None else {})


def _admits_none(annotation) -> bool:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return type(None) in typing.get_args(annotation)
    return annotation is type(None)


def _nones(values: dict, model: type[BaseModel]) -> dict:
    """`values` with "none" as None wherever `model` lets a setting be None (and inside its typed dicts)."""
    nested = _nested_models(model, values)
    out = {}
    for key, value in values.items():
        field = model.model_fields.get(key)
        if value == NONE and field is not None and _admits_none(field.annotation):
            value = None
        elif isinstance(value, dict) and key in nested:
            value = _nones(value, nested[key])
        out[key] = value
    return out
