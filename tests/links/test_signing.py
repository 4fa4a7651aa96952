"""LinkSigner as a unit on real stores: sign and verify, expiry, tampering, key rotation,
revocation and single use (one winner among simultaneous uses)."""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.servers import wait_until
from uploadmeter.links import (
    LinkExpired,
    LinkInvalid,
    LinkRevoked,
    LinkSigner,
    LinkUsed,
)
from uploadmeter.stores import ProgressStore

KEY = "link test key"


def test_a_signed_link_verifies_to_what_it_stands_for(store: ProgressStore) -> None:
    signer = LinkSigner(KEY, store)
    link = signer.create("files/report.pdf", expires_in=60, filename="r.pdf", share="s1")
    assert "report" not in link.token  # the URL never carries the target
    assert link.expires_at == pytest.approx(time.time() + 60, abs=1)  # rounded to ms
    assert signer.verify(link.token) == link
    assert signer.verify(link.token) == link  # verifying does not use it up


def test_every_link_is_a_new_token(store: ProgressStore) -> None:
    signer = LinkSigner(KEY, store)
    first, second = signer.create("t"), signer.create("t")
    assert first.id != second.id and first.token != second.token


@pytest.mark.parametrize("expires_in", [0, -1])
def test_a_link_needs_a_positive_lifetime(store: ProgressStore, expires_in: float) -> None:
    with pytest.raises(ValueError):
        LinkSigner(KEY, store).create("t", expires_in=expires_in)


@pytest.mark.parametrize("key", ["", b"", []])
def test_signing_needs_a_key(store: ProgressStore, key: str | bytes | list[str]) -> None:
    with pytest.raises(ValueError):
        LinkSigner(key, store)


def test_an_expired_link_is_refused_with_410(store: ProgressStore) -> None:
    signer = LinkSigner(KEY, store)
    link = signer.create("t", expires_in=0.3)
    assert signer.verify(link.token).target == "t"
    wait_until(lambda: time.time() > link.expires_at, timeout=5)
    with pytest.raises(LinkExpired) as refused:
        signer.verify(link.token)
    assert refused.value.status == 410
    assert signer.revoke(link.token) is False  # nothing left to revoke


def tampered(token: str) -> list[str]:
    payload, _, signature = token.rpartition(".")
    # The signature's first character: all six of its bits are signature (the last one's
    # low bits are base64 padding, so changing it can leave the token valid).
    flipped = f"{payload}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    return [flipped, payload, token + "x", "." + signature, "", "not a token", token[::-1]]


def test_a_tampered_token_is_refused_with_403(store: ProgressStore) -> None:
    signer = LinkSigner(KEY, store)
    link = signer.create("t")
    for token in tampered(link.token):
        with pytest.raises(LinkInvalid) as refused:
            signer.verify(token)
        assert refused.value.status == 403, token
    assert signer.verify(link.token).target == "t"


def test_a_token_of_another_key_or_salt_is_refused(store: ProgressStore) -> None:
    link = LinkSigner(KEY, store).create("t")
    for other in (LinkSigner("another key", store), LinkSigner(KEY, store, salt="other")):
        with pytest.raises(LinkInvalid):
            other.verify(link.token)


def test_key_rotation_the_last_key_signs_every_key_verifies(store: ProgressStore) -> None:
    old_link = LinkSigner("old key", store).create("old")
    rotated = LinkSigner(["old key", "new key"], store)
    assert rotated.verify(old_link.token).target == "old"  # links out there keep working
    new_link = rotated.create("new")
    assert LinkSigner("new key", store).verify(new_link.token).target == "new"
    with pytest.raises(LinkInvalid):
        LinkSigner("old key", store).verify(new_link.token)
    with pytest.raises(LinkInvalid):  # the old key dropped: its links end
        LinkSigner("new key", store).verify(old_link.token)


def test_a_revoked_link_is_refused_with_410(store: ProgressStore) -> None:
    signer = LinkSigner(KEY, store)
    by_token, by_id, kept = signer.create("a"), signer.create("b"), signer.create("c")
    assert signer.revoke(by_token.token) is True
    assert signer.revoke(by_id.id) is True
    assert signer.revoke(by_token.token) is False  # already revoked
    assert signer.revoke("no-such-link") is False
    for link in (by_token, by_id):
        with pytest.raises(LinkRevoked) as refused:
            signer.verify(link.token)
        assert refused.value.status == 410
    assert signer.verify(kept.token).target == "c"


def test_a_link_the_store_does_not_know_is_refused(store: ProgressStore) -> None:
    signer = LinkSigner(KEY, store)
    link = signer.create("t")
    store.delete(f"link:{link.id}")  # evicted, or signed against another store
    with pytest.raises(LinkRevoked):
        signer.verify(link.token)


def test_a_single_use_link_is_good_once(store: ProgressStore) -> None:
    signer = LinkSigner(KEY, store)
    link = signer.verify(signer.create("t", single_use=True).token)
    assert link.single_use
    signer.use(link)
    with pytest.raises(LinkUsed) as refused:
        signer.verify(link.token)
    assert refused.value.status == 410
    with pytest.raises(LinkUsed):
        signer.use(link)
    signer.unuse(link)  # nothing could be sent: the link is given back
    assert signer.verify(link.token) == link
    signer.use(link)
    with pytest.raises(LinkUsed):
        signer.verify(link.token)


def test_a_reusable_link_is_not_used_up(store: ProgressStore) -> None:
    signer = LinkSigner(KEY, store)
    link = signer.create("t")
    for _ in range(3):
        signer.use(signer.verify(link.token))
    assert signer.verify(link.token) == link


def test_simultaneous_uses_of_a_single_use_link_have_one_winner(store: ProgressStore) -> None:
    signer = LinkSigner(KEY, store)
    link = signer.create("t", single_use=True)
    users = 8
    start = threading.Barrier(users)
    outcomes: list[str] = []
    lock = threading.Lock()

    def use() -> None:
        start.wait(timeout=10)
        try:
            signer.use(link)
            outcome = "used"
        except LinkUsed:
            outcome = "refused"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=use) for _ in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(outcomes) == ["refused"] * (users - 1) + ["used"]
