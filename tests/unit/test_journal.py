"""The operation journal: one JSON line per operation, in every directory asked for."""

import os
import threading

import pytest

import journal


@pytest.fixture(autouse=True)
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("COORDINATED_OPS_ROOT", str(tmp_path))
    return tmp_path


def test_one_line_per_operation_locally_and_on_the_share(tmp_path):
    share = tmp_path / "share"
    with journal.operation("app/1", "restart", "v0", token=7, dirs=[share]) as entry:
        entry["version"] = "1.0.0"
    local = journal.read(journal.local_path())
    shared = journal.read(share / journal.JOURNAL_NAME)
    assert local == shared
    (line,) = local
    assert line["unit"] == "app/1"
    assert line["operation"] == "restart"
    assert line["engine"] == "v0"
    assert line["token"] == 7
    assert line["version"] == "1.0.0"
    assert line["result"] == "ok"
    assert line["start"] <= line["end"]


def test_a_failed_operation_is_recorded_and_the_error_propagates():
    with pytest.raises(RuntimeError), journal.operation("app/0", "restart", "v0"):
        raise RuntimeError("boom")
    (line,) = journal.read(journal.local_path())
    assert line["result"] == "failed"


def test_unwritable_share_does_not_lose_the_local_line(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with journal.operation("app/0", "restart", "v0", dirs=[blocker]):
        pass
    assert len(journal.read(journal.local_path())) == 1


def test_read_skips_garbage_lines(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"unit": "a/0"}\nnot json\n[1]\n{"unit": "a/1"}\n')
    assert [e["unit"] for e in journal.read(path)] == ["a/0", "a/1"]


# ------------------------------------------------------------------------------------------------
# A share other machines write to: what may be planted there
# ------------------------------------------------------------------------------------------------


def test_a_symlink_planted_on_the_share_is_not_followed(tmp_path, caplog):
    share = tmp_path / "share"
    share.mkdir()
    victim = tmp_path / "etc-passwd"
    victim.write_text("root:x:0:0::/root:/bin/bash\n")
    (share / journal.JOURNAL_NAME).symlink_to(victim)
    with journal.operation("app/0", "restart", "v0", token=3, dirs=[share]):
        pass
    assert victim.read_text() == "root:x:0:0::/root:/bin/bash\n"
    assert len(journal.read(journal.local_path())) == 1
    assert "could not write the operation journal" in caplog.text


def test_a_fifo_planted_on_the_share_is_refused_without_waiting(tmp_path, caplog):
    share = tmp_path / "share"
    share.mkdir()
    os.mkfifo(share / journal.JOURNAL_NAME)
    done = threading.Event()

    def run():
        with journal.operation("app/0", "restart", "v0", dirs=[share]):
            pass
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(10), "the journal blocked on a FIFO"
    assert "is not a regular file" in caplog.text
    assert len(journal.read(journal.local_path())) == 1


def test_a_cut_line_never_glues_to_the_next_one(tmp_path, monkeypatch, caplog):
    """A full share takes part of a line: that line is lost alone; the next one starts afresh."""
    share = tmp_path / "share"
    real_write = os.write

    def short_write(fd, data):
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(journal.os, "write", short_write)
    with journal.operation("app/0", "restart", "v0", token=1, dirs=[share]):
        pass
    monkeypatch.setattr(journal.os, "write", real_write)
    assert "took" in caplog.text and "the next line starts afresh" in caplog.text
    with journal.operation("app/1", "restart", "v0", token=2, dirs=[share]):
        pass
    entries = journal.read(share / journal.JOURNAL_NAME)
    assert [(e["unit"], e["token"]) for e in entries] == [("app/1", 2)]
    assert (share / journal.JOURNAL_NAME).read_bytes().endswith(b"}\n")
