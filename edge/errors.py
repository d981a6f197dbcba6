"""What the edge refuses, and the one table turning that into HTTP answers.

    EdgeRejection
    ├── NoRoute              404  no handler for the path (its body is never read)
    ├── MethodNotAllowed     405  a known path, a method its handler does not take
    ├── UnknownApp           404  the URL names no configured app
    ├── BadParameters        400  missing or repeated query parameters
    ├── SignatureMismatch    403  signature or msg_signature missing or does not verify
    ├── StaleTimestamp       403  the signed timestamp is too far from now
    ├── ReplayedPush         403  a spooled push's timestamp and nonce with another body
    ├── BadPayload           400  unsafe or malformed body, undecryptable ciphertext
    ├── PayloadTooLarge      413  body over the configured cap
    ├── LengthRequired       411  a push without Content-Length (WeChat always sends one)
    ├── CoreRejected         403/400  core refused the message for good (replay, malformed)
    ├── CoreRefused          core refused a web-login call; `reason` is core's ErrorReason
    ├── CoreUnreachable      503  core did not answer: the handler spools the push instead
    └── SpoolFailed          503  core unreachable and the spool could not take the push

Every rejection has a short `reason` label for the metric and the log line; the HTTP
body never says more than the status text, and never carries a stack trace.
"""

from __future__ import annotations

__all__ = [
    "BadParameters",
    "BadPayload",
    "CoreRefused",
    "CoreRejected",
    "CoreUnreachable",
    "EdgeRejection",
    "LengthRequired",
    "MethodNotAllowed",
    "NoRoute",
    "PayloadTooLarge",
    "ReplayedPush",
    "SignatureMismatch",
    "SpoolFailed",
    "StaleTimestamp",
    "UnknownApp",
]


class EdgeRejection(Exception):
    """A push or verification the edge refuses; `status` is the HTTP answer."""

    status = 400

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class NoRoute(EdgeRejection):
    """No handler serves the path."""

    status = 404


class MethodNotAllowed(EdgeRejection):
    """The path's handler does not take the request's method."""

    status = 405


class UnknownApp(EdgeRejection):
    """No app with this id is configured."""

    status = 404


class BadParameters(EdgeRejection):
    """Query parameters are missing or repeated."""

    status = 400


class SignatureMismatch(EdgeRejection):
    """The signature is missing or does not verify."""

    status = 403


class StaleTimestamp(EdgeRejection):
    """The signed timestamp is further from now than the configured window."""

    status = 403


class ReplayedPush(EdgeRejection):
    """A push reuses the timestamp and nonce of a spooled push with another body."""

    status = 403


class BadPayload(EdgeRejection):
    """The body is unsafe, malformed or cannot be decrypted."""

    status = 400


class PayloadTooLarge(EdgeRejection):
    """The body is over the cap."""

    status = 413


class LengthRequired(EdgeRejection):
    """A push without Content-Length: refused before reading, so the size cap holds."""

    status = 411


class CoreRejected(EdgeRejection):
    """Core refused this message for good; spooling it would not help."""

    def __init__(self, reason: str, detail: str = "", *, status: int) -> None:
        super().__init__(reason, detail)
        self.status = status


class CoreRefused(EdgeRejection):
    """Core answered a web-login call with an error; `reason` is its ErrorReason name."""

    status = 400


class CoreUnreachable(EdgeRejection):
    """Core did not answer in time or is unreachable: the push is spooled, and WeChat is
    answered as if core had taken it."""

    status = 503


class SpoolFailed(EdgeRejection):
    """Core is unreachable and the spool could not take the push either: WeChat gets a
    503 and retries it."""

    status = 503
