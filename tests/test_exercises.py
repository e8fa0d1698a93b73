"""bitlab.exercises: answers computed by bitlab, checks that print a verdict and never the answer."""

from __future__ import annotations

import pytest

from bitlab import Machine, exercises
from bitlab.exercises import EXERCISES, check, is_correct, solution
from bitlab.scenarios import run_seed


def test_dirty_count_matches_the_bitmap_a_machine_reports() -> None:
    vm = Machine()
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "n", "size": 64 << 20})
    vm.qmp("block-dirty-bitmap-add", {"node": "n", "name": "b"})
    for offset, length in exercises.DIRTY_COUNT_WRITES:
        vm.write("n", offset, length)
    count = vm.qmp("query-named-block-nodes", {"flat": True})[0]["dirty-bitmaps"][0]["count"]
    assert solution("dirty-count") == count
    # chunks {0, 1} ∪ {16..31} ∪ {511, 512}: 20 chunks of 64 KiB, as notebook 01 explains
    assert count == 20 * 65536


def test_seed_answers_follow_run_seed() -> None:
    assert solution("grouped-delete") == run_seed("grouped", failing="drive0").delete
    assert solution("individual-keep") == run_seed("individual", failing="drive0").keep
    assert solution("grouped-delete") == ["d0-incr-1.qcow2", "d1-incr-1.qcow2"]
    assert solution("individual-keep") == ["d1-incr-1.qcow2"]


def test_incremental_len_counts_each_dirty_chunk_once() -> None:
    # 0..1M and 512k..1.5M overlap: 24 chunks; 100k at 10M: 2 chunks (10M+100k ends in the second)
    assert solution("incremental-len") == (24 + 2) * 65536


def test_rollback_restores_the_cleared_bitmap() -> None:
    assert solution("rollback-count") == 3 << 20


def test_sync_modes_differ_after_a_failed_read() -> None:
    assert solution("sync-on-success") == 36 * 65536  # nothing cleared: 4 + 32 chunks
    assert 0 < solution("sync-always") < solution("sync-on-success")


def test_sync_modes_come_from_the_schema() -> None:
    assert sorted(solution("sync-modes")) == ["bitmap", "full", "incremental", "none", "top"]


def test_grouped_cancel_offset_is_the_dirty_bytes() -> None:
    assert solution("grouped-cancel-offset") == run_seed("grouped").drives["drive0"].count_before


def test_check_prints_correct_for_the_right_answer(capsys: pytest.CaptureFixture[str]) -> None:
    check("dirty-count", solution("dirty-count"))
    assert capsys.readouterr().out == "✓ correct\n"


def test_check_gives_a_hint_and_hides_the_answer(capsys: pytest.CaptureFixture[str]) -> None:
    wrong = solution("dirty-count") + 65536
    check("dirty-count", wrong)
    out = capsys.readouterr().out
    assert out.startswith("✗ not yet")
    assert EXERCISES["dirty-count"].hint in out
    assert str(solution("dirty-count")) not in out


def test_check_without_an_answer_prompts(capsys: pytest.CaptureFixture[str]) -> None:
    check("rollback-count", None)
    assert capsys.readouterr().out.startswith("✎ No answer yet")


def test_unordered_answers_ignore_order_but_not_content() -> None:
    assert is_correct("grouped-delete", ["d1-incr-1.qcow2", "d0-incr-1.qcow2"])
    assert not is_correct("grouped-delete", ["d1-incr-1.qcow2"])
    assert not is_correct("dirty-count", str(solution("dirty-count")))


def test_unknown_exercise_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="dirty-count"):
        check("nope", 1)


@pytest.mark.qemu
@pytest.mark.parametrize("name", ["start-count", "dirty-count", "rollback-count", "sync-on-success", "sync-always",
                                  "grouped-cancel-offset", "reopen-count", "throttled-backup-seconds",
                                  "mirror-len", "commit-count"])
def test_answers_are_the_same_on_real_qemu(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = solution(name)
    monkeypatch.setenv("BITLAB_BACKEND", "qemu")
    assert EXERCISES[name].solve() == expected


def test_start_count_is_two_chunks() -> None:
    # 64 KiB at 0 -> chunk 0; one byte at 100 KiB -> chunk 1
    assert solution("start-count") == 2 * 65536


def test_reopen_count_is_eighteen_chunks() -> None:
    # the first boot's 1 MiB: chunks 0-15; the read-only boot: nothing; 64 KiB at 1056 KiB: chunks 16 and 17
    assert solution("reopen-count") == 18 * 65536


def test_throttled_backup_takes_three_whole_seconds() -> None:
    # eight 1 MiB writes (the seven empty MiB as zero writes, which count as much) at 2 MiB/s, the bucket holding
    # 0.2 MiB: the first at once, the second after 0.4 s, each later one 0.5 s after the one before: 3.4 s
    assert solution("throttled-backup-seconds") == 3


def test_mirror_len_is_the_allocated_clusters() -> None:
    # qcow2 clusters of 64 KiB: 4k at 0 -> 0; 64k at 100k -> 1, 2; 1M at 1M -> 16-31; 1M at 1536k -> 24-39;
    # one byte at 40M -> 640: 28 clusters; the new image reads as zeroes, so nothing else is copied
    assert solution("mirror-len") == 28 * 65536


def test_commit_count_is_the_union_of_b0_and_the_overlays_clusters() -> None:
    # before the snapshot (recorded by b0): 64k at 0 -> cluster 0; 128k at 3M -> 48, 49. Into the overlay (copied
    # into the base by the commit, whole clusters): 4k at 0 -> 0; 4k at 1M -> 16; 128k at 3040k -> 47, 48, 49.
    # {0, 16, 47, 48, 49}: 5 clusters
    assert solution("commit-count") == 5 * 65536
