"""The one strict structuring engine: plain JSON-ish data in, typed attrs values out.

Probe definitions (TOML, JSON, Python dicts), control-channel frames and result JSON are all
read here. A type is compiled once into a structuring function (from its attrs fields and type
hints) and cached, so reading a value walks the data once, with no per-call introspection.

What it reads, strictly:

- ``str`` (no lone surrogates), ``int`` (never a bool, never ``7.9`` or ``"7"``), ``float`` (an
  int or a float, finite), ``bool`` (only true and false), ``bytes`` (a string, UTF-8 encoded);
- ``Literal[...]`` (the same type and value), enums (by value), ``X | None`` and other unions
  (each member in turn), ``tuple[X, ...]``/``list[X]`` and fixed ``tuple[X, Y]`` (from arrays;
  a tuple of pairs may also be written as an object), mappings (keys and values typed);
- ``datetime`` (ISO 8601; a timestamp without an offset is UTC), :class:`~probekit.Secret`
  (through the call's secret policy), ``Any`` (taken as it is);
- attrs classes (each init field by its alias; unknown keys refused with "did you mean", or
  ignored, as the policy says; missing fields reported; the class's own validators run and their
  :class:`~probekit.DefinitionError` paths are placed under the value's path);
- tagged families (:class:`Tagged`: ``{"kind": "http", ...}``, ``{"type": "status_in", ...}``)
  and types with a registered hook.

Every problem is collected with its path (``assertions[1].pattern``) and raised together as
:class:`~probekit.DefinitionErrors`; a policy may stop at the first one instead (a peer's frame
needs only one reason to be refused, and a hostile one should not make us list thousands).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import difflib
import enum
import math
import threading
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal, Union, get_args, get_origin, get_type_hints

import attrs

from ._exceptions import DefinitionError, DefinitionErrors
from ._secret import Secret

__all__ = [
    "STRICT",
    "FieldHook",
    "Policy",
    "SecretPolicy",
    "Structurer",
    "Tagged",
    "active_policy",
    "did_you_mean",
    "engine",
    "has_surrogates",
    "nested",
    "plain_secret",
    "register",
    "show",
    "structure",
]

#: ``hook(data, path)``: a value a kind reads itself; raises :class:`DefinitionError` (or
#: :class:`DefinitionErrors`) with paths under ``path``, which is relative to the object holding
#: the field (the engine places it under the object's own path).
FieldHook = Callable[[Any, str], Any]
#: ``policy(data)``: the :class:`Secret` a secret field's data stands for; raises
#: :class:`DefinitionError` (path relative to the field, e.g. ``secret``) when it cannot be read.
SecretPolicy = Callable[[Any], Secret]

_MASK: Final = str(Secret(""))


def has_surrogates(text: str) -> bool:
    """True when ``text`` holds a lone surrogate (so it has no UTF-8 form)."""
    if text.isascii():
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def show(value: object, *, reveal: bool = True) -> str:
    """A short description of ``value`` for an error message (never a huge repr).

    Objects and arrays are named, not printed. With ``reveal`` false a string is only called a
    string: a definition's strings may be credentials written in the wrong place.
    """
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, str) and not reveal:
        return "a string"
    if isinstance(value, bytes | bytearray) and not reveal:
        return "bytes"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def did_you_mean(name: object, known: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` when ``name`` is close to one of ``known``, else ''."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def plain_secret(data: Any) -> Secret:
    """The secret policy of frames and results: a string is the secret itself, except the mask
    ``"<secret>"``, which is what a secret was written as and cannot stand for its value."""
    if isinstance(data, Secret):
        return data
    if not isinstance(data, str):
        raise DefinitionError("", f"a secret must be a string, got {show(data, reveal=False)}")
    if data == _MASK:
        raise DefinitionError("", "a masked '<secret>' cannot be loaded back as a secret")
    return Secret(data)


@attrs.frozen
class Policy:
    """How one call reads its data (the engine and its compiled types are shared).

    ``unknown_keys``: ``forbid`` reports a key no field has (with "did you mean"), ``ignore``
    skips it (a newer peer may send fields this side does not know). ``first_error`` stops at the
    first problem. ``show_strings`` lets error messages quote strings of the wrong type.
    ``secrets`` reads every :class:`Secret` field.
    """

    unknown_keys: Literal["forbid", "ignore"] = "forbid"
    first_error: bool = False
    show_strings: bool = False
    secrets: SecretPolicy = plain_secret


#: The default policy: unknown keys refused, every problem collected, strings not quoted.
STRICT: Final = Policy()


@attrs.frozen
class Tagged:
    """A family of attrs classes told apart by one key: ``{"kind": "http", ...}``.

    ``resolve(name)`` returns the class for a tag and the field hooks it reads with, or raises
    :class:`DefinitionError` whose message says why the name is not known (its path is ignored:
    the problem is placed at ``key``). ``missing`` says what the tag is for, in the error for an
    object without one (``required: a definition names its probe kind``).
    """

    key: str
    missing: str
    resolve: Callable[[str], tuple[type, Mapping[str, FieldHook]]]


class _Invalid(Exception):
    """Problems found below some value; each path is relative to that value, and grows a step
    as the exception passes up through each container."""

    __slots__ = ("errors",)

    def __init__(self, errors: list[DefinitionError]) -> None:
        self.errors = errors

    def place(self, step: str) -> _Invalid:
        self.errors = [e.under(step) for e in self.errors]
        return self


def _fail(message: str) -> _Invalid:
    return _Invalid([DefinitionError("", message)])


def _flat(exc: DefinitionError) -> list[DefinitionError]:
    if isinstance(exc, DefinitionErrors):
        return [e for inner in exc.errors for e in _flat(inner)]
    return [exc]


def _got(value: object, policy: Policy) -> str:
    return show(value, reveal=policy.show_strings)


# A compiled type: ``fn(data, policy)`` returns the value or raises _Invalid.
_Fn = Callable[[Any, Policy], Any]


# -- scalars --------------------------------------------------------------------------------------


def _any(value: Any, _policy: Policy) -> Any:
    return value


def _str(value: Any, policy: Policy) -> str:
    if isinstance(value, str):
        if value.isascii() or not has_surrogates(value):
            return value
        raise _fail("is not valid Unicode (a lone surrogate)")
    raise _fail(f"expected a string, got {_got(value, policy)}")


def _int(value: Any, policy: Policy) -> int:
    if type(value) is int:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    raise _fail(f"expected an integer, got {_got(value, policy)}")


def _float(value: Any, policy: Policy) -> float:
    kind = type(value)
    if kind is float or kind is int or (isinstance(value, int | float) and kind is not bool):
        number = float(value)
        if math.isfinite(number):
            return number
        raise _fail(f"{show(value)} is not a finite number")
    raise _fail(f"expected a number, got {_got(value, policy)}")


def _bool(value: Any, policy: Policy) -> bool:
    if value is True or value is False:
        return bool(value)
    raise _fail(f"expected true or false, got {_got(value, policy)}")


def _bytes(value: Any, policy: Policy) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return value.encode()
        except UnicodeEncodeError:
            raise _fail("is not valid Unicode (a lone surrogate)") from None
    raise _fail(f"expected a string, got {_got(value, policy)}")


def _datetime(value: Any, policy: Policy) -> dt.datetime:
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise _fail(f"expected an ISO 8601 timestamp, got {show(value)}") from None
    else:
        raise _fail(f"expected an ISO 8601 timestamp, got {_got(value, policy)}")
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _secret(value: Any, policy: Policy) -> Secret:
    try:
        return policy.secrets(value)
    except DefinitionError as exc:
        raise _Invalid(_flat(exc)) from None


_SCALARS: Final[Mapping[Any, _Fn]] = {
    Any: _any,
    object: _any,
    str: _str,
    int: _int,
    float: _float,
    bool: _bool,
    bytes: _bytes,
    dt.datetime: _datetime,
    Secret: _secret,
}


# -- compound types -------------------------------------------------------------------------------


def _literal(hint: Any) -> _Fn:
    choices = get_args(hint)
    by_value = {(type(c), c): c for c in choices}
    allowed = ", ".join(repr(c) for c in choices)

    def structure(value: Any, _policy: Policy) -> Any:
        try:
            return by_value[(type(value), value)]
        except (KeyError, TypeError):  # TypeError: an unhashable value (an array, an object)
            raise _fail(f"{show(value)} is not one of {allowed}") from None

    return structure


def _enum(hint: type[enum.Enum]) -> _Fn:
    members = {member.value: member for member in hint}

    def structure(value: Any, _policy: Policy) -> Any:
        if isinstance(value, hint):
            return value
        if type(value) in (str, int) and value in members:
            return members[value]
        raise _fail(f"{show(value)} is not a valid {hint.__name__}")

    return structure


def _optional(inner: _Fn) -> _Fn:
    def structure(value: Any, policy: Policy) -> Any:
        return None if value is None else inner(value, policy)

    return structure


def _union(members: list[_Fn], nullable: bool) -> _Fn:
    """Each member in turn; the first that reads the value wins. Else the problems of the first
    member that got inside the value (an error with a path: ``{"env": VAR}`` read as a secret
    names ``env``), or the first member's when none did."""

    def structure(value: Any, policy: Policy) -> Any:
        if value is None and nullable:
            return None
        first: _Invalid | None = None
        deepest: _Invalid | None = None
        for member in members:
            try:
                return member(value, policy)
            except _Invalid as exc:
                first = first or exc
                if deepest is None and any(e.path for e in exc.errors):
                    deepest = exc
        assert first is not None
        raise deepest or first

    return structure


