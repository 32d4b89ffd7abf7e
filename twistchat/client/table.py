"""
Transition tables: a life cycle as rows of (state, input) -> (next state,
outputs), which the code runs and docs/protocol.md shows.

A L{Table} is data: L{Table.step} looks up the row for an owner's current
C{state} and an input, sets the owner's C{state} to the row's next state, then
calls the row's outputs in order with the input's arguments. An input with no
row for the state raises L{NoTransition}; the owner decides what that means
(the connection treats it as a protocol error). L{Table.render} prints the
table as docs/protocol.md has it (a test checks that they agree), and
L{Table.replace} makes a variant, for a subclass that adds inputs or a test
or benchmark that changes one behaviour.

The owner keeps its state in a plain attribute, so that tests can put it in
any state; nothing here keeps state of its own.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

S = TypeVar("S", bound=enum.Enum)


class NoTransition(Exception):
    """
    The table has no row for this input in this state.
    """

    def __init__(self, state: enum.Enum, input: str) -> None:
        super().__init__(f"no transition for {input!r} in state {state.name}")
        self.state = state
        self.input = input


@dataclass(frozen=True)
class Row(Generic[S]):
    """
    One transition: in C{state}, on C{input}, go to C{to} (None: stay) and
    call each of C{outputs} with the owner and the input's arguments.
    C{note} says what the outputs do, for the rendered table.
    """

    state: S
    input: str
    to: S | None
    outputs: tuple[Callable[..., Any], ...] = ()
    note: str = ""


def rows(states: Iterable[S], inputs: Iterable[str], to: S | None,
         outputs: tuple[Callable[..., Any], ...] = (), note: str = "") -> list[Row[S]]:
    """
    The same transition for each of C{states} and each of C{inputs}.
    """
    inputs = list(inputs)
    return [Row(state, input, to, outputs, note) for state in states for input in inputs]


class Table(Generic[S]):
    """
    The rows of one life cycle, at most one per (state, input).

    @raise ValueError: if two rows have the same state and input.
    """

    def __init__(self, rows: Iterable[Row[S]], footer: str = "") -> None:
        self.rows: tuple[Row[S], ...] = tuple(rows)
        #: Lines printed after the rows: what holds in every state.
        self.footer = footer
        self._index: dict[tuple[S, str], Row[S]] = {}
        for row in self.rows:
            key = (row.state, row.input)
            if key in self._index:
                raise ValueError(f"two rows for {row.input!r} in state {row.state.name}")
            self._index[key] = row

    def find(self, state: S, input: str) -> Row[S] | None:
        """
        The row for C{input} in C{state}, or None.
        """
        return self._index.get((state, input))

    def inputs(self, state: S) -> list[str]:
        """
        The inputs C{state} has a row for, in table order.
        """
        return [row.input for row in self.rows if row.state is state]

    def step(self, owner: Any, input: str, *args: Any) -> Row[S]:
        """
        Run C{input} on C{owner}: set C{owner.state} to the row's next state,
        then call its outputs as C{output(owner, *args)}.

        @return: the row that ran.
        @raise NoTransition: if the table has no row for C{input} in
            C{owner.state} (the state is then unchanged).
        """
        row = self._index.get((owner.state, input))
        if row is None:
            raise NoTransition(owner.state, input)
        if row.to is not None:
            owner.state = row.to
        for output in row.outputs:
            output(owner, *args)
        return row

    def replace(self, *rows: Row[S]) -> Table[S]:
        """
        A copy with C{rows} instead of the rows for the same state and input
        (and added where there were none).
        """
        new = {(row.state, row.input): row for row in rows}
        kept = [new.pop((row.state, row.input), row) for row in self.rows]
        return Table(kept + list(new.values()), self.footer)

    def render(self) -> str:
        """
        The table as text, one line per transition; rows that differ only in
        their state, or only in their input, share a line.
        """
        by_input: dict[tuple[str, Any, str], list[str]] = {}
        for row in self.rows:
            by_input.setdefault((row.input, row.to, row.note), []).append(row.state.name)
        by_states: dict[tuple[str, Any, str], list[str]] = {}
        for (input, to, note), states in by_input.items():
            by_states.setdefault((" | ".join(states), to, note), []).append(input)
        lines = []
        for (sources, to, note), inputs in by_states.items():
            target = "(stays)" if to is None else to.name
            lines.append(f"{sources}  --{' | '.join(inputs)}-->  {target}  {note}".rstrip())
        if self.footer:
            lines.append(self.footer)
        return "\n".join(lines)


class Serial:
    """
    Runs an owner's inputs through C{owner.table} one at a time: an input fed
    while another's outputs run (an output that calls back into the owner)
    waits until they are done, so no output sees a half-made transition.
    """

    def __init__(self, owner: Any) -> None:
        self._owner = owner
        self._inputs: deque[tuple[str, tuple[Any, ...]]] = deque()
        self._running = False

    def feed(self, input: str, *args: Any) -> None:
        """
        Run C{input} now, or after the input being run.

        @raise NoTransition: if the owner's table has no row for an input in
            the state it arrives in (the inputs still waiting are dropped).
        """
        self._inputs.append((input, args))
        if self._running:
            return
        self._running = True
        try:
            while self._inputs:
                input, args = self._inputs.popleft()
                self._owner.table.step(self._owner, input, *args)
        finally:
            self._running = False
            self._inputs.clear()
