"""The board's records as data: typed in memory, today's words on disk and in the reports."""

from __future__ import annotations

import json

import pytest

from conformance.reports.json_report import load_schema
from conformance.targets.target_state import (
    Exit,
    Note,
    TargetEvent,
    TargetEventKind,
    TargetState,
    TargetStatus,
    Unreachable,
)

STATE = TargetState(
    1,
    TargetStatus.RESTARTING,
    "127.0.0.1",
    7007,
    42,
    (Exit(0, "exited with code 1", 10.0, ("Traceback",), True),),
    "",
    (Note(TargetEventKind.DAEMONIZED, 0, "the server daemonized: PID 43 (srv)", 9.0),),
)


def test_TargetState_data_holds_the_words_its_file_always_held() -> None:
    data = json.loads(json.dumps(STATE.to_data()))
    assert data == {
        "generation": 1,
        "status": "restarting",
        "host": "127.0.0.1",
        "port": 7007,
        "pid": 42,
        "exits": [
            {
                "generation": 0,
                "how": "exited with code 1",
                "at": 10.0,
                "stderr": ["Traceback"],
                "restarted": True,
            }
        ],
        "down_reason": "",
        "notes": [
            {
                "kind": "daemonized",
                "generation": 0,
                "detail": "the server daemonized: PID 43 (srv)",
                "at": 9.0,
            }
        ],
    }
    assert TargetState.from_data(data) == STATE


def test_Note_is_only_daemonized_or_left_running() -> None:
    with pytest.raises(ValueError, match="not exited"):
        Note(TargetEventKind.EXITED, 0, "x", 1.0)


@pytest.mark.parametrize(
    ("accepts", "kind"), [(False, TargetEventKind.UNREACHABLE), (True, TargetEventKind.SILENT)]
)
def test_Unreachable_is_silent_when_the_target_still_accepts(
    accepts: bool, kind: TargetEventKind
) -> None:
    found = Unreachable("ECHO-BASIC-1", "refused", 5.0, accepts)
    data = json.loads(json.dumps(found.to_data()))
    assert data == {"check": "ECHO-BASIC-1", "detail": "refused", "at": 5.0, "accepts": accepts}
    assert Unreachable.from_data(data) == found
    assert found.kind is kind


def test_TargetEvent_data_holds_the_kind_the_report_schema_names() -> None:
    event = TargetEvent(
        TargetEventKind.LEFT_RUNNING, None, "PID 9 (srv) still runs", 3.0, "the run could not"
    )
    data = event.to_data()
    assert data == {
        "kind": "left running",
        "check": None,
        "detail": "PID 9 (srv) still runs",
        "at": 3.0,
        "outcome": "the run could not",
        "stderr": [],
    }
    assert TargetEvent.from_data(data) == event
    assert TargetEvent.of_note(STATE.notes[0]).line() == (
        "the server daemonized: PID 43 (srv); followed as the target: its PID is the one "
        "watched, measured and stopped"
    )


def test_TargetEventKind_is_what_the_report_schema_enumerates() -> None:
    schema = load_schema()
    assert [k.value for k in TargetEventKind] == schema["$defs"]["event"]["properties"]["kind"][
        "enum"
    ]
