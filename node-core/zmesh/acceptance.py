"""What a circuit accepts: one table from (role, state, command) to the handler (docs/protocol.md §6).

Compare h11's ``_state.py`` and Arti's ``tor-cell/src/restrict.rs``: the rules are data, not spread
over the handlers. ``Node`` looks every circuit cell (CREATE, CREATED, RELAY, by the side of the
circuit it came from) and every recognised relay message up here, and calls the handler named;
anything the tables lack is refused in one place, ``refuse``, with a ``ProtocolError`` (the circuit
is destroyed). One exception, for forward compatibility: a relay command this version does not know
(an int, not a ``RelayCommand``; see ``cells.parse_relay_body``) on a cell that was recognised and
whose digest verified is counted and dropped, so a newer peer's commands do not tear circuits down.

Handlers are method names on ``Node`` (the node binds them once, at construction). Checks that
depend on a message's contents (stream ids, sizes, targets) stay in the handlers.
"""

from __future__ import annotations

from enum import Enum

from .cells import CellCommand, RelayCommand
from .circuit import BuildState, RelayState, Role, Side
from .errors import ProtocolError

_O, _R = Role.ORIGIN, Role.RELAY
_LAST_HOP = (RelayState.OPEN, RelayState.EDGE)
_RELAYING = (RelayState.EXTENDING, RelayState.FORWARDING)
_POINTS = (RelayState.INTRO_POINT, RelayState.INTRODUCING, RelayState.INTRODUCED, RelayState.REND_POINT)
_ONION_ORIGIN = (BuildState.INTRO, BuildState.INTRODUCING, BuildState.REND_WAITING, BuildState.SERVICE_JOINED)

# (role, state, side the cell came from, cell command) -> handler(circ, cell or bodies)
CELL_TABLE: dict[tuple[Role, Enum, Side, CellCommand], str] = {
    (_R, RelayState.AWAITING_CREATE, Side.PREV, CellCommand.CREATE): "_on_create_piece",
    # a second CREATE sent while the first waits is refused when its turn comes (_answer_create)
    (_R, RelayState.HANDSHAKE_QUEUED, Side.PREV, CellCommand.CREATE): "_on_create_piece",
    (_O, BuildState.BUILDING, Side.ORIGIN, CellCommand.CREATED): "_on_first_created",
    (_R, RelayState.EXTENDING, Side.NEXT, CellCommand.CREATED): "_on_next_created",
    (_O, BuildState.BUILDING, Side.ORIGIN, CellCommand.RELAY): "_on_origin_cells",
    (_O, BuildState.OPEN, Side.ORIGIN, CellCommand.RELAY): "_on_origin_cells",
    **{(_R, state, Side.PREV, CellCommand.RELAY): "_on_forward_cells" for state in _LAST_HOP + _RELAYING},
    **{(_R, state, Side.NEXT, CellCommand.RELAY): "_on_backward_cells" for state in _RELAYING},
    # onion services (zmesh.points): the intro and rendezvous points are last hops
    **{(_R, state, Side.PREV, CellCommand.RELAY): "_on_forward_cells" for state in _POINTS},
    (_R, RelayState.JOINED, Side.PREV, CellCommand.RELAY): "_on_joined_cells",
    **{(_O, state, Side.ORIGIN, CellCommand.RELAY): "_on_origin_cells" for state in _ONION_ORIGIN},
}

_EDGE_MESSAGES = {RelayCommand.DATA: "_on_data", RelayCommand.END: "_on_end", RelayCommand.SENDME: "_on_sendme",
                  RelayCommand.XOFF: "_on_xoff", RelayCommand.XON: "_on_xon"}

