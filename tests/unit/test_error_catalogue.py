"""Every ErrorReason is mapped to a status, documented, and every errcode class is known."""

from __future__ import annotations

from pathlib import Path

from acme.wxplatform.v1 import error_reason_pb2
from wxplatform.core.servicers.errors import STATUS_BY_REASON
from wxplatform.wechat.errcodes import classify, split_rid

CATALOGUE = (Path(__file__).parents[2] / "docs" / "errors.md").read_text(encoding="utf-8")


def reasons() -> set[str]:
    values = error_reason_pb2.DESCRIPTOR.enum_types_by_name["ErrorReason"].values
    return {v.name.removeprefix("ERROR_REASON_") for v in values if v.number != 0}


def test_every_reason_has_a_status_and_a_catalogue_row() -> None:
    assert reasons() == set(STATUS_BY_REASON)
    for reason in reasons():
        row = next(
            (line for line in CATALOGUE.splitlines() if line.startswith(f"| `{reason}` |")), None
        )
        assert row is not None, f"{reason} missing from docs/errors.md"
        assert f"| {STATUS_BY_REASON[reason].name} |" in row, reason


def test_errcode_classes() -> None:
    assert classify(-1).retry == "backoff"
    assert {classify(code).retry for code in (40001, 40014, 42001)} == {"token"}
    assert classify(40001, token_endpoint=True).reason == "APP_CREDENTIALS_REJECTED"
    for code in (40003, 40037, 43004, 43101, 45015, 45047, 47003):
        assert classify(code).retry == "never", code
        assert classify(code).judges_request, code
        assert classify(code).reason in reasons(), code
    assert classify(45011).retry == "later"
    assert classify(45009).retry == "reset"
    assert not any(classify(code).judges_request for code in (-1, 40001, 45009, 45011))
    assert classify(99999).reason == "WECHAT_ERROR"


def test_rid_is_split_from_errmsg() -> None:
    assert split_rid("invalid openid rid: 64f0a1b2-1c2d3e4f-5a6b7c8d") == (
        "invalid openid",
        "64f0a1b2-1c2d3e4f-5a6b7c8d",
    )
    assert split_rid("ok") == ("ok", "")
