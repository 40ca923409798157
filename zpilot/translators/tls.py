"""TLS for the HBONE tunnel: TLS 1.3 only, ALPN h2, certificates and trust over SDS (ADS).

Both directions validate the peer: against the trust bundle secret, and its URI SAN must be a
SPIFFE identity of our trust domain. The 2022 ztunnel's client side validated nothing (``// TODO san match``),
so any server holding any certificate could terminate its tunnels.
"""

from __future__ import annotations

import functools

from google.protobuf import wrappers_pb2

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from .. import contract
from .envoy_common import ads_source, pack, pack_into

TLS_SOCKET = "envoy.transport_sockets.tls"


def identity_matcher(trust_domain: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(
        safe_regex=regex_pb2.RegexMatcher(regex=contract.spiffe_id_regex(trust_domain))
    )


def sds(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=name, sds_config=ads_source())


def _common(secret_name: str, trust_domain: str) -> tls_pb2.CommonTlsContext:
    tls13 = common_pb2.TlsParameters.TLSv1_3
    return tls_pb2.CommonTlsContext(
        tls_params=common_pb2.TlsParameters(tls_minimum_protocol_version=tls13, tls_maximum_protocol_version=tls13),
        alpn_protocols=["h2"],
        tls_certificate_sds_secret_configs=[sds(secret_name)],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(
                match_typed_subject_alt_names=[
                    common_pb2.SubjectAltNameMatcher(
                        san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=identity_matcher(trust_domain)
                    )
                ]
            ),
            validation_context_sds_secret_config=sds(contract.ROOT_CA_SECRET),
        ),
    )


def upstream_tls(secret_name: str, trust_domain: str) -> base_pb2.TransportSocket:
    """Client side of the tunnel: present ``secret_name``, accept any mesh identity."""
    context = tls_pb2.UpstreamTlsContext(common_tls_context=_common(secret_name, trust_domain))
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=pack(context))


def downstream_tls(secret_name: str, trust_domain: str) -> base_pb2.TransportSocket:
    """Server side of the tunnel: present the destination pod's identity, require a mesh client."""
    # One per local pod (10,000 in a cold generation at R), all alike but for the secret's name:
    # copied from a template rather than built, the same content either way.
    context = tls_pb2.DownstreamTlsContext()
    context.CopyFrom(_downstream_template(trust_domain))
    context.common_tls_context.tls_certificate_sds_secret_configs[0].name = secret_name
    socket = base_pb2.TransportSocket(name=TLS_SOCKET)
    pack_into(socket.typed_config, context)
    return socket


@functools.lru_cache(maxsize=64)
def _downstream_template(trust_domain: str) -> tls_pb2.DownstreamTlsContext:
    """:func:`downstream_tls`'s context for a secret named ``""`` (never modified: copied)."""
    return tls_pb2.DownstreamTlsContext(
        common_tls_context=_common("", trust_domain),
        require_client_certificate=wrappers_pb2.BoolValue(value=True),
    )
