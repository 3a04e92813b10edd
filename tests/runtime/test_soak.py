"""The soak in its short form (`neurosurgeon bench soak` runs it for minutes): devices and abusive
clients against a real server over loopback, restarted under traffic. Nothing wrong, nothing lost,
no descriptor or thread leak, memory flat after warm-up."""

from __future__ import annotations

import pytest
from neurosurgeon.tools.bench.soak import SoakOptions, bench_soak, soak_table

pytestmark = pytest.mark.slow

RSS_SLACK_MIB = 16.0  # allocator noise over a short run; a leak per request would be far above it


def test_a_short_soak_answers_everything_right_and_leaks_nothing(tmp_path):
    result = bench_soak(SoakOptions(seconds=24, devices=4, abusers=4, workdir=str(tmp_path)), log=lambda _: None)
    report = soak_table(result)
    assert result.wrong == 0 and result.lost == 0, report
    # the server answered, and the devices answered themselves while it was away
    assert result.by_server > 100 and result.by_fallback > 0, report
    assert all(n > 5 for n in result.abuse.values()), report
    assert result.slow_answers_ok > 0 and result.slow_answers_bad == 0, report
    assert len(result.servers) == 2, report
    for life in result.servers:
        assert life.end.fds == life.warm.fds and life.end.threads == life.warm.threads, report
        assert life.end.rss_mib - life.warm.rss_mib < RSS_SLACK_MIB, report
    assert result.client_end.fds == result.client_start.fds, report
    assert result.client_end.threads == result.client_start.threads, report
