"""The destination's identity, pinned on each tunnel: the peer must be the pod we meant to reach.

The tunnel clusters' TLS accepts any identity of the trust domain (tls.py), because one cluster
carries the tunnels of one source identity to every destination. So each connection also names
the one identity its peer must prove, in Envoy's well-known filter state object
``envoy.network.upstream_subject_alt_names``: the tcp_proxy that opens the tunnel turns it into
its upstream transport socket options, and the TLS validator then requires the peer's URI SAN
to equal it (besides the trust domain pattern and the chain to the trust bundle). A mismatch
fails the handshake, counts ``cluster.<tunnel cluster>.ssl.fail_verify_san`` and closes the
connection.

Where the identity comes from:

- a service endpoint carries its pod's identity in its metadata
  (``tunnel.identity``, endpoints.py); the ``internal_upstream`` socket passes the ``tunnel``
  namespace to the internal listener, whose first network filter (:func:`pin_from_endpoint`)
  copies it into filter state before its tcp_proxy opens the tunnel;
- a pod-IP destination has no service endpoint. In the article's layout the filter chain its
  destination IP selects tunnels itself and names the identity (:func:`pin`); in the linear
  layout the pod's endpoint in its node's cluster names it (pod_select.py), or, for a pod outside
  its node's pod CIDR, a static cluster per identity whose one endpoint, the internal listener,
  does; so the internal listener pins every tunnel the same way.

Connection pooling. Envoy keys an upstream connection pool by host *and* by the transport socket
options' hash, which includes this SAN list (``CommonTransportSocketFactory::hashKey``): a pooled
HBONE connection verified for one identity is never handed a stream that expects another; streams
expecting the same identity of the same peer still share one connection. The object is set with
``shared_with_upstream: NONE`` because it is set on the very connection whose tcp_proxy opens the
tunnel: it need not travel (the identity crosses an internal listener as endpoint metadata). A
layout that set it one hop earlier would have to share it ``ONCE``, so that it reaches that
listener's connection and no further. ``TRANSITIVE``
would pass objects on into the tunnel's own pool key: harmless for this SAN list (there anyway),
but objects that differ per connection (a layout's original_dst addresses) would give each
downstream connection a TLS connection of its own.

Fail closed: an endpoint without ``tunnel.identity`` formats as ``-``, which no certificate
carries, so the tunnel is refused rather than opened to any identity.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.common.set_filter_state.v3 import value_pb2
from envoy.extensions.filters.network.set_filter_state.v3 import set_filter_state_pb2

from .. import contract
from .envoy_common import pack

#: Envoy's well-known filter state key: SANs the upstream TLS peer must present (comma-separated).
UPSTREAM_SANS = "envoy.network.upstream_subject_alt_names"
SET_FILTER_STATE = "envoy.filters.network.set_filter_state"

Sharing = value_pb2.FilterStateValue.SharedWithUpstream


def _set_sans(
    format_string: str, shared: "Sharing.ValueType", also: tuple[value_pb2.FilterStateValue, ...] = ()
) -> listener_components_pb2.Filter:
    """A set_filter_state filter writing the SAN list (then ``also``) when the connection is accepted."""
    value = value_pb2.FilterStateValue(
        object_key=UPSTREAM_SANS,
        format_string=substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source=base_pb2.DataSource(inline_string=format_string)
        ),
        shared_with_upstream=shared,
    )
    return listener_components_pb2.Filter(
        name=SET_FILTER_STATE, typed_config=pack(set_filter_state_pb2.Config(on_new_connection=[value, *also]))
    )


def pin_from_endpoint(*also: value_pb2.FilterStateValue) -> listener_components_pb2.Filter:
    """First filter of an internal listener's chain: the identity of the endpoint that led here, and the
    filter state values ``also`` (the linear layout's tunnel address: filter_state.upstream_address), in
    the same filter rather than one more per chain."""
    return _set_sans(contract.TUNNEL_IDENTITY_FORMAT, Sharing.NONE, also)


def pin(identity: str, *, shared: "Sharing.ValueType" = Sharing.NONE) -> listener_components_pb2.Filter:
    """A filter pinning ``identity`` for the tunnel opened by the same chain (``shared`` NONE), or,
    with ONCE, by the internal listener this chain's connection goes to."""
    if not identity or "," in identity:  # the object's constructor splits on commas
        raise ValueError(f"cannot pin identity {identity!r}")
    return _set_sans(identity.replace("%", "%%"), shared)
