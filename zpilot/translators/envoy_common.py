"""Small Envoy building blocks shared by every translator: Any packing, addresses, access logs,
socket options, ADS config sources and listener filters.
"""

from __future__ import annotations

import functools
from typing import Mapping

from google.protobuf import any_pb2, struct_pb2
from google.protobuf.message import Message

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, socket_option_pb2
from envoy.config.core.v3 import substitution_format_string_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.listener.original_src.v3 import original_src_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2

from .. import contract

#: SOL_SOCKET / SO_MARK on Linux. (The marks themselves are the contract's: the node routes by them.)
SOL_SOCKET = 1
SO_MARK = 36

#: Access log fields: what a person (or the end-to-end tests) needs to follow one connection
#: through a ztunnel: which chain matched, where it went, and who the peer proved to be.
ACCESS_LOG_FIELDS = {
    "start": "%START_TIME%",
    "filter_chain": "%FILTER_CHAIN_NAME%",
    # the cluster's name: %UPSTREAM_CLUSTER% gives its alt_stat_name when it has one (a service port's: svc.<name>)
    "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_local": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_remote": "%DOWNSTREAM_REMOTE_ADDRESS%",  # on an HBONE CONNECT: the client pod (x-forwarded-for)
    "downstream_direct_remote": "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%",  # ... and the tunnel's own peer
    "downstream_local": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "method": "%REQ(:METHOD)%",
    "authority": "%REQ(:AUTHORITY)%",
    "original_dst_host": "%REQ(X-ENVOY-ORIGINAL-DST-HOST)%",
    "peer_san": "%DOWNSTREAM_PEER_URI_SAN%",
    "local_san": "%DOWNSTREAM_LOCAL_URI_SAN%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    # which policy refused: rbac_access_denied_matched_policy[<policy>] (HTTP RBAC, per CONNECT stream) ...
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    # ... or the connection (network RBAC, plaintext)
    "termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "upstream_failure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "bytes_sent": "%BYTES_SENT%",
    "bytes_received": "%BYTES_RECEIVED%",
    "duration_ms": "%DURATION%",
}


def pack(message: Message) -> any_pb2.Any:
    """Pack with deterministic serialization: map order inside an ``Any`` is otherwise arbitrary,
    and content-hash versions would change on every rebuild."""
    return any_pb2.Any(
        type_url=f"type.googleapis.com/{message.DESCRIPTOR.full_name}",
        value=message.SerializeToString(deterministic=True),
    )


def pack_into(target: any_pb2.Any, message: Message) -> None:
    """:func:`pack` into ``target``, an ``Any`` field of the message being built: set in place,
    not made apart and copied in (what a config of every local pod's, 10,000 at R, spares)."""
    target.type_url = f"type.googleapis.com/{message.DESCRIPTOR.full_name}"
    target.value = message.SerializeToString(deterministic=True)


def socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port))


def ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )


def access_log(site: str) -> accesslog_pb2.AccessLog:
    """A JSON access log line on stdout, tagged with the place that wrote it."""
    return accesslog_pb2.AccessLog(name="envoy.access_loggers.stdout", typed_config=_stdout_logger(site))


@functools.lru_cache(maxsize=1 << 12)
def _stdout_logger(site: str) -> any_pb2.Any:
    """The logger of ``site``, packed: the same for each of a node's hundreds of chains, made once
    (a ``Struct`` of a dozen fields is slow to fill). Never handed out: messages given to a
    constructor are copied."""
    fields = struct_pb2.Struct()
    fields.update({"log": site, **ACCESS_LOG_FIELDS})
    logger = stream_pb2.StdoutAccessLog(log_format=substitution_format_string_pb2.SubstitutionFormatString(json_format=fields))
    return pack(logger)


def socket_mark(mark: int, description: str) -> socket_option_pb2.SocketOption:
    return socket_option_pb2.SocketOption(
        description=description,
        level=SOL_SOCKET,
        name=SO_MARK,
        int_value=mark,
        state=socket_option_pb2.SocketOption.STATE_PREBIND,
    )


def original_dst_filter() -> listener_components_pb2.ListenerFilter:
    return listener_components_pb2.ListenerFilter(
        name=contract.ORIGINAL_DST_FILTER, typed_config=pack(original_dst_pb2.OriginalDst())
    )


def original_src_filter() -> listener_components_pb2.ListenerFilter:
    return listener_components_pb2.ListenerFilter(
        name=contract.ORIGINAL_SRC_FILTER,
        typed_config=pack(original_src_pb2.OriginalSrc(mark=contract.ORIGINAL_SRC_MARK)),
    )


def raw_buffer() -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(name="envoy.transport_sockets.raw_buffer", typed_config=pack(raw_buffer_pb2.RawBuffer()))


def struct(values: Mapping[str, object]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s