# (role, state, relay command) -> handler(circ, msg): messages from the circuit's far end. A relay
# accepts only what is meant for it, at its own hop; an origin hears only its last hop (see INNER_HOP).
RELAY_TABLE: dict[tuple[Role, Enum, RelayCommand], str] = {
    (_R, RelayState.OPEN, RelayCommand.EXTEND): "_on_extend",
    # congestion control is offered to each hop before anything else reaches it (zmesh.negotiation)
    (_R, RelayState.OPEN, RelayCommand.CC_OFFER): "_on_cc_offer",
    (_O, BuildState.BUILDING, RelayCommand.CC_ACCEPT): "_on_cc_accept",
    (_O, BuildState.OPEN, RelayCommand.CC_ACCEPT): "_on_cc_accept",
    # a point answers the offer before the onion message that followed it, so after the hand-over
    **{(_O, state, RelayCommand.CC_ACCEPT): "_on_cc_accept" for state in _ONION_ORIGIN[:3]},
    (_R, RelayState.OPEN, RelayCommand.BEGIN): "_on_begin",
    (_R, RelayState.EDGE, RelayCommand.BEGIN): "_on_begin",
    **{(_R, RelayState.EDGE, command): handler for command, handler in _EDGE_MESSAGES.items()},
    (_O, BuildState.BUILDING, RelayCommand.EXTENDED): "_on_extended",
    (_O, BuildState.OPEN, RelayCommand.CONNECTED): "_on_connected",
    **{(_O, BuildState.OPEN, command): handler for command, handler in _EDGE_MESSAGES.items()},
    # long-range padding: recognised by the hop it is for, then discarded, in every state with a hop
    **{(_R, state, RelayCommand.DROP): "_on_drop" for state in _LAST_HOP + _RELAYING},
    **{(_O, state, RelayCommand.DROP): "_on_drop" for state in (BuildState.BUILDING, BuildState.OPEN)},
    # onion services: a relay's last hop becomes an intro or rendezvous point (zmesh.points) ...
    (_R, RelayState.OPEN, RelayCommand.ESTABLISH_INTRO): "_on_establish_intro",
    (_R, RelayState.OPEN, RelayCommand.INTRODUCE1): "_on_introduce1",
    (_R, RelayState.INTRODUCING, RelayCommand.INTRODUCE1): "_on_introduce1",
    (_R, RelayState.OPEN, RelayCommand.ESTABLISH_RENDEZVOUS): "_on_establish_rendezvous",
    (_R, RelayState.OPEN, RelayCommand.RENDEZVOUS1): "_on_rendezvous1",
    **{(_R, state, RelayCommand.DROP): "_on_drop" for state in _POINTS + (RelayState.JOINED,)},
    # ... and the service's and client's circuits hear from those points (zmesh.onion.endpoints)
    (_O, BuildState.INTRO, RelayCommand.INTRO_ESTABLISHED): "_on_intro_established",
    (_O, BuildState.INTRO, RelayCommand.INTRODUCE2): "_on_introduce2",
    (_O, BuildState.INTRODUCING, RelayCommand.INTRODUCE_ACK): "_on_introduce_ack",
    (_O, BuildState.REND_WAITING, RelayCommand.RENDEZVOUS_ESTABLISHED): "_on_rendezvous_established",
    (_O, BuildState.REND_WAITING, RelayCommand.RENDEZVOUS2): "_on_rendezvous2",
    (_O, BuildState.SERVICE_JOINED, RelayCommand.BEGIN): "_on_service_begin",
    **{(_O, BuildState.SERVICE_JOINED, command): handler for command, handler in _EDGE_MESSAGES.items()},
    **{(_O, state, RelayCommand.DROP): "_on_drop" for state in _ONION_ORIGIN},
    # padding machines are negotiated with a hop while it is the circuit's last (zmesh.padnego)
    **{(_R, state, RelayCommand.PADDING_NEGOTIATE): "_on_pad_negotiate" for state in _LAST_HOP},
    # (the first hop's answer may arrive after an onion circuit was handed to its role, as CC_ACCEPT can)
    **{(_O, state, RelayCommand.PADDING_NEGOTIATED): "_on_pad_negotiated"
       for state in (BuildState.BUILDING, BuildState.OPEN, *_ONION_ORIGIN)},
    # the circuit-setup machine is asked for right after the first CREATED (zmesh.setuppad)
    (_R, RelayState.OPEN, RelayCommand.PADDING_SETUP): "_on_setup_request",
    **{(_O, state, RelayCommand.PADDING_SETUP_OK): "_on_setup_ok"
       for state in (BuildState.BUILDING, BuildState.OPEN, *_ONION_ORIGIN)},
}

# What an origin accepts from a hop before the last one: only padding, and its negotiation.
INNER_HOP = frozenset({RelayCommand.DROP, RelayCommand.PADDING_NEGOTIATED, RelayCommand.PADDING_SETUP_OK})


def refuse(role: Role, state: Enum, command: object, what: str = "") -> ProtocolError:
    """The one refusal: a cell or message the tables do not allow (a peer fault)."""
    name = getattr(command, "name", command)
    return ProtocolError(f"{name}{what} is not accepted by a {role.value} circuit in state {state.value}")