def _sequence(item: _Fn, pairs: bool, make: type) -> _Fn:
    def structure(value: Any, policy: Policy) -> Any:
        if type(value) is not list and not isinstance(value, list | tuple):
            if pairs and isinstance(value, Mapping):
                value = list(value.items())  # headers and query written as an object
            else:
                raise _fail(f"expected an array, got {_got(value, policy)}")
        if item is _any:
            return make(value)
        out: list[Any] = []
        append = out.append
        try:
            for i, element in enumerate(value):  # noqa: B007 - i names the item that failed
                append(item(element, policy))
        except _Invalid as exc:
            failed = exc.place(f"[{i}]")
        else:
            return make(out)
        # Each item is read once: the rest are read only to report their problems too.
        if policy.first_error:
            raise failed
        errors = failed.errors
        for j in range(i + 1, len(value)):
            try:
                item(value[j], policy)
            except _Invalid as exc:
                errors.extend(exc.place(f"[{j}]").errors)
        raise _Invalid(errors)

    return structure


def _fixed(items: list[_Fn]) -> _Fn:
    def structure(value: Any, policy: Policy) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise _fail(f"expected an array, got {_got(value, policy)}")
        if len(value) != len(items):
            raise _fail(f"expected {len(items)} items, got {len(value)}")
        out = []
        errors: list[DefinitionError] = []
        for i, (item, element) in enumerate(zip(items, value, strict=True)):
            try:
                out.append(item(element, policy))
            except _Invalid as exc:
                exc.place(f"[{i}]")
                if policy.first_error:
                    raise
                errors.extend(exc.errors)
        if errors:
            raise _Invalid(errors)
        return tuple(out)

    return structure


