"""
The life cycle of one server connection, as the table the connection runs.

L{TABLE} maps every (L{Stage}, L{Input}) pair to a L{Row}: the stage the
connection moves to and the outputs it then runs, in order. The connection
(L{twistchat.server.protocol.ChatServerProtocol}) holds nothing but its stage
to say where it is: which slot it holds, whether its failed attempt is still to
be counted, whether it has been pinged or its transport is full are all stages.

A row may name a check: a method of the connection run before the move, which
either raises the peer's mistake (a refusal from the stage the connection is
in) or diverts to another input's row (a share with no free password-check slot
becomes L{Input.SHARE_WAITS}; a confirm with a wrong MAC L{Input.WRONG_PASSWORD}).
The move happens before the outputs run, so an input that an output causes
(the transport pausing us while we write) meets the stage already reached.

Rows are written out for what each stage accepts; the other pairs are filled
in by rule: a frame a stage does not accept is refused (C{unexpected}); a
closed connection ignores everything but its own close; any other input is a
bug of ours (logged with its traceback, and the peer gets C{internal}); both
are refused through the stage's L{Input.REFUSE} row.

This module is data and no I/O. docs/protocol.md section 4 shows L{describe},
and a test keeps the two the same (C{python -m twistchat.server.lifecycle}
prints it).
"""

from __future__ import annotations

import enum
from typing import NamedTuple

__all__ = ["FRAMES", "Input", "Row", "Stage", "TABLE", "describe", "explicit"]


class Stage(enum.Enum):
    """
    Where one connection is. The value is the C{State} phase name shown to
    peers and in logs (see the protocol module), a slash, and what the stage
    adds to it.
    """

    HELLO = "HELLO/waiting for hello"
    SHARE = "SHARE/waiting for the password share"
    QUEUED = "QUEUED/the share waits for a password-check slot of its address"
    GRANTED = "QUEUED/a slot is held; the share is answered in the next reactor turn"
    CONFIRM = "CONFIRM/verify sent, a slot is held; closing now counts a failed login"
    MEMBER = "MEMBER/in the room"
    MEMBER_PINGED = "MEMBER/in the room, pinged after being idle"
    MEMBER_PAUSED = "MEMBER/in the room, its transport full (deliveries are counted)"
    MEMBER_PINGED_PAUSED = "MEMBER/pinged, and its transport full"
    CLOSING = "CLOSED/closed by the server (never a member); waiting for the transport"
    LEAVING = "CLOSED/closed by the server after being a member; waiting for the transport"
    CLOSED = "CLOSED/connection lost"

    # Members are singletons: hash by identity, not by name in Python (a
    # delivery looks up one row per member).
    __hash__ = object.__hash__

    @property
    def phase(self) -> str:
        """
        The name of the L{twistchat.server.protocol.State} this stage refines.
        """
        return self.value.split("/", 1)[0]


class Input(enum.Enum):
    """
    What can happen to a connection. Frame inputs are named after the message
    type (see L{FRAMES}).
    """

    HELLO = "a hello frame"
    SHARE = "a share frame"
    CONFIRM = "a confirm frame"
    SEND = "a send frame"
    WHO = "a who frame"
    PING = "a ping frame"
    PONG = "a pong frame"
    # Outcomes a check diverts to.
    SHARE_WAITS = "share, no slot free"
    WRONG_PASSWORD = "confirm, wrong password"
    TURNED_AWAY = "confirm, right password, room full or name taken"
    OVER_RATE = "a request over the message rate"
    SLOW = "a delivery past the send-queue limit"
    # Events.
    SLOT = "a password-check slot frees up"
    ANSWER = "the reactor turn after the slot"
    TIMEOUT = "the connection's timer"
    TOO_LONG = "a frame header over the length limit"
    REFUSE = "a refusal: the peer's mistake, a limit, or our bug"
    ROOM_CLOSED = "the operator removed the room"
    SHUTDOWN = "the server stops"
    DELIVER = "a frame from the room"
    PAUSE = "the transport is full (pauseProducing, stopProducing)"
    RESUME = "the transport drained (resumeProducing)"
    ABORT = "the close grace period is over"
    LOST = "connection lost"

    __hash__ = object.__hash__  # as Stage's


#: Message type -> its input.
FRAMES: dict[str, Input] = {
    event.name.lower(): event
    for event in (Input.HELLO, Input.SHARE, Input.CONFIRM, Input.SEND, Input.WHO,
                  Input.PING, Input.PONG)
}


class Row(NamedTuple):
    """
    One transition: move to C{next}, then run C{outputs} in order. Each
    output and the check name a method C{_NAME} of the connection.
    """

    next: Stage
    outputs: tuple[str, ...] = ()
    check: str | None = None


# --- the rows -------------------------------------------------------------------

