"""The progress record's store encoding: whatever the names, it reads back as it was."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from uploadmeter.core import DONE, ERROR, UPLOADING, FieldProgress, UploadRecord

# Any text a part name, file name or content type may hold, lone surrogates excepted
# (the observer decodes strictly: it never produces them).
TEXT = st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs",)), max_size=40))

FIELDS = st.lists(
    st.builds(
        FieldProgress,
        name=TEXT,
        filename=TEXT,
        content_type=TEXT,
        bytes_received=st.integers(min_value=0, max_value=2**63),
        state=st.sampled_from([UPLOADING, DONE, ERROR]),
    ),
    max_size=20,
)


@settings(max_examples=300, deadline=None)
@given(FIELDS, TEXT)
def test_dumps_reads_back_as_json_dumps_of_the_raw_values(
    fields: list[FieldProgress], message: str | None
) -> None:
    record = UploadRecord(
        id="rec-test-1",
        state=ERROR,
        bytes_received=7,
        content_length=9,
        fields=fields,
        field_count=len(fields),
        error={"status": 400, "message": message},
        result={"saved": message},
    )
    text = record.dumps()
    stored = json.loads(text)
    assert stored.pop("fields") == [
        [f.name, f.filename, f.content_type, f.bytes_received, f.state] for f in fields
    ]
    raw = json.loads(json.dumps(record._raw(), ensure_ascii=False))
    del raw["fields"]
    assert stored == raw
    assert UploadRecord.loads(text) == record


def test_records_stored_with_field_objects_are_read_too() -> None:
    old = (
        '{"id":"rec-test-0","state":"done","fields":[{"name":"a","filename":"a.txt",'
        '"content_type":"text/plain","bytes_received":3,"state":"done"}]}'
    )
    assert UploadRecord.loads(old).fields == [FieldProgress("a", "a.txt", "text/plain", 3, DONE)]


def test_names_with_quotes_backslashes_and_markup_survive() -> None:
    name = 'a"b\\c</x>\u2028\x00é二'
    record = UploadRecord(id="rec-test-2", fields=[FieldProgress(name, name, name, 3, DONE)])
    back = UploadRecord.loads(record.dumps())
    assert back.fields[0] == FieldProgress(name, name, name, 3, DONE)


def test_a_record_written_again_shows_its_fields_as_they_are_now() -> None:
    # The store encoding reuses the JSON of fields that are done; what changed since the
    # last write (new fields, the open field's bytes and state, a replaced list) shows.
    fields = [FieldProgress(f"f{i}", None, None, 10, DONE) for i in range(3)]
    fields.append(FieldProgress("open", "a.bin", "text/plain", 1, UPLOADING))
    record = UploadRecord(id="rec-test-3", fields=fields)
    assert UploadRecord.loads(record.dumps()).fields == fields
    fields[3].bytes_received = 99
    fields[3].state = DONE
    fields.append(FieldProgress("next", None, None, 0, UPLOADING))
    assert UploadRecord.loads(record.dumps()).fields == fields
    record.fields = [FieldProgress("other", None, None, 5, DONE)]
    assert UploadRecord.loads(record.dumps()).fields == record.fields
    record.fields = []
    assert UploadRecord.loads(record.dumps()).fields == []


def test_states_are_a_str_enum_that_json_and_stored_records_agree_with() -> None:
    import uploadmeter
    from uploadmeter import State
    from uploadmeter.core import CANCELLED, PROCESSING

    assert "State" in uploadmeter.__all__
    assert [s.value for s in State] == [
        "unknown", "starting", "uploading", "processing", "done", "error", "cancelled"
    ]  # fmt: skip
    assert json.dumps(State.DONE) == '"done"' and str(State.DONE) == "done"
    assert f"{State.CANCELLED}" == "cancelled"
    assert (DONE, ERROR, UPLOADING, PROCESSING, CANCELLED) == (
        State.DONE, State.ERROR, State.UPLOADING, State.PROCESSING, State.CANCELLED
    )  # fmt: skip
    record = UploadRecord(id="abc", state=State.DONE, fields=[FieldProgress("f", state=DONE)])
    stored = record.dumps()
    assert '"state":"done"' in stored.replace(" ", "")
    loaded = UploadRecord.loads(stored)
    assert loaded.state == State.DONE and loaded.fields[0].state == "done"
    assert json.loads(json.dumps(record.to_json_dict()))["state"] == "done"
    assert b"<state>done</state>" in record.to_xml()