def _mapping(key: _Fn, item: _Fn) -> _Fn:
    def structure(value: Any, policy: Policy) -> dict[Any, Any]:
        if type(value) is not dict and not isinstance(value, Mapping):
            raise _fail(f"expected an object, got {_got(value, policy)}")
        out = {}
        entries = value.items()
        try:
            for k, v in entries:
                out[key(k, policy)] = item(v, policy)
        except _Invalid as exc:
            failed = exc.place(f"[{k!r}]")
        else:
            return out
        # Each entry is read once: the rest are read only to report their problems too.
        if policy.first_error:
            raise failed
        errors = failed.errors
        rest = iter(entries)
        for seen, _ in rest:
            if seen is k:
                break
        for k2, v2 in rest:
            try:
                key(k2, policy)
                item(v2, policy)
            except _Invalid as exc:
                errors.extend(exc.place(f"[{k2!r}]").errors)
        raise _Invalid(errors)

    return structure


def _unknown(hint: Any) -> _Fn:
    def structure(_value: Any, _policy: Policy) -> Any:
        raise _fail(f"cannot load a value of type {hint!r}")

    return structure


_MISSING: Final = object()


def _inline(hint: Any, name: str) -> str:
    """The expression reading ``v`` as ``hint`` in generated code: the common exact-type values
    are taken on the spot, anything else goes through the compiled function ``name`` (which
    checks, and raises)."""
    if get_origin(hint) in (Union, types.UnionType):
        args = get_args(hint)
        if len(args) == 2 and type(None) in args:
            inner = _inline(next(a for a in args if a is not type(None)), name)
            return f"None if v is None else {inner}"
    if hint is Any or hint is object:
        return "v"
    if hint is str:
        return f"v if type(v) is str and v.isascii() else {name}(v, policy)"
    if hint is int:
        return f"v if type(v) is int else {name}(v, policy)"
    if hint is float:  # v - v is 0.0 only for a finite float
        return f"v if type(v) is float and v - v == 0.0 else {name}(v, policy)"
    if hint is bool:
        return f"v if v is True or v is False else {name}(v, policy)"
    return f"{name}(v, policy)"


