"""The workload token at rest: kept apart from the launch request, encrypted with a shared key.

Airflow's workload token (a JWT that lets its holder start one task instance through the
Execution API) is part of the container command, so it is part of every launch request. The
stored request (``spec``) holds :data:`PLACEHOLDER` in its place; the token itself lives in the
row's ``workload_token`` column, as ``fernet:<ciphertext>`` when ``[aws_reconciler] token_key``
is configured (Fernet, as Airflow's own ``[core] fernet_key``; a comma list rotates keys: the
first encrypts, every one decrypts) and as ``plain:<token>`` when it is not. The store clears
that column once the row can never be launched again (see ``TaskStore.transition``).

Putting the token back is exact: the request sent is byte for byte the one built at queue time,
so relaunching an attempt (same ECS ``clientToken``) is answered with the task it started rather
than with a conflict.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Stands for the token inside the stored request. Stored data depends on it: never change it.
PLACEHOLDER = "<aws-reconciler:workload-token>"
#: What the executors and the reconciler log at start-up when no key is configured.
CLEAR_WARNING = (
    "[aws_reconciler] token_key is not set: Airflow workload tokens are kept in clear in the task store "
    "until their task starts; set the same Fernet key on the schedulers and the reconciler (docs/security.md)"
)
_FERNET = "fernet:"
_PLAIN = "plain:"


class TokenUnavailable(Exception):
    """The stored token cannot be put back into its request; the message says why (never the token).

    ``lost``: the row's token was discarded, so it can never be launched; otherwise this side
    cannot open it (no key, or another key) and could once its configuration is fixed.
    """

    def __init__(self, reason: str, *, lost: bool = False) -> None:
        super().__init__(reason)
        self.lost = lost


class TokenKeyError(ValueError):
    """``[aws_reconciler] token_key`` cannot be used (the message never contains the key)."""


@dataclass(frozen=True)
class LaunchRequest:
    """A row's stored request and its stored (sealed) token, as the launch path reads them."""

    spec: dict[str, Any] | None
    workload_token: str | None = field(default=None, repr=False)


class TokenSealer:
    """Seals workload tokens for the store and opens them for a launch.

    ``keys``: the Fernet key(s), comma-separated, newest first; ``None`` keeps tokens in clear.
    ``origin``: where the keys were configured, for the :class:`TokenKeyError` they may raise.
    ``cryptography`` is imported only when a key is given, so a deployment without one does not
    need it.
    """

    def __init__(self, keys: str | None = None, *, origin: str = "default") -> None:
        self._fernet: Any = None
        if keys is not None:
            try:
                self._fernet = _multi_fernet(keys)
            except TokenKeyError as exc:
                raise TokenKeyError(
                    f"invalid setting [aws_reconciler] token_key = '***' (from {origin}): {exc}"
                ) from None

    def __repr__(self) -> str:
        return f"TokenSealer(encrypting={self.encrypting})"

    @property
    def encrypting(self) -> bool:
        """Tokens are stored encrypted (a key is configured)."""
        return self._fernet is not None

    def seal(self, token: str) -> str:
        """The column value for ``token``."""
        if self._fernet is None:
            return _PLAIN + token
        return _FERNET + self._fernet.encrypt(token.encode()).decode("ascii")

    def open(self, sealed: str) -> str:
        """The token a column value holds; :class:`TokenUnavailable` when this side cannot read it."""
        if sealed.startswith(_PLAIN):
            return sealed[len(_PLAIN) :]
        if not sealed.startswith(_FERNET):
            raise TokenUnavailable("the stored workload token has an unknown format")
        if self._fernet is None:
            raise TokenUnavailable(
                "the workload token is encrypted, and [aws_reconciler] token_key is not set here: "
                "give the reconciler the scheduler's key"
            )
        from cryptography.fernet import InvalidToken

        try:
            return str(self._fernet.decrypt(sealed[len(_FERNET) :].encode("ascii")).decode())
        except (InvalidToken, ValueError):
            raise TokenUnavailable(
                "the workload token cannot be decrypted with [aws_reconciler] token_key: the scheduler "
                "encrypted it with another key (when rotating, keep the old key listed after the new one)"
            ) from None

    def seal_request(self, spec: dict[str, Any], token: str | None) -> tuple[dict[str, Any], str | None]:
        """``spec`` with the token replaced by :data:`PLACEHOLDER`, and the column value.

        A workload without a token (or a request that does not carry it) is stored as it is.
        """
        if not token:
            return spec, None
        needle = _as_in_json(token)
        if not _contains(spec, needle):
            return spec, None
        return _replace(spec, needle, PLACEHOLDER), self.seal(token)

    def open_request(self, spec: dict[str, Any], sealed: str | None) -> dict[str, Any]:
        """The request to send: the token put back where the placeholder is."""
        if not _contains(spec, PLACEHOLDER):
            return spec  # stored before tokens were kept apart, or a workload without one
        if sealed is None:
            raise TokenUnavailable(
                "its workload token was discarded when its container started or the row ended; "
                "it can no longer be launched",
                lost=True,
            )
        return _replace(spec, PLACEHOLDER, _as_in_json(self.open(sealed)))


def _multi_fernet(keys: str) -> Any:
    parts = [k.strip() for k in keys.split(",") if k.strip()]
    if not parts:
        raise TokenKeyError("is empty; give one or more Fernet keys, comma-separated (newest first)")
    try:
        from cryptography.fernet import Fernet, MultiFernet
    except ImportError:
        raise TokenKeyError(
            "needs the Python package `cryptography` (pip install cryptography), which is not installed"
        ) from None
    fernets = []
    for index, part in enumerate(parts, start=1):
        try:
            fernets.append(Fernet(part.encode("ascii")))
        except (ValueError, UnicodeEncodeError):
            where = f"key {index} of {len(parts)}" if len(parts) > 1 else "the key"
            raise TokenKeyError(
                f"{where} is not a Fernet key (32 url-safe base64-encoded bytes; generate one with "
                '`python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`)'
            ) from None
    return MultiFernet(fernets)


def _as_in_json(token: str) -> str:
    # The command carries the workload as JSON text: the token appears JSON-escaped in it.
    return json.dumps(token, ensure_ascii=False)[1:-1]


def _contains(value: Any, needle: str) -> bool:
    if isinstance(value, str):
        return needle in value
    if isinstance(value, Mapping):
        return any(_contains(v, needle) for v in value.values())
    if isinstance(value, Sequence):
        return any(_contains(v, needle) for v in value)
    return False


def _replace(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, Mapping):
        return {k: _replace(v, old, new) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_replace(v, old, new) for v in value]
    return value
