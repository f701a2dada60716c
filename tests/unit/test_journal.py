"""The operation journal: one JSON line per operation, in every directory asked for."""

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
