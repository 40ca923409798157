"""The client pod's address, carried to the destination ztunnel: what ``source.ip`` / ``ipBlocks``
policies are judged on at the HBONE port.

The tunnel itself does not carry it. A pod-IP destination is tunnelled from the outbound listener
itself, whose connection knows the client; a service VIP goes through an internal listener first, whose
connections come from Envoy itself (and original_src cannot cross it), so the tunnel reaches the
destination from the source ztunnel's address. Two stock pieces fix that:

- on the outbound listener's service chains, a ``set_filter_state`` filter hands the client's address
  to the internal listener (the well-known key its original_dst filter restores the remote address
  from), shared with that one upstream connection only;
- every tunnel's CONNECT request carries ``x-forwarded-for: <client address>``, which the destination's
  connection manager makes the stream's remote address (no trusted hops: the last, and only, entry).

A pod cannot forge it: the CONNECT headers are written by its ztunnel, whose certificates it does not
hold. A peer that does hold one is trusted for its identity as much as for this header.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.common.set_filter_state.v3 import value_pb2
from envoy.extensions.filters.network.set_filter_state.v3 import set_filter_state_pb2

from .envoy_common import pack
from .filter_state import REMOTE_IP_STATE

SET_FILTER_STATE = "envoy.filters.network.set_filter_state"
FORWARDED_FOR_HEADER = "x-forwarded-for"
#: The CONNECT header naming the client, as a (name, substitution format) pair for ``tcp_proxy``'s
#: ``tunnel_headers``: the tunnel's downstream remote address, without its port.
FORWARDED_FOR = (FORWARDED_FOR_HEADER, "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%")


def keep_client_address() -> listener_components_pb2.Filter:
    """Hand the connection's remote address to the internal listener it is proxied to (the network
    filter: the article's layout sets it per service chain; the linear layout's listener filter
    records it for every connection, see ``filter_state.py``)."""
    value = value_pb2.FilterStateValue(
        object_key=REMOTE_IP_STATE,
        format_string=substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source=base_pb2.DataSource(inline_string="%DOWNSTREAM_REMOTE_ADDRESS%")
        ),
        shared_with_upstream=value_pb2.FilterStateValue.ONCE,
    )
    return listener_components_pb2.Filter(
        name=SET_FILTER_STATE, typed_config=pack(set_filter_state_pb2.Config(on_new_connection=[value]))
    )
