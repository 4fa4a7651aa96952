"""ShareManager as a unit on real stores: create, extraction codes (checked in constant time,
bound to the share, rate-limited), download limits, views, expiry and revocation."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.servers import wait_until
from uploadmeter.links import ShareError, ShareManager
from uploadmeter.stores import ProgressStore

KEY = "share test key"
LOOK_ALIKES = set("01OIL")
READABLE = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # upper case and digits, no look-alikes


def refused(call: object, *args: object) -> ShareError:
    assert callable(call)
    with pytest.raises(ShareError) as error:
        call(*args)
    return error.value


def test_a_share_without_code_opens_and_counts(store: ProgressStore) -> None:
    shares = ShareManager(KEY, store)
    share = shares.create("files/a.txt", filename="a.txt", expires_in=60)
    assert share.code is None and not share.code_required
    assert share.expires_at == pytest.approx(time.time() + 60, abs=1)
    assert shares.viewed(share.id).views == 1
    assert shares.viewed(share.id).views == 2
    opened = shares.open(share.id, None)
    assert (opened.target, opened.filename, opened.downloads) == ("files/a.txt", "a.txt", 1)
    assert shares.get(share.id).downloads == 1
    assert shares.open(share.id, "any code").downloads == 2  # no code asked, none checked


def test_a_generated_code_is_readable_and_only_shown_once(store: ProgressStore) -> None:
    shares = ShareManager(KEY, store, code_length=8)
    share = shares.create("t", code=True)
    assert share.code is not None and len(share.code) == 8
    assert set(share.code) <= set(READABLE) and not LOOK_ALIKES & set(share.code)
    again = shares.get(share.id)
    assert again.code is None and again.code_required
    raw = store.get(f"share:{share.id}")
    assert raw is not None and share.code not in raw  # the store holds a signature only


def test_the_right_code_opens_in_any_case_and_spacing(store: ProgressStore) -> None:
    shares = ShareManager(KEY, store)
    share = shares.create("t", code="Tiger7")
    assert shares.open(share.id, "  tIGER7 ").downloads == 1


@pytest.mark.parametrize(("code", "message"), [("wrong", "not right"), (None, "Enter the code")])
def test_a_wrong_or_missing_code_is_refused_with_403(
    store: ProgressStore, code: str | None, message: str
) -> None:
    shares = ShareManager(KEY, store, max_attempts=5)
    share = shares.create("t", code="Tiger7")
    error = refused(shares.open, share.id, code)
    assert error.status == 403
    assert message in error.message and "4 attempt(s) left" in error.message
    assert shares.get(share.id).downloads == 0


def test_a_code_is_bound_to_its_share(store: ProgressStore) -> None:
    shares = ShareManager(KEY, store)
    first, second = shares.create("a", code="SAME1"), shares.create("b", code="SAME1")
    signatures = {json.loads(store.get(f"share:{s.id}") or "")["code"] for s in (first, second)}
    assert len(signatures) == 2  # one code, two signatures: a stolen record opens nothing else
    assert shares.open(first.id, "SAME1").target == "a"
    assert shares.open(second.id, "SAME1").target == "b"


def test_code_guesses_are_rate_limited_with_429(store: ProgressStore) -> None:
    shares = ShareManager(KEY, store, max_attempts=3, attempt_window=600)
    share = shares.create("t", code="Tiger7")
    assert [refused(shares.open, share.id, f"guess{i}").status for i in range(3)] == [403] * 3
    error = refused(shares.open, share.id, "Tiger7")  # even the right code, once over
    assert error.status == 429
    assert error.retry_after is not None and 1 <= error.retry_after <= 601
    assert shares.get(share.id).downloads == 0
    other = shares.create("t", code="Tiger7")  # the limit is per share
    assert shares.open(other.id, "Tiger7").downloads == 1


def test_key_rotation_keeps_codes_valid(store: ProgressStore) -> None:
    share = ShareManager("old key", store).create("t", code="Tiger7")
    assert ShareManager(["old key", "new key"], store).open(share.id, "Tiger7").downloads == 1
    assert refused(ShareManager("new key", store).open, share.id, "Tiger7").status == 403


def test_the_download_limit_ends_a_share_with_410(store: ProgressStore) -> None:
    shares = ShareManager(KEY, store)
    share = shares.create("t", max_downloads=2)
    assert [shares.open(share.id, None).downloads for _ in range(2)] == [1, 2]
    error = refused(shares.open, share.id, None)
    assert error.status == 410 and "limit" in error.message
    assert shares.get(share.id).max_downloads == 2


def test_a_revoked_share_is_refused_with_410(store: ProgressStore) -> None:
    shares = ShareManager(KEY, store)
    share = shares.create("t", code=True)
    assert shares.revoke(share.id) is True
    for call, args in ((shares.get, ()), (shares.viewed, ()), (shares.open, (share.code,))):
        error = refused(call, share.id, *args)
        assert error.status == 410 and "revoked" in error.message


def test_an_unknown_share_is_404(store: ProgressStore) -> None:
    shares = ShareManager(KEY, store)
    assert refused(shares.get, "no-such-share").status == 404
    assert refused(shares.open, "no-such-share", None).status == 404
    assert shares.revoke("no-such-share") is False


def test_an_expired_share_is_refused_with_410(store: ProgressStore) -> None:
    shares = ShareManager(KEY, store)
    share = shares.create("t", expires_in=0.3)
    assert shares.get(share.id).target == "t"
    wait_until(lambda: time.time() > share.expires_at, timeout=5)
    error = refused(shares.open, share.id, None)
    assert error.status == 410 and "expired" in error.message  # kept to say so, not 404


@pytest.mark.parametrize(
    "options", [{"expires_in": 0}, {"expires_in": -5}, {"code": "abc"}, {"code": "  ab  "}]
)
def test_bad_share_settings_are_refused(store: ProgressStore, options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ShareManager(KEY, store).create("t", **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("code", [False, "", None])
def test_no_code_means_none(store: ProgressStore, code: str | bool | None) -> None:
    shares = ShareManager(KEY, store)
    share = shares.create("t", code=code)
    assert share.code is None and not shares.get(share.id).code_required
