"""Options: how a setting is declared once, then read from flags, environment and a TOML file.

A settings tree is frozen dataclasses whose fields are made by three helpers:

- ``option(key, cast, default=... | text=... | derive=..., help=...)``: a value a
  user sets. ``key`` is its name in the TOML file, ``SLUICE_`` + ``KEY`` its
  environment variable, ``--key-with-dashes`` its flag. The default is the
  dataclass field's own default, the only place it is written; ``text="72h"``
  writes it as a user would and lets ``cast`` read it, and ``derive`` computes it
  at load time from the machine or from options declared before it.
- ``section(cls)``: a group of options (``Settings.warmup``).
- ``table(key, read)``: a TOML table that is not a single value (``[transport]``).

``Sources(flags, env, file).build(root)`` walks the tree and fills every field
(flag, then environment, then file, then default); ``docs(root)`` lists the
options for ``--help`` and the README; ``refuse_unknown_keys`` and
``warn_about_unknown_variables`` catch names that are none of them.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import ConfigurationError

logger = logging.getLogger(__name__)

ENV_PREFIX = "SLUICE_"
FILE = "sluice.toml"  # how messages name the config file, wherever it is


@dataclass(frozen=True)
class Option:
    """One option as ``option()`` declared it; its default is the field's default."""

    key: str
    cast: Callable[[str], Any]
    help: str
    metavar: str | None  # set: ``sluice serve`` has the flag
    text: str | None  # the default as written, when written as text
    described: str | None  # what an unset or derived default means, for the docs
    derive: Callable[[Mapping[str, Any]], Any] | None
    in_file: bool

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


@dataclass(frozen=True)
class Table:
    """A table of the config file (no flag, no variable): its key and how it is read."""

    key: str
    read: Callable[[Mapping[str, Any]], Any]


def option(
    key: str,
    cast: Callable[[str], Any],
    *,
    help: str,
    default: Any = dataclasses.MISSING,
    text: str | None = None,
    derive: Callable[[Mapping[str, Any]], Any] | None = None,
    described: str | None = None,
    metavar: str | None = None,
    in_file: bool = True,
) -> Any:
    """A settings field that is an option. Give exactly one of ``default`` (the value),
    ``text`` (the default as a user would write it, read by ``cast``) or ``derive``
    (computed at load time from the options loaded so far). ``described`` says in
    words what a ``None``, empty or derived default means; any other default shows
    itself. ``metavar``: ``sluice serve`` takes the option as a flag. ``in_file=False``:
    not read from the config file (the option naming that file)."""
    if (default is not dataclasses.MISSING) + (text is not None) + (derive is not None) != 1:
        raise TypeError(f"option {key!r}: give one of default, text or derive")
    if text is not None:
        default = cast(text)
    nothing = derive is not None or default is None or default == ()
    if nothing != (described is not None):
        raise TypeError(f"option {key!r}: describe an unset or derived default, and only those")
    declared = Option(key, cast, help, metavar, text, described, derive, in_file)
    if derive is not None:  # no class default: only the loader knows the value
        return field(metadata={"option": declared})
    return field(default=default, metadata={"option": declared})


def section(cls: type[Any]) -> Any:
    """A settings field holding a group of options."""
    return field(metadata={"section": cls})


def table(key: str, read: Callable[[Mapping[str, Any]], Any]) -> Any:
    """A settings field read from the config file's ``[key]`` table by ``read``."""
    return field(default=(), metadata={"table": Table(key, read)})


# --- listing ----------------------------------------------------------------------


@dataclass(frozen=True)
class OptionDoc:
    """One row of the options table: what ``sluice serve --help`` and the README show."""

    key: str  # in the config file
    env: str
    flag: str | None  # a ``sluice serve`` flag, if it has one
    metavar: str | None
    default: str
    help: str


def walk(root: type[Any]) -> Iterator[dataclasses.Field[Any]]:
    """Every option and table field of the tree, depth first in declaration order."""
    for each in dataclasses.fields(root):
        if "section" in each.metadata:
            yield from walk(each.metadata["section"])
        else:
            yield each


def declared(root: type[Any]) -> dict[str, Option]:
    """The tree's options by key."""
    found = (each.metadata.get("option") for each in walk(root))
    return {o.key: o for o in found if o is not None}


