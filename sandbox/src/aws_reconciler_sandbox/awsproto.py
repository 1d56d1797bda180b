"""Just enough of the AWS wire protocols to recognise a request and to answer with an AWS error.

The sandbox needs, for every request: which service and operation it is (to count it, to inject
faults into it, to route ECS calls to the shims), which account and region it is for, and how to
shape an error so that botocore parses it into a ``ClientError`` with the right code.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import botocore.session
from moto.core.responses import BaseResponse

__all__ = ["AwsRequest", "RawResponse", "error_response", "json_response", "parse_request", "read_body"]

# "Credential=AKID/20240101/us-east-1/ecs/aws4_request"
_SCOPE = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/aws4_request")


@dataclass
class RawResponse:
    """A complete HTTP response, buffered so that it can be produced while the moto lock is held."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), if any."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)


@dataclass(frozen=True)
class AwsRequest:
    """An AWS API request as the sandbox sees it."""

    service: str  # signing name, e.g. "ecs", "batch", "logs", "ec2"
    operation: str  # e.g. "RunTask"; "" when it could not be determined
    protocol: str  # botocore protocol: json, rest-json, query, ec2, rest-xml
    region: str
    account_id: str
    body: bytes

    @property
    def key(self) -> str:
        """``service:Operation``, the key used for call counting and fault matching."""
        return f"{self.service}:{self.operation or '?'}"

    def json(self) -> dict[str, Any]:
        """The JSON body (JSON protocols); an empty body is ``{}``."""
        if not self.body.strip():
            return {}
        value = json.loads(self.body)
        if not isinstance(value, dict):
            raise ValueError("request body is not a JSON object")
        return value


def read_body(environ: dict[str, Any]) -> bytes:
    """Read the request body and put a fresh stream back so the body can be read again."""
    stream = environ.get("wsgi.input")
    body = b""
    if stream is not None:
        length = environ.get("CONTENT_LENGTH") or ""
        if length.isdigit():
            body = stream.read(int(length))
        elif environ.get("wsgi.input_terminated"):
            # Chunked uploads: werkzeug marks the stream as terminated, so read() ends.
            body = stream.read()
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


@functools.lru_cache(maxsize=64)
def _service_model(signing_name: str) -> Any:
    try:
        return botocore.session.get_session().get_service_model(signing_name)
    except Exception:  # unknown to botocore under this name: treated generically
        return None


@functools.lru_cache(maxsize=64)
def _rest_routes(signing_name: str) -> list[tuple[str, re.Pattern[str], str]]:
    """``(method, path regex, operation)`` for a REST service, most specific first."""
    model = _service_model(signing_name)
    if model is None:
        return []
    routes: list[tuple[int, str, re.Pattern[str], str]] = []
    for name in model.operation_names:
        http = model.operation_model(name).http
        uri = http.get("requestUri", "/").split("?", 1)[0]
        regex = "".join(
            (".+" if part.endswith("+}") else "[^/]+") if part.startswith("{") else re.escape(part)
            for part in re.split(r"(\{[^}]+\})", uri)
        )
        literal = len(re.sub(r"\{[^}]+\}", "", uri))
        routes.append((literal, http.get("method", "POST"), re.compile(f"^{regex}/?$"), name))
    routes.sort(key=lambda r: -r[0])
    return [(method, regex, name) for _, method, regex, name in routes]


def _account_id(environ: dict[str, Any], access_key: str) -> str:
    # The same precedence moto uses (BaseResponse.get_current_account), so the shims read the
    # backend moto writes to.
    if "MOTO_ACCOUNT_ID" in os.environ:
        return os.environ["MOTO_ACCOUNT_ID"]
    header = environ.get("HTTP_X_MOTO_ACCOUNT_ID")
    if header:
        return str(header)
    if not BaseResponse.access_key_regex.search(environ.get("HTTP_AUTHORIZATION", "")):
        access_key = "AKIAEXAMPLE"
    from moto.iam.models import get_account_id_from

    return get_account_id_from(access_key)


def parse_request(environ: dict[str, Any], body: bytes) -> AwsRequest | None:
    """Recognise a signed AWS API request; ``None`` for anything else (moto-api, dashboards)."""
    match = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    if match is None:
        return None
    access_key, region, service = match.group(1), match.group(2), match.group(3)
    model = _service_model(service)
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    protocol = model.protocol if model is not None else ("json" if target else "query")

    operation = ""
    if target:
        operation = target.rsplit(".", 1)[-1]
    elif protocol in ("query", "ec2"):
        params = parse_qs(environ.get("QUERY_STRING", ""))
        if "application/x-www-form-urlencoded" in environ.get("CONTENT_TYPE", ""):
            params.update(parse_qs(body.decode("utf-8", "replace")))
        operation = (params.get("Action") or [""])[0]
    elif protocol in ("rest-json", "rest-xml"):
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/")
        operation = next((name for m, regex, name in _rest_routes(service) if m == method and regex.match(path)), "")
    return AwsRequest(
        service=service,
        operation=operation,
        protocol=protocol,
        region=region,
        account_id=_account_id(environ, access_key),
        body=body,
    )


def json_response(payload: dict[str, Any], *, status: int = 200, protocol: str = "json") -> RawResponse:
    """A JSON response with the content type botocore expects for ``protocol``."""
    content_type = "application/x-amz-json-1.1" if protocol == "json" else "application/json"
    return RawResponse(
        status=status,
        headers=[("Content-Type", content_type), ("x-amzn-RequestId", str(uuid.uuid4()))],
        body=json.dumps(payload).encode(),
    )


def error_response(
    protocol: str, code: str, message: str, *, status: int = 400, extra: dict[str, Any] | None = None
) -> RawResponse:
    """An error in the shape the real service uses, so botocore raises ``ClientError(code)``.

    JSON services carry the code twice (``x-amzn-ErrorType`` header and ``__type``), like AWS.
    Query (STS, IAM) and EC2 services answer in XML.
    """
    request_id = str(uuid.uuid4())
    if protocol in ("json", "rest-json"):
        response = json_response(
            {"__type": code, "message": message, **(extra or {})}, status=status, protocol=protocol
        )
        response.headers.append(("x-amzn-ErrorType", code))
        return response
    message_xml = message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if protocol == "ec2":
        body = (
            f"<?xml version='1.0' encoding='UTF-8'?><Response><Errors><Error><Code>{code}</Code>"
            f"<Message>{message_xml}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>"
        )
    else:
        kind = "Receiver" if status >= 500 else "Sender"
        body = (
            f"<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code><Message>{message_xml}</Message>"
            f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>"
        )
    return RawResponse(
        status=status,
        headers=[("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)],
        body=body.encode(),
    )
