"""Redis URLs as logs and errors show them: no user, no password, whatever the scheme."""

from __future__ import annotations

import pytest

from dts.errors import InvalidArgument
from dts.queue.redis import check_redis_url, redacted_url

SECRET = "s3cr%2Ft"  # a password with an escaped '/', as a URL must carry it


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"redis+sentinel://dts:{SECRET}@s1:26379,s2:26379/dts/0",
            "redis+sentinel://***@s1:26379,s2:26379/dts/0",
        ),
        (
            "rediss+sentinel://s1/dts?sentinel_password=pw&ssl_ca_certs=/ca.pem",
            "rediss+sentinel://s1/dts?sentinel_password=***&ssl_ca_certs=/ca.pem",
        ),
        (
            "redis+sentinel://s1/dts?password=a&ssl_password=b&sentinel_password=c",
            "redis+sentinel://s1/dts?password=***&ssl_password=***&sentinel_password=***",
        ),
        ("redis+sentinel://u:p/w@s1/dts", "redis+sentinel://***@s1/dts"),  # unescaped /
        ("redis+sentinel://u:p?w@s1/dts", "redis+sentinel://***@s1/dts"),  # unescaped ?
        ("redis://u:p/w@h:6379/0", "redis://***@h:6379/0"),
        ("redis://h:6379/0?db=1&password=x", "redis://h:6379/0?db=1&password=***"),
        ("redis://h:6379/0?passwordless=1", "redis://h:6379/0?passwordless=1"),
    ],
)
def test_urls_are_logged_without_credentials(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        f"redis://dts:{SECRET}@h:port/0",
        f"http://dts:{SECRET}@h/0",
        "mysql://dts:s3cr?t@h/0",  # an unescaped '?' in the password
    ],
)
def test_refused_urls_are_shown_without_credentials(url: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        check_redis_url(url)
    assert str(e.value).startswith("--redis-url"), e.value
    for part in ("s3cr", "t@h"):
        assert part not in str(e.value), e.value
