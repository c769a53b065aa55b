"""Typed configs: dataclasses <-> command-line flags and TOML files.

A config is a plain ``@dataclass`` whose fields are declared with :func:`option`. The CLI
turns every field into a ``--dashed-name`` flag whose help shows its default; ``--config
file.toml`` may set any field (unknown keys are an error) and flags given on the command
line win over the file. Fields are validated by the dataclass's ``validate()`` method.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable

from aigc.errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")  # see aigc.devices.resolve_device
GIVEN = "_given_options"  # attribute of a built config: the names of the options the user set

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def option(default: Any, help: str, *, choices: typing.Sequence[str] | None = None,
           parse: Callable[[str], Any] | None = None, minimum: float | None = None, maximum: float | None = None,
           allow_inf: bool = False) -> Any:
    """Declare a config field with its help text (and optionally choices, a parser, or a range).

    Every field also obeys the rules of :func:`check_fields`: a float is never NaN and is finite
    unless ``allow_inf``; an int fits in 64 bits; a number lies in [``minimum``, ``maximum``]."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "parse": parse,
                                                        "minimum": minimum, "maximum": maximum,
                                                        "allow_inf": allow_inf})


def parse_duration(text: str) -> float:
    """'90s', '2m', '1.5h' or a plain number of seconds -> seconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(text))
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 2m, 1h)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """The evaluated annotations of a config class. Once per class: ``typing.get_type_hints``
    compiles every string annotation anew, and per field that made building the CLI's parser
    take 0.6 s (on a 2-core AVX2 EPYC) before any command ran."""
    return typing.get_type_hints(cls)


def _field_type(cls: type, field: dataclasses.Field) -> tuple[type, bool]:
    """The field's base type and whether it may be None (``int | None`` -> (int, True))."""
    hint = _type_hints(cls)[field.name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        (base,) = [a for a in args if a is not type(None)]
        return base, True
    return hint, False


def _converter(cls: type, field: dataclasses.Field) -> Callable[[Any], Any]:
    """A function turning a flag string or a TOML value into the field's type."""
    base, optional = _field_type(cls, field)
    parse = field.metadata.get("parse")

    def convert(value: Any) -> Any:
        if optional and (value is None or (isinstance(value, str) and value.lower() == "none")):
            return None
        if parse is not None:
            return parse(value)
        if typing.get_origin(base) is list:  # a repeatable flag, or a TOML array
            (item,) = typing.get_args(base)
            if not isinstance(value, list):
                raise ValueError(f"not a list: {value!r}")
            for element in value:
                _check_toml_type(item, element)
            return [item(v) for v in value]
        if not isinstance(value, str):  # a TOML value: it has a type of its own, which must be the field's
            _check_toml_type(base, value)
        if base is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes", "on"):
                return True
            if str(value).lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if base is float and isinstance(value, str):
            return float(value)
        if base is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"not an integer: {value!r}")
        return base(value)

    return convert