class _Class:
    """An attrs class compiled: its init fields by alias, each with its structuring function.

    :attr:`fn` is a straight-line function generated for the class (no loop, no bookkeeping).
    When it meets anything unusual (not a dict, a missing or unknown key, a value that does not
    read) the careful path, :meth:`read`, runs instead and reports every problem in the order
    of the data's keys.
    """

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.fields: dict[str, tuple[str, _Fn]] = {}
        self.required: tuple[str, ...] = ()
        self.required_keys: frozenset[str] = frozenset()
        self.broken: str | None = None
        self.fn: _Fn = self.read

    def trampoline(self, data: Any, policy: Policy) -> Any:
        """Stands for :attr:`fn` while the class's own fields are compiled (it may contain
        itself)."""
        return self.fn(data, policy)

    def compile(self, engine: Structurer) -> None:
        try:
            hints = get_type_hints(self.cls)
        except Exception as exc:  # noqa: BLE001 - any failure to read annotations is the class's
            self.broken = (
                f"cannot read the field types of {self.cls.__qualname__} "
                f"({type(exc).__name__}: {exc}); define it in an importable module"
            )
            return
        required = []
        inline = []
        for field in attrs.fields(self.cls):
            if not field.init:
                continue
            key = field.alias or field.name.lstrip("_")
            hint = hints.get(field.name, Any)  # attr.ib() without an annotation: anything
            self.fields[key] = (key, engine.compiled(hint))
            inline.append(hint)
            if field.default is attrs.NOTHING:
                required.append(key)
        self.required = tuple(required)
        self.required_keys = frozenset(required)
        self.fn = self._generate(inline)

    def _generate(self, hints: list[Any]) -> _Fn:
        namespace: dict[str, Any] = {
            "_M": _MISSING,
            "_Invalid": _Invalid,
            "_flat": _flat,
            "_fail": _fail,
            "DefinitionError": DefinitionError,
            "cls": self.cls,
            "read": self.read,
        }
        lines = [
            "def structure(data, policy):",
            "    if type(data) is not dict:",
            "        return read(data, policy)",
            "    kw = {}",
        ]
        for i, (hint, (key, (name, fn))) in enumerate(zip(hints, self.fields.items(), strict=True)):
            namespace[f"f{i}"] = fn
            # Keys and names are attrs aliases (identifiers), written as literals with repr.
            lines += [
                f"    v = data.get({key!r}, _M)",
                "    if v is not _M:",
                "        try:",
                f"            kw[{name!r}] = {_inline(hint, f'f{i}')}",
                "        except _Invalid as exc:",
                f"            failed = ({key!r}, exc)",
                "            return read(data, policy, failed=failed)",
            ]
            if key in self.required_keys:
                lines += ["    else:", "        return read(data, policy)"]
        lines += [
            "    if len(kw) != len(data) and policy.unknown_keys != 'ignore':",
            "        return read(data, policy)",
            "    try:",
            "        return cls(**kw)",
            "    except DefinitionError as exc:",
            "        raise _Invalid(_flat(exc)) from None",
            "    except (TypeError, ValueError) as exc:",
            "        raise _fail(str(exc)) from None",
        ]
        exec("\n".join(lines), namespace)  # noqa: S102 - our own code, generated from attrs fields
        structure: _Fn = namespace["structure"]
        return structure

    def read(
        self,
        data: Any,
        policy: Policy,
        tag: str | None = None,
        hooks: Mapping[str, FieldHook] | None = None,
        failed: tuple[str, _Invalid] | None = None,
    ) -> Any:
        """The careful path. ``failed`` is a field the fast path already found wanting (its key
        and problems), so no value is read twice on the way to an error."""
        if not isinstance(data, Mapping):
            raise _fail(f"expected an object, got {_got(data, policy)}")
        if self.broken is not None:
            raise _fail(self.broken)
        fields = self.fields
        kwargs: dict[str, Any] = {}
        errors: list[DefinitionError] = []
        for key, value in data.items():
            if key == tag:
                continue
            entry = fields.get(key)
            if entry is None:
                if policy.unknown_keys == "ignore":
                    continue
                problem = DefinitionError(
                    str(key) or "['']", "unknown field" + did_you_mean(key, list(fields))
                )
                if policy.first_error:
                    raise _Invalid([problem])
                errors.append(problem)
                continue
            name, structure = entry
            hook = hooks.get(key) if hooks else None
            try:
                if failed is not None and key == failed[0]:
                    raise failed[1]
                if hook is None:
                    kwargs[name] = structure(value, policy)
                else:
                    kwargs[name] = _hooked(hook, value, key)
            except _Invalid as exc:
                if hook is None:
                    exc.place(key)
                if policy.first_error:
                    raise
                errors.extend(exc.errors)
        if not data.keys() >= self.required_keys:
            for key in self.required:
                if key not in data and key != tag:
                    problem = DefinitionError(key, "required field missing")
                    if policy.first_error:
                        raise _Invalid([problem])
                    errors.append(problem)
        if errors:
            raise _Invalid(errors)
        return self.build(kwargs)

    def build(self, kwargs: dict[str, Any]) -> Any:
        try:
            return self.cls(**kwargs)
        except DefinitionError as exc:
            raise _Invalid(_flat(exc)) from None
        except (TypeError, ValueError) as exc:
            raise _fail(str(exc)) from None


