"""Value checks for subscribe-message data, one per keyword type (docs/wechat.md §5.4).

A subscribe template's keys are named after their type plus a number (`thing1`,
`time2`, `amount3`); WeChat refuses a value that breaks its type's rule with 47003
"argument invalid! data.<key>.value invalid". The `thing`, `number`, `symbol` and
`character_string` rules are documented on the bizsend page; the others come from the
mini program's doc and are marked unverified in docs/wechat.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, time

__all__ = ["VALUE_TYPES", "type_of_key", "valid_value"]

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_CHAR_STRING = re.compile(r"[\x21-\x7e]{1,32}")  # letters, digits and ASCII symbols
_LETTER = re.compile(r"[A-Za-z]{1,32}")
_AMOUNT = re.compile(r"[¥￥$€£]?(\d+(?:\.\d+)?)元?")
_PHONE = re.compile(r"[0-9+\-() ]{1,17}")
_CAR_MIDDLE = re.compile(r"[A-Za-z0-9]*")
_DATE = re.compile(
    r"(?P<y>\d{4})(?:年(?P<m1>\d{1,2})月(?P<d1>\d{1,2})日"
    r"|[-/](?P<m2>\d{1,2})[-/](?P<d2>\d{1,2}))"
)
_TIME = re.compile(r"(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2}))?")


def _printable(value: str, limit: int) -> bool:
    return 0 < len(value) <= limit and value.isprintable() and not value.isspace()


def _thing(value: str) -> bool:
    return _printable(value, 20)


def _number(value: str) -> bool:
    return bool(_NUMBER.fullmatch(value)) and sum(c.isdigit() for c in value) <= 32


def _character_string(value: str) -> bool:
    return bool(_CHAR_STRING.fullmatch(value))


def _letter(value: str) -> bool:
    return bool(_LETTER.fullmatch(value))


def _amount(value: str) -> bool:
    # One currency symbol, at most 10 digits (decimals allowed), optionally "元".
    match = _AMOUNT.fullmatch(value)
    return match is not None and sum(c.isdigit() for c in match.group(1)) <= 10


def _phrase(value: str) -> bool:
    return bool(_CJK.fullmatch(value)) and len(value) <= 5


def _name(value: str) -> bool:
    # At most 10 CJK characters, or at most 20 Latin letters and symbols.
    if _CJK.fullmatch(value):
        return len(value) <= 10
    return (
        _printable(value, 20)
        and value.isascii()
        and not any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
    )


def _symbol(value: str) -> bool:
    return 0 < len(value) <= 5 and all(not c.isalnum() and not c.isspace() for c in value)


def _phone_number(value: str) -> bool:
    return bool(_PHONE.fullmatch(value)) and any(c.isdigit() for c in value)


def _car_number(value: str) -> bool:
    # At most 8 characters; the first and last may be CJK (province, 学/警…), the rest
    # letters and digits, e.g. 粤A12345, 粤B1234学.
    if not 0 < len(value) <= 8:
        return False
    head = 1 if _CJK.fullmatch(value[0]) else 0
    tail = 1 if len(value) > head and _CJK.fullmatch(value[-1]) else 0
    return bool(_CAR_MIDDLE.fullmatch(value[head : len(value) - tail]))


def _valid_date(match: re.Match[str]) -> bool:
    month = match.group("m1") or match.group("m2")
    day = match.group("d1") or match.group("d2")
    try:
        date(int(match.group("y")), int(month), int(day))
    except ValueError:
        return False
    return True


def _valid_time(match: re.Match[str]) -> bool:
    try:
        time(int(match.group("h")), int(match.group("mi")), int(match.group("s") or 0))
    except ValueError:
        return False
    return True


def _point(value: str, *, needs_date: bool) -> bool:
    """A date, a time, or a date and a time, e.g. `2019年10月1日 15:01`."""
    value = value.strip()
    date_match = _DATE.match(value)
    rest = value
    if date_match is not None:
        if not _valid_date(date_match):
            return False
        rest = value[date_match.end() :].strip()
        if not rest:
            return True
    elif needs_date:
        return False
    time_match = _TIME.fullmatch(rest)
    return time_match is not None and _valid_time(time_match)


def _moment(needs_date: bool) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        # Either one point in time or a range of two joined by "~".
        parts = value.split("~")
        return 1 <= len(parts) <= 2 and all(_point(p, needs_date=needs_date) for p in parts)

    return check


VALUE_TYPES: dict[str, Callable[[str], bool]] = {
    "thing": _thing,
    "number": _number,
    "character_string": _character_string,
    # `time` is a 24-hour time, optionally with a date; the bizsend doc's own example
    # gives time2 a bare date ("2019年8月8日"), so a date alone passes too.
    "time": _moment(needs_date=False),
    "date": _moment(needs_date=True),
    "amount": _amount,
    "phrase": _phrase,
    "name": _name,
    "letter": _letter,
    "symbol": _symbol,
    "phone_number": _phone_number,
    "car_number": _car_number,
}


def type_of_key(key: str) -> str | None:
    """The value type a subscribe key names (`thing1` → `thing`), or None."""
    prefix = key.rstrip("0123456789")
    return prefix if prefix in VALUE_TYPES and prefix != key else None


def valid_value(kind: str, value: str) -> bool:
    """Whether `value` is acceptable for the keyword type `kind`."""
    check = VALUE_TYPES.get(kind)
    return check is not None and check(value)