#: Outputs that leave each stage the connection can be closed from, and the
#: closed stage each goes to.
_EXIT: dict[Stage, tuple[tuple[str, ...], Stage]] = {
    Stage.HELLO: (("stop_timer",), Stage.CLOSING),
    Stage.SHARE: (("stop_timer",), Stage.CLOSING),
    Stage.QUEUED: (("leave_queue", "stop_timer"), Stage.CLOSING),
    Stage.GRANTED: (("release_slot", "stop_timer"), Stage.CLOSING),
    Stage.CONFIRM: (("count_unconfirmed", "release_slot", "stop_timer"), Stage.CLOSING),
}
_MEMBER_EXIT = (("leave_room", "stop_timer", "unregister"), Stage.LEAVING)
_MEMBERS = (Stage.MEMBER, Stage.MEMBER_PINGED, Stage.MEMBER_PAUSED, Stage.MEMBER_PINGED_PAUSED)
for _stage in _MEMBERS:
    _EXIT[_stage] = _MEMBER_EXIT
_LOGGING_IN = (Stage.HELLO, Stage.SHARE, Stage.QUEUED, Stage.GRANTED, Stage.CONFIRM)
_CLOSED = (Stage.CLOSING, Stage.LEAVING, Stage.CLOSED)

_ROWS: dict[tuple[Stage, Input], Row] = {}


def _close(stage: Stage, *first: str, exit: tuple[str, ...] | None = None) -> Row:
    """
    The row that closes from C{stage}: C{first}, then the stage's exit
    outputs (or C{exit}), then closing the transport.
    """
    outputs, closed = _EXIT[stage]
    return Row(closed, (*first, *(outputs if exit is None else exit), "close_transport"))


# Logging in.
_ROWS[Stage.HELLO, Input.HELLO] = Row(Stage.SHARE, ("start_handshake",), check="check_hello")
_ROWS[Stage.SHARE, Input.SHARE] = Row(
    Stage.CONFIRM, ("take_slot", "keep_share", "answer_share"), check="check_share"
)
_ROWS[Stage.SHARE, Input.SHARE_WAITS] = Row(Stage.QUEUED, ("queue_share", "keep_share"))
_ROWS[Stage.QUEUED, Input.SLOT] = Row(Stage.GRANTED, ("schedule_answer",))
_ROWS[Stage.GRANTED, Input.ANSWER] = Row(Stage.CONFIRM, ("answer_share",), check="check_penalty")
_ROWS[Stage.CONFIRM, Input.CONFIRM] = Row(
    Stage.MEMBER,
    ("release_slot", "join_room", "start_membership", "send_welcome", "replay_history",
     "release_buffers", "log_connected"),
    check="check_confirm",
)
_ROWS[Stage.CONFIRM, Input.WRONG_PASSWORD] = _close(
    Stage.CONFIRM, "release_slot", "count_wrong_password", "tell_wrong_password",
    exit=("stop_timer",),
)
_ROWS[Stage.CONFIRM, Input.TURNED_AWAY] = _close(
    Stage.CONFIRM, "release_slot", "refuse", exit=("stop_timer",)
)

# Closing: the same for every stage but what each exit gives up.
for _stage in (*_LOGGING_IN, *_MEMBERS):
    _ROWS[_stage, Input.REFUSE] = _close(_stage, "refuse")
    _ROWS[_stage, Input.TOO_LONG] = _close(_stage, "refuse_too_long")
    _ROWS[_stage, Input.SHUTDOWN] = _close(_stage, "write_frame")
for _stage in _LOGGING_IN:
    _ROWS[_stage, Input.TIMEOUT] = _close(_stage, "log_timed_out", "refuse_late_handshake")
for _stage in _LOGGING_IN[1:]:
    # Not counted: the room went, not a guess (HELLO has no room yet).
    _outputs, _ = _EXIT[_stage]
    _ROWS[_stage, Input.ROOM_CLOSED] = _close(
        _stage, "tell_wrong_password",
        exit=tuple(o for o in _outputs if o != "count_unconfirmed"),
    )
_ROWS[Stage.HELLO, Input.LOST] = Row(Stage.CLOSED, ("stop_timer", "connection_lost"))
_ROWS[Stage.SHARE, Input.LOST] = Row(Stage.CLOSED, ("stop_timer", "connection_lost"))
_ROWS[Stage.QUEUED, Input.LOST] = Row(
    Stage.CLOSED, ("leave_queue", "stop_timer", "connection_lost")
)
_ROWS[Stage.GRANTED, Input.LOST] = Row(
    Stage.CLOSED, ("release_slot", "stop_timer", "connection_lost")
)
_ROWS[Stage.CONFIRM, Input.LOST] = Row(
    Stage.CLOSED, ("count_abandoned", "release_slot", "stop_timer", "connection_lost")
)

# Membership. Each pair of stages differs in one thing: pinged, or paused.
_UNPINGED = {Stage.MEMBER_PINGED: Stage.MEMBER,
             Stage.MEMBER_PINGED_PAUSED: Stage.MEMBER_PAUSED}