def _hooked(hook: FieldHook, value: Any, key: str) -> Any:
    """A field its kind reads itself; its errors are already placed under ``key``."""
    try:
        return hook(value, key)
    except DefinitionError as exc:
        raise _Invalid(_flat(exc)) from None


def _tagged(tagged: Tagged, engine: Structurer) -> _Fn:
    key = tagged.key

    def structure(data: Any, policy: Policy) -> Any:
        if not isinstance(data, Mapping):
            raise _fail(f"expected an object, got {_got(data, policy)}")
        name = data.get(key)
        if name is None:
            raise _Invalid([DefinitionError(key, f"required: {tagged.missing}")])
        if type(name) is not str:
            raise _Invalid([DefinitionError(key, f"expected a string, got {show(name)}")])
        try:
            cls, hooks = tagged.resolve(name)
        except DefinitionError as exc:
            raise _Invalid([DefinitionError(key, exc.message)]) from None
        return engine.compiled_class(cls).read(data, policy, key, hooks)

    return structure


# get_origin gives these for the typing spellings too (typing.Dict[...] -> dict).
_MAPPINGS: Final = (dict, Mapping)
_SEQUENCES: Final = (list, tuple, Sequence)


_ACTIVE: contextvars.ContextVar[Policy | None] = contextvars.ContextVar(
    "probekit_structure_policy", default=None
)


def active_policy() -> Policy | None:
    """The policy of the structuring in progress (None outside one): a kind's field hook
    structures nested values with it, so ``{"secret": NAME}`` works there too."""
    return _ACTIVE.get()


