"""The kernel's NFQUEUE statistics (/proc/net/netfilter/nfnetlink_queue) parse."""

from __future__ import annotations


def test_queue_stats_parse() -> None:
    from ips.kernel.probe import QueueStats, parse_queue_stats, read_queue_stats

    text = (
        "    0  31337     0 2  1500     0     0       42  1\n"
        "    3      0     5 2 65531     7     1        9  1\n"
    )
    assert parse_queue_stats(text) == {
        0: QueueStats(0, 31337, 0, 2, 1500, 0, 0, 42),
        3: QueueStats(3, 0, 5, 2, 65531, 7, 1, 9),
    }
    assert read_queue_stats("/nonexistent/nfnetlink_queue") == {}
