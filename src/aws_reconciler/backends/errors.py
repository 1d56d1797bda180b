"""Classify AWS failures as retriable or terminal.

Retriable means "the same request may succeed later": capacity, throttling (including the
``InvalidParameterException: ... Rate exceeded`` disguise RunTask uses), 5xx, timeouts and
credential trouble (an expired IRSA token is refreshed by the boto3 chain). Everything else is
terminal for that row and is reported with AWS's own words.
"""

from __future__ import annotations

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


class AwsError(Exception):
    """Base of classified AWS failures; ``reason`` is what operators and Airflow users see."""

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class RetriableError(AwsError):
    """Try again later with backoff.

    ``throttled`` asks the caller to slow every call down; ``credentials`` says the whole
    process, not the request, is at fault; ``rejected`` says AWS refused the request, so it
    certainly started nothing (unlike a 5xx or a timeout, after which a task may exist).
    """

    def __init__(
        self,
        reason: str,
        *,
        code: str | None = None,
        throttled: bool = False,
        credentials: bool = False,
        rejected: bool = False,
    ) -> None:
        super().__init__(reason, code=code)
        self.throttled = throttled
        self.credentials = credentials
        self.rejected = rejected or throttled or credentials


class TerminalError(AwsError):
    """Retrying the same request cannot help: fail the task instance with this reason."""


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
        return RetriableError(text, code=reason, throttled=True)
    if reason.startswith(RETRIABLE_FAILURE_PREFIXES) or is_capacity_message(text):
        return RetriableError(text, code=reason, rejected=True)
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
            return RetriableError(text, code=code, throttled=True)
        if code in CREDENTIAL_CODES:
            return RetriableError(text, code=code, credentials=True)
        if code in RETRIABLE_CODES or status >= 500:
            return RetriableError(text, code=code)
        if is_capacity_message(message):
            return RetriableError(text, code=code, rejected=True)
        return TerminalError(text, code=code)
    # These carry no `.response`: matching on type is the only reliable way.
    if isinstance(exc, NoCredentialsError | CredentialRetrievalError):
        return RetriableError(f"AWS credentials unavailable: {exc}", code=type(exc).__name__, credentials=True)
    if isinstance(exc, ReadTimeoutError | EndpointConnectionError | ConnectionError):
        return RetriableError(f"AWS unreachable: {exc}", code=type(exc).__name__)
    if isinstance(exc, ParamValidationError | NoRegionError):
        return TerminalError(f"invalid request: {exc}", code=type(exc).__name__)
    if isinstance(exc, BotoCoreError):
        return RetriableError(f"AWS client error: {exc}", code=type(exc).__name__)
    return RetriableError(f"unexpected {type(exc).__name__}: {exc}", code=type(exc).__name__)