def _check_toml_type(base: type, value: Any) -> None:
    """A TOML value given for a field of type ``base``: refuse a type it cannot mean (``steps = true``)."""
    wanted = {bool: (bool,), int: (int, float), float: (int, float), str: (str,)}.get(base)
    if wanted is None:
        return
    if isinstance(value, bool) and base is not bool or not isinstance(value, wanted):
        names = {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string"}
        raise ValueError(f"expected {names[base]}, got {type(value).__name__} {value!r}")


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def format_default(value: Any) -> str:
    """A default as --help shows it: strings with edge whitespace (e.g. a newline) quoted."""
    if isinstance(value, str) and (not value or value.strip() != value):
        return repr(value).replace("%", "%%")
    return str(value).replace("%", "%%")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per field of ``cls`` (defaults are SUPPRESSed so we see what was given)."""
    parser.add_argument("--config", metavar="FILE.toml", default=argparse.SUPPRESS,
                        help="read any of these options from a TOML file; flags win")
    groups: dict[type, Any] = {cls: parser}  # a shared option group's flags under its own heading
    for field in dataclasses.fields(cls):
        owner = declaring_class(cls, field.name)
        if owner not in groups:
            groups[owner] = parser.add_argument_group((owner.__doc__ or owner.__name__).strip().splitlines()[0])
        base, _ = _field_type(cls, field)
        meta = field.metadata
        help_text = meta.get("help", "")
        if "default" not in help_text and "required" not in help_text:
            help_text += f" (default: {format_default(field.default)})"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text, "dest": field.name}
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is list:  # ``list[str]``: the flag may be given several times
            kwargs["action"] = "append"
            kwargs["metavar"] = field.name.upper()
        else:
            kwargs["type"] = _argparse_type(cls, field)
            kwargs["metavar"] = field.name.upper()
            if meta.get("choices"):
                kwargs["choices"] = list(meta["choices"])
                kwargs["metavar"] = "{" + ",".join(meta["choices"]) + "}"
        groups[owner].add_argument(flag_name(field.name), **kwargs)


def declaring_class(cls: type, name: str) -> type:
    """The class in ``cls``'s hierarchy that declares the field ``name`` last (itself, or a shared
    option group such as ``aigc.training.options.RunOptions``)."""
    return next(klass for klass in cls.__mro__ if name in klass.__dict__.get("__annotations__", {}))


def _argparse_type(cls: type, field: dataclasses.Field) -> Callable[[str], Any]:
    convert = _converter(cls, field)

    def typed(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    typed.__name__ = _field_type(cls, field)[0].__name__
    return typed


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"cannot read config file {path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read config file {path}: {exc}") from None
    # Accept dashed keys too, as they appear on the command line.
    return {key.replace("-", "_"): value for key, value in data.items()}


def build_config(cls: type, given: dict[str, Any]) -> Any:
    """Defaults < TOML file (``given['config']``) < flags. Unknown TOML keys are an error."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if "config" in given:
        for key, value in load_toml(given["config"]).items():
            if key not in fields:
                raise UserError(f"unknown option {key!r} in {given['config']}")
            try:
                values[key] = _converter(cls, fields[key])(value)
            except (TypeError, ValueError) as exc:
                raise UserError(f"bad value for {key!r} in {given['config']}: {exc}") from None
            choices = fields[key].metadata.get("choices")
            if choices and values[key] not in choices:
                raise UserError(f"bad value for {key!r} in {given['config']}: choose from {', '.join(choices)}")
    values.update({k: v for k, v in given.items() if k in fields})
    config = cls(**values)
    object.__setattr__(config, GIVEN, frozenset(values))  # what the user set, for resumed()
    return checked(config)


INT64_MIN, INT64_MAX = -2**63, 2**63 - 1
SEED_MAX = 2**32 - 1  # recipes derive seeds (seed * 1_000_003 + i) that must stay within torch's 64 bits


def check_fields(config: Any) -> None:
    """The rules every config field obeys, before its class's own ``validate()``: a float is a
    number (never NaN) and finite unless its option allows infinity; an int fits in 64 bits (torch
    takes nothing larger); a number lies in its option's [minimum, maximum], and a ``seed`` in
    [0, 2**32)."""
    for field in dataclasses.fields(config):
        value, meta, flag = getattr(config, field.name), field.metadata, flag_name(field.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float):
            require(not math.isnan(value), f"{flag} must be a number, got nan")
            require(math.isfinite(value) or meta.get("allow_inf", False), f"{flag} must be finite, got {value}")
        else:
            require(INT64_MIN <= value <= INT64_MAX, f"{flag} {value} does not fit in 64 bits")
        low, high = meta.get("minimum"), meta.get("maximum")
        if field.name == "seed" and low is None and high is None:
            low, high = 0, SEED_MAX
        if low is not None or high is not None:
            range_text = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
            require((low is None or value >= low) and (high is None or value <= high),
                    f"{flag} must be in {range_text}, got {value}")


def checked(config: Any) -> Any:
    """``config`` checked as :func:`build_config` checks what the command line gives (the rules of
    :func:`check_fields`, then the class's ``validate()``): recipes call it so that a config made in
    Python (``train(GanTrainConfig(steps=0))``) is refused with the same message as the flag."""
    check_fields(config)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def resumed(given: Any, saved: dict[str, Any], may_change: Callable[[str], bool]) -> Any:
    """The config to resume a run with: its saved settings (``saved``, the config it was started
    with) overridden by those set now (on the command line or in a TOML file; for a config made
    in Python, those that differ from their defaults). Changing a setting that ``may_change``
    refuses (one that defines the run: model shape, data, seed...) is an error."""
    set_now = getattr(given, GIVEN, None)
    values = {}
    for field in dataclasses.fields(given):
        now, before = getattr(given, field.name), saved.get(field.name, field.default)
        was_set = field.name in set_now if set_now is not None else now != field.default
        changed = was_set and now != before
        if changed and not may_change(field.name):
            raise UserError(f"cannot resume with {flag_name(field.name)} {now}: the run was trained with {before}")
        values[field.name] = now if changed else before
    return type(given)(**{**values, "resume": True, "out": given.out})


def require(condition: bool, message: str) -> None:
    """Raise a UserError with ``message`` unless ``condition`` holds (for ``validate()``)."""
    if not condition:
        raise UserError(message)
