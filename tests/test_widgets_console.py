"""QMPConsole driven through its controls; input parsing never evaluates anything."""

import json

import pytest

from bitlab.widgets import QMPConsole
from bitlab.widgets.console import EXAMPLES, parse_input


def test_parse_json_and_shorthand():
    assert parse_input('  {"execute": "query-block"} ') == {"execute": "query-block"}
    assert parse_input("query-jobs") == {"execute": "query-jobs"}
    assert parse_input('block-dirty-bitmap-add {"node": "drive0", "name": "b"}') == {
        "execute": "block-dirty-bitmap-add", "arguments": {"node": "drive0", "name": "b"}}
    assert parse_input("blockdev-backup device=drive0 target=t sync=full speed=0 auto-finalize=false "
                       "x-perf.max-workers=1 filter-node-name=null") == {
        "execute": "blockdev-backup",
        "arguments": {"device": "drive0", "target": "t", "sync": "full", "speed": 0, "auto-finalize": False,
                      "x-perf": {"max-workers": 1}, "filter-node-name": None}}


@pytest.mark.parametrize("text,reason", [
    ("", "type a QMP command"),
    ("[1, 2]", "a QMP message is a JSON object"),
    ('"query-block"', "a QMP message is a JSON object"),
    ('{"execute": "query-block"', "Expecting ','"),
    ("query-block node", "expected key=value, not 'node'"),
    ("x a=1 a.b=2", "nests under a value that is not an object"),
])
def test_parse_errors(text, reason):
    with pytest.raises(ValueError) as err:
        parse_input(text)
    assert reason in str(err.value)


def test_python_is_just_an_unknown_command():
    c = QMPConsole()
    text = "__import__('os').system('touch\\x20/tmp/bitlab-pwned')"
    assert parse_input(text) == {"execute": text}
    assert run(c, text) == {"error": {"class": "CommandNotFound", "desc": f"The command {text} has not been found"}}


def test_any_object_is_sent_as_typed():
    # QEMU itself answers a message without "execute" (the console does not second-guess it)
    assert parse_input('{"id": 1}') == {"id": 1}


def run(console, text):
    console.input.value = text
    console.send.click()
    return console.result


def test_send_reply_events_history_examples():
    c = QMPConsole()
    assert c.reply.value == "" and c.sent == []
    assert run(c, "block-dirty-bitmap-add node=drive0 name=bitmap0 granularity=64000") == {
        "error": {"class": "GenericError", "desc": "Granularity must be power of 2 and at least 512"}}
    assert "Granularity must be power of 2 and at least 512" in c.reply.value
    assert run(c, EXAMPLES["add a bitmap"]) == {"return": {}}
    assert run(c, EXAMPLES["guest write (HMP qemu-io)"]) == {"return": ""}
    counts = run(c, "query-block")["return"]
    assert [b["inserted"]["dirty-bitmaps"] for b in counts if b["device"] == "drive0"] == [
        [{"name": "bitmap0", "recording": True, "persistent": False, "busy": False, "granularity": 65536,
          "count": 65536}]]
    c.examples.value = EXAMPLES["full backup"]
    assert c.input.value == EXAMPLES["full backup"]
    assert run(c, c.input.value) == {"return": {}}
    assert [e["event"] for e in c.last_events if e["event"] != "JOB_STATUS_CHANGE"] == ["BLOCK_JOB_COMPLETED"]
    done = next(e for e in c.last_events if e["event"] == "BLOCK_JOB_COMPLETED")["data"]
    assert (done["device"], done["len"], done["offset"]) == ("drive0", 67108864, 67108864)
    assert f"Events ({len(c.last_events)})" in c.events.value and len(c.last_events) == 9
    assert run(c, "query-jobs") == {"return": []}
    assert "<i>none</i>" in c.events.value
    assert c.sent[-1] == {"execute": "query-jobs"} and len(c.replies) == len(c.sent) == 6
    # history: newest last; previous/next walk it, picking one refills the input
    assert c.history.options[-1] == "query-jobs" and len(c.history.options) == 6
    c.previous.click()
    assert c.input.value == "query-jobs"
    c.previous.click()
    assert c.input.value == EXAMPLES["full backup"]
    c.next.click()
    assert c.input.value == "query-jobs"
    c.history.value = EXAMPLES["add a bitmap"]
    assert c.input.value == EXAMPLES["add a bitmap"]


def test_bad_input_is_not_sent():
    c = QMPConsole()
    c.input.value = "not json {"
    c.send.click()
    assert c.sent == [] and c.history.options == ()
    assert c.reply.value == "<b>Error:</b> <code>not sent: expected key=value, not &#x27;json&#x27;</code>"


def test_jobs_wait_for_run_when_asked():
    c = QMPConsole()
    c.run_jobs.value = False
    run(c, EXAMPLES["full backup"])
    assert "BLOCK_JOB_COMPLETED" not in [e["event"] for e in c.last_events]
    assert [j["status"] for j in run(c, "query-jobs")["return"]] == ["running"]
    c.run_jobs.value = True
    run(c, "query-jobs")  # answered first, then the job runs to its end
    assert "BLOCK_JOB_COMPLETED" in [e["event"] for e in c.last_events]
    assert run(c, "query-jobs")["return"] == []


def test_the_create_examples_make_a_backup_target():
    """blockdev-create of a file, blockdev-add of it, blockdev-create of a qcow2 in it: QEMU's documented way."""
    c = QMPConsole()
    assert run(c, EXAMPLES["create a file (blockdev-create)"]) == {"return": {}}
    assert [e["data"]["status"] for e in c.last_events] == ["created", "running", "waiting", "pending", "concluded"]
    assert run(c, EXAMPLES["dismiss the create job"]) == {"return": {}}
    assert run(c, EXAMPLES["open the new file"]) == {"return": {}}
    assert run(c, EXAMPLES["create a qcow2 in it"]) == {"return": {}}
    assert run(c, "query-jobs")["return"] == [{"id": "create1", "type": "create", "status": "concluded",
                                               "current-progress": 1, "total-progress": 1}]
    assert run(c, "blockdev-add driver=qcow2 node-name=target file=target-file") == {"return": {}}


def test_every_example_parses():
    for text in EXAMPLES.values():
        assert parse_input(text)["execute"]
    assert json.loads(EXAMPLES["incremental transaction"])["arguments"]["properties"] == {"completion-mode": "grouped"}


@pytest.mark.qemu
def test_same_replies_on_real_qemu():
    sim, real = QMPConsole(), QMPConsole(backend="qemu")
    try:
        for text in (EXAMPLES["add a bitmap"], EXAMPLES["guest write (HMP qemu-io)"],
                     EXAMPLES["a mistake (bad granularity)"], EXAMPLES["bitmap sha256"], "query-jobs",
                     EXAMPLES["allocated stretches (HMP qemu-io map)"], EXAMPLES["grow the drive (block_resize)"]):
            assert run(real, text) == run(sim, text)
        sizes = [[b["inserted"]["image"]["virtual-size"] for b in run(c, "query-block")["return"]] for c in (real, sim)]
        assert sizes[0] == sizes[1] and sizes[0][0] == 68157440
        assert run(real, EXAMPLES["full backup"]) == run(sim, EXAMPLES["full backup"]) == {"return": {}}
        assert [e["event"] for e in real.last_events] == [e["event"] for e in sim.last_events]
    finally:
        real.close()
