"""Classify AWS failures as retriable or terminal.

Retriable means "the same request may succeed later": capacity, throttling (including the
``InvalidParameterException: ... Rate exceeded`` disguise RunTask uses), 5xx, timeouts and
credential trouble (an expired IRSA token is refreshed by the boto3 chain). Everything else is
terminal for that row and is reported with AWS's own words.
"""

from __future__ import annotations

from enum import Enum

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    ReadTimeoutError,
)

from ..model import redact_tokens

THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "SlowDown",
        "PriorRequestNotComplete",
    }
)
CREDENTIAL_CODES = frozenset(
    {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "InvalidClientTokenId", "UnrecognizedClientException"}
)
RETRIABLE_CODES = frozenset(
    {"ServerException", "ServiceUnavailable", "ServiceUnavailableException", "InternalFailure", "InternalError"}
)
# Reasons RunTask reports in `failures` that clear up once capacity frees or an agent reconnects.
RETRIABLE_FAILURE_PREFIXES = ("RESOURCE:", "AGENT", "CAPACITY")


class Outcome(Enum):
    """What a failed call tells the caller to do; every consumer matches on it exhaustively."""

    #: Retrying the same request cannot help: fail the row with AWS's reason.
    TERMINAL = "terminal"
    #: AWS refused to do it now: slow every call down. Nothing was started.
    THROTTLED = "throttled"
    #: The process, not the request, is at fault (expired or missing credentials). Nothing started.
    CREDENTIALS = "credentials"
    #: AWS refused the request (capacity): it certainly started nothing, a new attempt may succeed.
    REJECTED = "rejected"
    #: No usable answer (5xx, timeout, unexpected exception): the call may have started something.
    AMBIGUOUS = "ambiguous"

    @property
    def started_nothing(self) -> bool:
        """AWS certainly did not act on the request."""
        return self is not Outcome.AMBIGUOUS


class AwsError(Exception):
    """Base of classified AWS failures; ``reason`` is what operators and Airflow users see.

    AWS's messages are free text that may quote the request, whose command carries the workload
    token: anything shaped like a token is masked before the reason goes anywhere.
    """

    outcome: Outcome = Outcome.AMBIGUOUS

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        reason = redact_tokens(reason)
        super().__init__(reason)
        self.reason = reason
        self.code = code


class RetriableError(AwsError):
    """Try again later with backoff; ``outcome`` says how (never :attr:`Outcome.TERMINAL`)."""

    def __init__(self, reason: str, *, code: str | None = None, outcome: Outcome = Outcome.AMBIGUOUS) -> None:
        if outcome is Outcome.TERMINAL:
            raise ValueError("a RetriableError cannot be terminal; raise TerminalError")
        super().__init__(reason, code=code)
        self.outcome = outcome


class TerminalError(AwsError):
    """Retrying the same request cannot help: fail the task instance with this reason."""

    outcome = Outcome.TERMINAL


def is_throttling_message(message: str) -> bool:
    """RunTask reports throttling as InvalidParameterException with "Rate exceeded" in the text."""
    lowered = message.lower()
    return "rate exceeded" in lowered or "throttl" in lowered


def is_capacity_message(message: str) -> bool:
    """Capacity shortages that clear up by themselves."""
    lowered = message.lower()
    return "capacity is unavailable" in lowered or "insufficient capacity" in lowered


def classify_failure_reason(reason: str, detail: str | None = None) -> AwsError:
    """Classify one entry of RunTask's ``failures`` list (the call itself succeeded)."""
    text = f"{reason}: {detail}" if detail else reason
    if is_throttling_message(text):
        return RetriableError(text, code=reason, outcome=Outcome.THROTTLED)
    if reason.startswith(RETRIABLE_FAILURE_PREFIXES) or is_capacity_message(text):
        return RetriableError(text, code=reason, outcome=Outcome.REJECTED)
    return TerminalError(text, code=reason)


def classify(exc: BaseException) -> AwsError:
    """Map any exception raised by a boto3 call to :class:`RetriableError` or :class:`TerminalError`."""
    if isinstance(exc, AwsError):
        return exc
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        message = str(error.get("Message", "")) or str(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        text = f"{code}: {message}"
        if code in THROTTLING_CODES or is_throttling_message(message):
            return RetriableError(text, code=code, outcome=Outcome.THROTTLED)
        if code in CREDENTIAL_CODES:
            return RetriableError(text, code=code, outcome=Outcome.CREDENTIALS)
        if code in RETRIABLE_CODES or status >= 500:
            return RetriableError(text, code=code)
        if is_capacity_message(message):
            return RetriableError(text, code=code, outcome=Outcome.REJECTED)
        return TerminalError(text, code=code)
    # These carry no `.response`: matching on type is the only reliable way.
    if isinstance(exc, NoCredentialsError | CredentialRetrievalError):
        return RetriableError(
            f"AWS credentials unavailable: {exc}", code=type(exc).__name__, outcome=Outcome.CREDENTIALS
        )
    if isinstance(exc, ReadTimeoutError | EndpointConnectionError | ConnectionError):
        return RetriableError(f"AWS unreachable: {exc}", code=type(exc).__name__)
    if isinstance(exc, ParamValidationError | NoRegionError):
        return TerminalError(f"invalid request: {exc}", code=type(exc).__name__)
    if isinstance(exc, BotoCoreError):
        return RetriableError(f"AWS client error: {exc}", code=type(exc).__name__)
    return RetriableError(f"unexpected {type(exc).__name__}: {exc}", code=type(exc).__name__)