def tables(root: type[Any]) -> list[str]:
    return [each.metadata["table"].key for each in walk(root) if "table" in each.metadata]


def docs(root: type[Any]) -> tuple[OptionDoc, ...]:
    rows = []
    for each in walk(root):
        if "option" in each.metadata:
            o: Option = each.metadata["option"]
            default = o.text or o.described or _shown(each.default)
            flag = o.flag if o.metavar else None
            rows.append(OptionDoc(o.key, o.env, flag, o.metavar, default, o.help))
    return tuple(rows)


def _shown(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


# --- reading ----------------------------------------------------------------------


class Sources:
    """Looks an option up in flags (by key), then environment, then the config file."""

    def __init__(
        self, flags: Mapping[str, Any], env: Mapping[str, str], file: Mapping[str, Any]
    ) -> None:
        self.flags = flags
        self.env = env
        self.file = file
        self.seen: dict[str, Any] = {}  # option values so far, for derived defaults

    def value(self, o: Option, default: Any) -> Any:
        """The first non-empty value, cast; else ``default`` (or the derived one)."""
        in_file = self.file.get(o.key) if o.in_file else None
        for origin, raw in (
            (o.flag, self.flags.get(o.key)),
            (o.env, self.env.get(o.env)),
            (f"{o.key} in {FILE}", in_file),
        ):
            if raw is None or raw == "":
                continue
            try:
                value = o.cast(str(raw))
            except ValueError as exc:
                raise ConfigurationError(f"Config {origin} is invalid: {exc}") from exc
            break
        else:
            value = default if o.derive is None else o.derive(self.seen)
        self.seen[o.key] = value
        return value

    def build(self, cls: type[Any]) -> Any:
        """An instance of ``cls`` with every option, table and section filled in."""
        values: dict[str, Any] = {}
        for each in dataclasses.fields(cls):
            if "section" in each.metadata:
                values[each.name] = self.build(each.metadata["section"])
            elif "option" in each.metadata:
                values[each.name] = self.value(each.metadata["option"], each.default)
            elif "table" in each.metadata:
                values[each.name] = self.table(each.metadata["table"])
            else:
                raise TypeError(f"{cls.__name__}.{each.name} needs option(), section() or table()")
        return cls(**values)

    def table(self, declared: Table) -> Any:
        content = self.file.get(declared.key, {})
        if not isinstance(content, dict):
            raise ConfigurationError(f"Config [{declared.key}] in {FILE} must be a table")
        return declared.read(content)


# --- names that are not options ---------------------------------------------------


def refuse_unknown_keys(root: type[Any], file: Mapping[str, Any]) -> None:
    """A config file key that is neither an option nor a table stops the start."""
    options = declared(root)
    keys = [key for key, o in options.items() if o.in_file]
    known_tables = tables(root)
    for key, value in file.items():
        if key in keys or key in known_tables:
            continue
        if key in options:
            o = options[key]
            raise ConfigurationError(
                f"Config {key} in {FILE} is not read from the file; use {o.flag} or {o.env}"
            )
        if isinstance(value, dict):
            flat = [k for k in keys if k.startswith(f"{key}_")]
            hint = f"; options are flat keys, such as {flat[0]} = ..." if flat else ""
            raise ConfigurationError(f"Config [{key}] in {FILE} is not a known table{hint}")
        close = nearest(key, keys + known_tables)
        hint = f"; did you mean {close}?" if close else ""
        raise ConfigurationError(f"Config {key} in {FILE} is not a known option{hint}")


def warn_about_unknown_variables(root: type[Any], env: Mapping[str, str]) -> None:
    """Log each ``SLUICE_*`` variable that is no option, with the nearest one's name."""
    known = [o.env.removeprefix(ENV_PREFIX) for o in declared(root).values()]
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name.removeprefix(ENV_PREFIX) not in known:
            close = nearest(name.removeprefix(ENV_PREFIX), known)
            hint = f"; did you mean {ENV_PREFIX}{close}?" if close else ""
            logger.warning("%s is not a Sluice setting and is ignored%s", name, hint)


def nearest(name: str, candidates: list[str]) -> str | None:
    close = difflib.get_close_matches(name, candidates, n=1)
    return close[0] if close else None
