"""Secrets as a type: a value that never shows itself."""

from __future__ import annotations

from typing import Any, Final, NoReturn

__all__ = ["Secret", "as_secret", "redact_url"]

_MASK: Final = "<secret>"


class Secret:
    """A credential that prints, serialises and logs as ``<secret>``.

    The value is read only where it is used, with :meth:`reveal`. ``repr``, ``str``, ``format``
    and the JSON converter all show ``<secret>``; pickling is refused so a secret cannot leak
    through a process boundary by accident. Two secrets are equal when their values are, but the
    comparison does not reveal which one differs.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"Secret value must be str, not {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """Return the secret's value. Call this only where the value is put to use."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({_MASK!r})"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return format(_MASK, spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        import hmac

        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, len(self._value)))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> NoReturn:
        raise TypeError("Secret values cannot be pickled")

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self

    def __copy__(self) -> Secret:
        return self


def redact_url(url: str) -> str:
    """``url`` with the password of its userinfo shown as ``<secret>``, for error messages.

    Made for URLs that failed to parse, so it trusts no parser: everything after the first
    ``:`` between the start of the authority (after ``://``, or the start of the text when there
    is none) and the *last* ``@`` is masked. That over-masks when a path or query holds ``@``,
    never under-masks a password holding ``/``, ``?``, ``#``, ``:`` or ``@``.
    """
    at = url.rfind("@")
    if at < 0:
        return url
    scheme_end = url.find("://")
    start = scheme_end + 3 if 0 <= scheme_end < at else 0
    colon = url.find(":", start, at)
    if colon < 0:
        return url
    return f"{url[: colon + 1]}{_MASK}{url[at:]}"


def as_secret(field: str, value: object) -> Secret | None:
    """``value`` as a :class:`Secret` (an attrs converter's work): a plain ``str`` is taken as
    one, at definition time; None stays None.

    Anything else (bytes, a number) is a :class:`~probekit.DefinitionError` on ``field``; a check
    never meets a credential of the wrong type.
    """
    if value is None or isinstance(value, Secret):
        return value
    if isinstance(value, str):
        return Secret(value)
    from ._exceptions import DefinitionError

    raise DefinitionError(
        field, f"expected a Secret (a str is taken as one), got {type(value).__name__}"
    )
