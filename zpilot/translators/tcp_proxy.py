"""The tcp_proxy network filter, plain or as an HBONE (HTTP/2 CONNECT) tunnel, and the filter
chains that hold just one of them."""

from __future__ import annotations

import functools

from google.protobuf import duration_pb2

from envoy.config.core.v3 import base_pb2, proxy_protocol_pb2, substitution_format_string_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from .envoy_common import access_log, pack

TCP_PROXY = "envoy.filters.network.tcp_proxy"
#: The header the receiving ztunnel's ``virtual_inbound`` (use_http_header) dials.
ORIGINAL_DST_HEADER = "x-envoy-original-dst-host"


#: With ``connect_on_data``: how much of the client's first bytes a tcp_proxy holds while it connects.
EARLY_DATA_LIMIT = 64 * 1024


def tcp_proxy(
    cluster: str,
    *,
    idle_timeout: duration_pb2.Duration,
    stat_prefix: str | None = None,
    log_site: str | None = None,
    tunnel_target: str | None = None,
    tunnel_headers: tuple[tuple[str, str], ...] = (),
    connect_on_data: bool = False,
    proxy_protocol_tlvs: tuple[tuple[int, str], ...] = (),
) -> listener_components_pb2.Filter:
    """``tunnel_target`` is a substitution format for the CONNECT authority and the
    ``x-envoy-original-dst-host`` header (``tunnel_headers``: more headers, values also
    substitution formats, e.g. the client's address in ``x-forwarded-for``); without it the
    bytes go to ``cluster`` as they are. ``idle_timeout`` is required so no proxy falls back to a
    default nobody chose (limits.py). ``connect_on_data``: connect upstream only on the client's
    first bytes, so that a network RBAC filter before this one (which decides on them) refuses a
    client before the server ever sees it. ``proxy_protocol_tlvs``: (type, substitution format) of
    each TLV the PROXY protocol header carries, when the cluster's transport socket sends one."""
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix or cluster, cluster=cluster, idle_timeout=idle_timeout)
    if connect_on_data:
        proxy.upstream_connect_mode = tcp_proxy_pb2.ON_DOWNSTREAM_DATA
        proxy.max_early_data_bytes.value = EARLY_DATA_LIMIT
    for tlv_type, format_string in proxy_protocol_tlvs:
        proxy.proxy_protocol_tlvs.append(
            proxy_protocol_pb2.TlvEntry(
                type=tlv_type,
                format_string=substitution_format_string_pb2.SubstitutionFormatString(
                    text_format_source=base_pb2.DataSource(inline_string=format_string)
                ),
            )
        )
    if log_site is not None:  # only where no listener-level log already records the connection
        proxy.access_log.append(access_log(log_site))
    if tunnel_target is not None:
        proxy.tunneling_config.hostname = tunnel_target
        for key, value in ((ORIGINAL_DST_HEADER, tunnel_target), *tunnel_headers):
            proxy.tunneling_config.headers_to_add.append(
                base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))
            )
    return listener_components_pb2.Filter(name=TCP_PROXY, typed_config=pack(proxy))


def proxy_chain(
    name: str,
    cluster: str,
    *,
    idle_timeout: duration_pb2.Duration,
    log_site: str | None = None,
    tunnel_target: str | None = None,
    stat_prefix: str | None = None,
    tunnel_headers: tuple[tuple[str, str], ...] = (),
    connect_on_data: bool = False,
) -> listener_components_pb2.FilterChain:
    proxy = _shared_proxy(
        cluster, idle_timeout.SerializeToString(deterministic=True), stat_prefix, log_site, tunnel_target, tunnel_headers,
        connect_on_data,
    )
    return listener_components_pb2.FilterChain(name=name, filters=[proxy])  # copied into the chain


@functools.lru_cache(maxsize=1 << 12)
def _shared_proxy(
    cluster: str,
    idle_timeout: bytes,
    stat_prefix: str | None,
    log_site: str | None,
    tunnel_target: str | None,
    tunnel_headers: tuple[tuple[str, str], ...],
    connect_on_data: bool,
) -> listener_components_pb2.Filter:
    """:func:`tcp_proxy`, made once for all the chains that have the same (every local pod's
    plaintext chain: 10,000 at R); never modified: copied."""
    return tcp_proxy(
        cluster,
        idle_timeout=duration_pb2.Duration.FromString(idle_timeout),
        stat_prefix=stat_prefix,
        log_site=log_site,
        tunnel_target=tunnel_target,
        tunnel_headers=tunnel_headers,
        connect_on_data=connect_on_data,
    )
