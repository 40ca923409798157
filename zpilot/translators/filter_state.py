"""Carrying a captured connection's two addresses across an internal listener.

Behind an internal listener a connection's addresses are Envoy's own (``envoy://internal_client_address/``),
so the pod that opened it and where it was going are lost. The linear layout records both on
the outbound listener with the ``set_filter_state`` listener filter, as the filter-state objects
the internal listener's ``original_dst`` filter reads back (``<original_dst filter>.<key>``):

- ``remote_ip``: the pod's address, which the internal listener matches to pick the pod's
  identity, and which travels on to the destination (``x-forwarded-for``);
- ``local_ip``: the original destination, for pod-IP destinations, whose way to the internal
  listener (one endpoint per identity) cannot say it.

A service port's mesh endpoint says where its connection goes in its own address: the internal
listener's name and, as the endpoint id, ``podIP:targetPort``. The internal listener's first
listener filter makes that id the ``local_ip`` its ``original_dst`` filter restores (when the id
is empty, as on a stray pod IP's path, the recorded destination stays; a node's pod endpoint has the bare
pod IP as its id, which is no address this object takes: Envoy skips it ("Failed to create an object"), and
the destination the pod-select listener recorded stays, pod_select.py). The endpoint then needs no
``original_dst.local`` metadata: a real Envoy holds about 2 KiB per endpoint per metadata
namespace, 40 MiB of 20,000 endpoints at issue 13's R (docs/scale.md).

Both are shared with the upstream connection ``ONCE``: the internal connection gets them, the
tunnel it opens does not. ``TRANSITIVE`` works too, but puts the addresses into the upstream
connection-pool key, and every downstream connection would open its own TLS connection to the
peer ztunnel (scalable-layout-notes.md).

A tunnel chain of the internal listener says where its tunnel goes the same way, in the filter state
its ORIGINAL_DST cluster reads before anything else (``UPSTREAM_ADDRESS_STATE``): the destination pod's IP
on the HBONE port or on the same-node hairpin port (:func:`upstream_address`). So one cluster serves an
identity's tunnels to other nodes and to its own, where a port override would need two. The value is
written ``<IPv4>:<port>``, which is all Envoy parses without brackets: the mesh is IPv4-only (a pod's
IPv6 addresses are dropped, docs/config-reference.md), and a tunnel chain is picked by its client pod's
address, so only an IPv4 connection (an IPv4 destination) ever reaches one.

The listener filter's config message is not in xds-protos 1.85; ``protos/`` holds Envoy's ``.proto``, compiled
into ``zpilot._protos`` when the package is built (setup.py).
"""

from __future__ import annotations

from types import ModuleType

from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.common.set_filter_state.v3 import value_pb2

from .. import contract
from .envoy_common import pack

SET_FILTER_STATE_FILTER = "envoy.filters.listener.set_filter_state"
REMOTE_IP_STATE = f"{contract.ORIGINAL_DST_FILTER}.remote_ip"
LOCAL_IP_STATE = f"{contract.ORIGINAL_DST_FILTER}.local_ip"
#: filter state -> the substitution format whose value it records when a connection is accepted
RECORDED = {REMOTE_IP_STATE: "%DOWNSTREAM_REMOTE_ADDRESS%", LOCAL_IP_STATE: "%DOWNSTREAM_LOCAL_ADDRESS%"}
#: On the internal listener: the id of the internal address the connection was made to (Envoy 1.40).
ENDPOINT_ID = "%DOWNSTREAM_LOCAL_ADDRESS_ENDPOINT_ID%"
#: Envoy's well-known filter state object an ORIGINAL_DST cluster dials, before any port override
#: (``envoy.network.transport_socket.original_dst_address``, ``IP:PORT``).
UPSTREAM_ADDRESS_STATE = "envoy.network.transport_socket.original_dst_address"
#: Where a tunnel chain's connection was going (the internal listener's restored destination), without its port.
DESTINATION_IP = "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%"


def _generated() -> ModuleType:
    """The compiled ``set_filter_state`` listener config, imported when first needed, so that a
    source checkout nobody has built yet still runs everything but the linear layout."""
    try:
        from .._protos.envoy.extensions.filters.listener.set_filter_state.v3 import set_filter_state_pb2
    except ImportError as exc:
        raise ImportError(
            "zpilot._protos is missing: it is generated when zpilot is built (pip install ., pip install -e .);"
            " in a source checkout run `python3 setup.py build_protos --inplace`"
        ) from exc
    return set_filter_state_pb2


def listener_set_filter_state_config():
    """An empty ``set_filter_state`` listener config, to unpack one into (``zpilot explain``)."""
    return _generated().Config()


def _value(key: str, format_string: str) -> value_pb2.FilterStateValue:
    return value_pb2.FilterStateValue(
        object_key=key,
        format_string=substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source=base_pb2.DataSource(inline_string=format_string)
        ),
        shared_with_upstream=value_pb2.FilterStateValue.ONCE,
    )


def upstream_address(port: int) -> value_pb2.FilterStateValue:
    """For a network ``set_filter_state`` filter before a tunnel chain's tcp_proxy: its ORIGINAL_DST cluster
    dials the destination's IP on ``port`` (IPv4 only: see above). Not shared with the upstream: the cluster
    reads the downstream connection's own filter state, and the address, each destination's, would otherwise
    enter the upstream connection-pool key (it is the host, whose pool is its own anyway)."""
    return value_pb2.FilterStateValue(
        object_key=UPSTREAM_ADDRESS_STATE,
        format_string=substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source=base_pb2.DataSource(inline_string=f"{DESTINATION_IP}:{port}")
        ),
        shared_with_upstream=value_pb2.FilterStateValue.NONE,
    )


def endpoint_destination_filter() -> listener_components_pb2.ListenerFilter:
    """``set_filter_state`` on the internal listener, before its ``original_dst``: the destination is
    the endpoint id (``podIP:targetPort``) when there is one; with none (an empty value, skipped) or a
    bare pod IP (no address: Envoy skips it) the destination recorded before stays. Not shared further: the tunnel does not need it."""
    value = value_pb2.FilterStateValue(
        object_key=LOCAL_IP_STATE,
        format_string=substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source=base_pb2.DataSource(inline_string=ENDPOINT_ID),
            omit_empty_values=True,  # no id: "" (skipped), not "-"
        ),
        skip_if_empty=True,
    )
    return listener_components_pb2.ListenerFilter(
        name=SET_FILTER_STATE_FILTER, typed_config=pack(_generated().Config(on_accept=[value]))
    )


def record_addresses_filter() -> listener_components_pb2.ListenerFilter:
    """``set_filter_state`` recording the connection's remote and local address for the internal listener.
    It must come after the ``original_dst`` filter, or the local address it records is the listener's own."""
    config = _generated().Config(on_accept=[_value(key, fmt) for key, fmt in RECORDED.items()])
    return listener_components_pb2.ListenerFilter(name=SET_FILTER_STATE_FILTER, typed_config=pack(config))
