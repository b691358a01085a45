"""The playbook helper itself: a story that holds passes, a wrong expectation fails with
the transcript as a diff, and every kind of step and expectation does what it says."""

from __future__ import annotations

import pytest
from packets import ping, tcp, udp
from playbook import (
    Playbook,
    accept,
    alert,
    block,
    drop,
    log,
    packet,
    reject,
    tick,
    unblock,
    wait,
)

from ips.engine import Engine, Meta
from ips.policy.resolve import load_policy_text

A, B = "10.0.0.1", "10.0.0.2"


def engine(text: str) -> Engine:
    return Engine(load_policy_text(text, "t.rules"))


def test_a_story_that_holds_passes() -> None:
    e = engine("accept proto tcp flags S\nset default drop")
    assert (
        Playbook(e)
        >> tcp(A, B, flags="S")
        << accept(line=1)
        >> tcp(A, B, flags="A")
        << drop(reason="default")
        >> udp(A, B)  # no verdict stated: left open; no effects either
    )


def test_a_wrong_verdict_fails_with_the_transcript_as_a_diff() -> None:
    story = Playbook(engine("accept proto tcp\nset default drop")) >> tcp(A, B) << drop()
    with pytest.raises(AssertionError) as failed:
        assert story
    text = str(failed.value)
    assert ">> tcp 10.0.0.1:40000 > 10.0.0.2:80 [S]  @t+0" in text
    assert "- << drop()" in text
    assert "+ << accept by line 1" in text


def test_a_wrong_line_fails() -> None:
    story = Playbook(engine("accept proto tcp\nset default drop")) >> tcp(A, B) << accept(line=2)
    with pytest.raises(AssertionError, match=r"- << accept\(line=2\)"):
        assert story


def test_an_unexpected_effect_fails_and_a_missing_one_too() -> None:
    e = engine('drop proto tcp alert "no" sid 7')
    with pytest.raises(AssertionError, match=r"\+ << Alert\('no' blocked"):
        assert Playbook(e) >> tcp(A, B) << drop()
    with pytest.raises(AssertionError, match=r"- << log\(\)"):
        assert Playbook(e) >> tcp(A, B) << drop() << alert(sid=7) << log()
    assert Playbook(e) >> tcp(A, B) << drop() << alert(sid=7, action="blocked")


def test_effects_are_matched_in_order_with_fields_and_predicates() -> None:
    e = engine('match proto tcp alert "seen" sid 42\nmatch proto tcp log\naccept proto tcp')
    assert (
        Playbook(e, now=3.0)
        >> tcp(A, B, 1000, 23)
        << accept(line=3)
        << alert(sid=42, src=A, check=lambda a: a.time == 3.0)
        << log(verdict="match")
    )
    with pytest.raises(AssertionError):
        assert Playbook(e) >> tcp(A, B) << log() << alert()  # the wrong order


def test_time_moves_by_step_wait_tick_and_at() -> None:
    e = engine("accept proto icmp limit 2/s per src else drop")
    story = Playbook(e, now=10.0)
    for _ in range(2):
        story >> ping(A, B) << accept(line=1)
    story >> ping(A, B) << drop()
    story >> wait(0.5) >> ping(A, B) << accept()  # one token came back
    story >> packet(ping(A, B), at=20.0) << accept()
    story >> tick(1.0)
    assert story
    assert [s.now for s in story.steps] == [10.0, 10.0, 10.0, 10.5, 10.5, 20.0, 21.0]


def test_meta_is_handed_over_and_shown() -> None:
    e = engine("accept in on eth0\nset default reject")
    story = Playbook(e) >> packet(udp(A, B), Meta(iif="eth0")) << accept(line=1)
    story >> packet(udp(A, B), Meta(iif="eth1")) << accept()
    with pytest.raises(AssertionError, match=r"\(in=eth1\)"):
        assert story
    assert story.last.verdict == "reject"


def test_blocks_and_unblocks_from_ticks() -> None:
    e = engine("table banned dynamic timeout 1h\ndrop from @banned\nset default accept")
    e.block(bytes([10, 0, 0, 1]), now=0.0, ttl=60.0)
    assert (
        Playbook(e)
        >> tcp(A, B)
        << drop(reason="blocked")
        >> tick(61)
        << unblock(A, reason="expired")
        >> tcp(A, B, 40001)
        << accept(reason="default")
    )
    with pytest.raises(AssertionError, match=r"- << block\(addr='10.0.0.1'\)"):
        assert Playbook(e) >> tick(1) << block(A)


def test_a_verdict_after_a_tick_or_before_anything_is_a_mistake_in_the_story() -> None:
    with pytest.raises(ValueError, match="only after it fed"):
        Playbook(engine("set default accept")) << accept()
    with pytest.raises(ValueError, match="time gives no verdict"):
        Playbook(engine("set default accept")) >> tick(1) << accept()


def test_reject_expectation_with_a_predicate_on_the_decision() -> None:
    e = engine("set default reject")
    assert Playbook(e) >> udp(A, B) << reject(check=lambda d: d.reply is not None)
    with pytest.raises(AssertionError, match="check="):
        assert Playbook(e) >> udp(A, B) << reject(check=lambda d: d.reply is None)