_PINGED = {v: k for k, v in _UNPINGED.items()}
_PAUSED = {Stage.MEMBER: Stage.MEMBER_PAUSED, Stage.MEMBER_PINGED: Stage.MEMBER_PINGED_PAUSED}
_RESUMED = {v: k for k, v in _PAUSED.items()}
_REQUESTS = {Input.SEND: ("relay",), Input.WHO: ("send_members",), Input.PING: ("pong",),
             Input.PONG: (), Input.OVER_RATE: ("over_rate",)}
for _stage in _MEMBERS:
    # Any frame answers a ping and restarts the idle timer.
    heard = ("end_ping",) if _stage in _UNPINGED else ("reset_idle",)
    for _input, _outputs in _REQUESTS.items():
        _ROWS[_stage, _input] = Row(
            _UNPINGED.get(_stage, _stage), (*heard, *_outputs),
            check=None if _input is Input.OVER_RATE else "check_rate",
        )
    _ROWS[_stage, Input.ROOM_CLOSED] = _close(_stage, "tell_room_closed")
    _ROWS[_stage, Input.LOST] = Row(
        Stage.CLOSED, ("stop_timer", "leave_room", "log_disconnected", "connection_lost")
    )
    _ROWS[_stage, Input.PAUSE] = Row(_PAUSED.get(_stage, _stage))
    _ROWS[_stage, Input.RESUME] = Row(_RESUMED.get(_stage, _stage), ("forget_queue",))
    if _stage in _PINGED:
        _ROWS[_stage, Input.TIMEOUT] = Row(_PINGED[_stage], ("release_buffers", "send_ping"))
    else:
        _ROWS[_stage, Input.TIMEOUT] = _close(_stage, "log_no_pong", "tell_ping_timeout")
    if _stage in _PAUSED:
        _ROWS[_stage, Input.DELIVER] = Row(_stage, ("write",))
    else:
        _ROWS[_stage, Input.DELIVER] = Row(_stage, ("count_queued", "write"), check="check_queue")
        _ROWS[_stage, Input.SLOW] = Row(Stage.LEAVING, (
            "count_queued", "log_slow", "tell_slow", *_MEMBER_EXIT[0], "close_transport",
            "abort",
        ))

# Closed.
for _stage in (Stage.CLOSING, Stage.LEAVING):
    _ROWS[_stage, Input.ABORT] = Row(_stage, ("abort",))
    _ROWS[_stage, Input.TOO_LONG] = Row(_stage, ("discard_buffer",))
_ROWS[Stage.CLOSING, Input.LOST] = Row(Stage.CLOSED, ("cancel_abort", "connection_lost"))
_ROWS[Stage.LEAVING, Input.LOST] = Row(
    Stage.CLOSED, ("cancel_abort", "log_disconnected", "connection_lost")
)
_ROWS[Stage.CLOSED, Input.TOO_LONG] = Row(Stage.CLOSED, ("discard_buffer",))


def _default(stage: Stage, event: Input) -> Row:
    """
    The row for a pair not written out above.
    """
    if stage in _CLOSED:
        return Row(stage)
    # Both checks raise: the refusal is then the stage's REFUSE row.
    if event in FRAMES.values():
        return Row(stage, check="unexpected")
    return Row(stage, check="bug")


#: Every (stage, input) pair and its row.
TABLE: dict[tuple[Stage, Input], Row] = {
    (stage, event): _ROWS.get((stage, event)) or _default(stage, event)
    for stage in Stage
    for event in Input
}


def explicit(stage: Stage, event: Input) -> bool:
    """
    Whether the row of C{(stage, event)} is written out rather than filled in
    by rule.
    """
    return (stage, event) in _ROWS


def describe() -> str:
    """
    The table as docs/protocol.md shows it: the stages, then each stage's
    written-out rows, then the rules for the rest.
    """
    lines = ["Stages (each refines one phase of the `State` a peer sees in errors):", ""]
    for stage in Stage:
        lines.append(f"    {stage.name:<21} {stage.phase:<8} {stage.value.split('/', 1)[1]}")
    lines += ["", "Inputs:", ""]
    for event in Input:
        lines.append(f"    {event.name.lower():<15} {event.value}")
    lines += ["", "Rows: stage --input [check]--> next stage: outputs, in order.", ""]
    for stage in Stage:
        for event in Input:
            if not explicit(stage, event):
                continue
            row = TABLE[stage, event]
            check = f" [{row.check}]" if row.check else ""
            outputs = ", ".join(row.outputs) or "-"
            lines.append(
                f"    {stage.name} --{event.name.lower()}{check}--> {row.next.name}: {outputs}"
            )
        lines.append("")
    lines += [
        "Every other pair: in CLOSING, LEAVING and CLOSED the input is ignored; "
        "a frame any other stage does not accept fails "
        "the check `unexpected` (the stage's REFUSE row, with the code `unexpected`); "
        "any other input there fails the check `bug`: a bug of ours, logged with its "
        "traceback, then the REFUSE row with the code `internal`.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(describe(), end="")
