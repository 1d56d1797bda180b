"""Classification of AWS failures into retriable and terminal."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError

from aws_reconciler.backends.errors import Outcome, RetriableError, TerminalError, classify, classify_failure_reason


def client_error(code: str, message: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, "RunTask"
    )


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (client_error("ThrottlingException", "Rate exceeded"), Outcome.THROTTLED),
        # RunTask's throttling in disguise.
        (client_error("InvalidParameterException", "Rate exceeded"), Outcome.THROTTLED),
        (client_error("TooManyRequestsException", "slow down"), Outcome.THROTTLED),
        (client_error("ServerException", "boom", 500), Outcome.AMBIGUOUS),
        (client_error("Whatever", "bad gateway", 502), Outcome.AMBIGUOUS),
        (
            client_error("ExpiredTokenException", "The security token included in the request is expired"),
            Outcome.CREDENTIALS,
        ),
        (NoCredentialsError(), Outcome.CREDENTIALS),
        (ReadTimeoutError(endpoint_url="https://ecs"), Outcome.AMBIGUOUS),
        (EndpointConnectionError(endpoint_url="https://ecs"), Outcome.AMBIGUOUS),
        (RuntimeError("surprise"), Outcome.AMBIGUOUS),
    ],
)
def test_retriable(exc: BaseException, outcome: Outcome) -> None:
    error = classify(exc)
    assert isinstance(error, RetriableError), error
    assert error.outcome is outcome


@pytest.mark.parametrize(
    "exc",
    [
        client_error("ClientException", "Unable to find task definition 'nope'"),
        client_error("AccessDeniedException", "not authorized to perform: ecs:RunTask"),
        client_error("InvalidParameterException", "Task definition does not support launch_type FARGATE."),
    ],
)
def test_terminal(exc: BaseException) -> None:
    error = classify(exc)
    assert isinstance(error, TerminalError) and error.outcome is Outcome.TERMINAL
    assert error.reason.startswith(exc.response["Error"]["Code"])  # type: ignore[attr-defined]


def test_credentials_errors_are_flagged() -> None:
    error = classify(NoCredentialsError())
    assert isinstance(error, RetriableError) and error.outcome is Outcome.CREDENTIALS


@pytest.mark.parametrize("reason", ["RESOURCE:MEMORY", "RESOURCE:CPU", "AGENT", "Capacity is unavailable at this time"])
def test_capacity_failures_are_retriable_and_certain(reason: str) -> None:
    error = classify_failure_reason(reason)
    assert isinstance(error, RetriableError) and error.outcome is Outcome.REJECTED


def test_unknown_failure_reason_is_terminal() -> None:
    error = classify_failure_reason("MISSING", "arn:aws:ecs:instance/none")
    assert isinstance(error, TerminalError) and "MISSING" in error.reason