class Structurer:
    """The engine: compiles each type once, then structures data into it under a policy.

    ``register(hint, handler)`` makes ``hint`` read by ``handler``: a :class:`Tagged` family, or
    a :data:`FieldHook` ``hook(data, path)`` for a type the engine does not know.
    """

    def __init__(self) -> None:
        self._handlers: dict[Any, Tagged | FieldHook] = {}
        self._compiled: dict[Any, _Fn] = {}
        self._classes: dict[type, _Class] = {}
        self._lock = threading.RLock()

    def register(self, hint: Any, handler: Tagged | FieldHook) -> None:
        """Read ``hint`` with ``handler`` from now on (types compiled before are recompiled)."""
        with self._lock:
            self._handlers[hint] = handler
            self._compiled.clear()
            self._classes.clear()

    def structure(self, hint: Any, data: Any, *, policy: Policy = STRICT, path: str = "") -> Any:
        """``data`` as a value of ``hint`` (a type or a :class:`Tagged`), or
        :class:`DefinitionErrors` listing every problem (the first only, with
        ``policy.first_error``), each path under ``path``. While it runs, :func:`active_policy`
        is ``policy``, so a field hook that structures a nested value reads it the same way."""
        token = _ACTIVE.set(policy)
        try:
            return self.compiled(hint)(data, policy)
        except _Invalid as exc:
            raise DefinitionErrors([e.under(path) for e in exc.errors]) from None
        finally:
            _ACTIVE.reset(token)

    def compiled(self, hint: Any) -> _Fn:
        fn = self._compiled.get(hint)
        if fn is None:
            with self._lock:
                fn = self._compiled.get(hint)
                if fn is None:
                    fn = self._compile(hint)
                    self._compiled[hint] = fn
        return fn

    def compiled_class(self, cls: type) -> _Class:
        """The compiled form of the attrs class ``cls``."""
        found = self._classes.get(cls)
        if found is None:
            self.compiled(cls)
            found = self._classes[cls]
        return found

    def _compile(self, hint: Any) -> _Fn:
        handler = self._handlers.get(hint)
        if isinstance(handler, Tagged):
            return _tagged(handler, self)
        if handler is not None:
            return _hooked_type(handler)
        if isinstance(hint, Tagged):
            return _tagged(hint, self)
        scalar = _SCALARS.get(hint)
        if scalar is not None:
            return scalar
        origin = get_origin(hint)
        args = get_args(hint)
        if origin is Literal:
            return _literal(hint)
        if origin is Union or origin is types.UnionType:
            nullable = type(None) in args
            members = [self.compiled(a) for a in args if a is not type(None)]
            if len(members) == 1 and nullable:
                return _optional(members[0])
            return _union(members, nullable)
        if hint in _SEQUENCES or origin in _SEQUENCES:
            fixed = (hint is tuple or origin is tuple) and args and args[-1] is not Ellipsis
            if fixed:
                return _fixed([self.compiled(a) for a in args])
            make = list if (hint is list or origin is list) else tuple
            item = args[0] if args else Any
            pairs = get_origin(item) is tuple and len(get_args(item)) == 2
            return _sequence(self.compiled(item), pairs, make)
        if hint in _MAPPINGS or origin in _MAPPINGS:
            key, item = args or (Any, Any)
            return _mapping(self.compiled(key), self.compiled(item))
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return _enum(hint)
        if isinstance(hint, type) and attrs.has(hint):
            compiled = _Class(hint)
            self._classes[hint] = compiled
            self._compiled[hint] = compiled.trampoline  # until its fields are compiled
            compiled.compile(self)
            return compiled.fn
        return _unknown(hint)


def _hooked_type(hook: FieldHook) -> _Fn:
    def structure(value: Any, _policy: Policy) -> Any:
        return _hooked(hook, value, "")

    return structure


#: The engine everything in probekit structures with.
engine: Final = Structurer()


def structure(hint: Any, data: Any, *, policy: Policy = STRICT, path: str = "") -> Any:
    """:meth:`Structurer.structure` on the one engine."""
    return engine.structure(hint, data, policy=policy, path=path)


def nested(hint: Any, data: Any, path: str = "") -> Any:
    """For a kind's field hook: ``data`` as a value of ``hint``, read under the policy of the
    structuring in progress (so ``{"secret": NAME}`` resolves as the caller's ``build_probe``
    does), or :data:`STRICT` outside one."""
    return engine.structure(hint, data, policy=active_policy() or STRICT, path=path)


def register(hint: Any, handler: Tagged | FieldHook) -> None:
    """:meth:`Structurer.register` on the one engine."""
    engine.register(hint, handler)
