"""Where a tunnel may lead: the receiving ztunnel dials only the local pod it was addressed to.

``virtual_inbound`` dials whatever a CONNECT names in ``x-envoy-original-dst-host``, and the
plaintext listener whatever the original destination was. Unguarded, any holder of a mesh
certificate could make a ztunnel connect to its own admin API (on its loopback, which can
quit Envoy or dump its config), to pods of other nodes, to pods outside the mesh, or to the
node's own services; and a CONNECT to a pod's HBONE port would loop back into the ztunnel.

Each ``inbound_<podIP>`` chain therefore carries a guard for exactly that pod:

- the inbound listener (HBONE): an HTTP RBAC filter, first in the CONNECT HTTP connection
  manager. It allows a CONNECT only when both ``x-envoy-original-dst-host`` (what is dialed) and
  ``:authority`` are ``<podIP>:<port>``, with the IP of the pod whose chain matched (the pod whose
  certificate the client just verified) and a port from 1 to 65535 that is not one of the
  ztunnel's own (:data:`zpilot.contract.ZTUNNEL_PORT_RANGE` and the admin port). Anything
  else is answered 403 and counted in ``http.inbound_hcm.rbac.inbound_guard.denied``.
- the plaintext listener: its chain matcher sends a connection to one of
  the ztunnel's ports to a chain that closes it unanswered (counted in
  ``tcp.inbound_guard_plaintext.downstream_cx_total``); any other goes to the chain of the pod
  whose IP it was addressed to, and there is no other way to a pod: the IP is pinned too.

The order inside the CONNECT manager is guard, then AuthorizationPolicy, then the router
(:func:`zpilot.translators.inbound.connect_http_filters`): a policy judges only requests that go to
the local pod at all.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_http
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from .. import contract
from . import matcher, names
from .envoy_common import pack_into
from .limits import DataPathLimits, idle_timeout
from .tcp_proxy import ORIGINAL_DST_HEADER, proxy_chain

#: Stats: ``http.<HCM stat prefix>.rbac.inbound_guard.{allowed,denied}`` on the inbound listener
#: and ``tcp.inbound_guard_plaintext.downstream_cx_total`` (connections refused) on the plaintext one.
CONNECT_GUARD_STAT_PREFIX = "inbound_guard."
PLAINTEXT_GUARD_STAT_PREFIX = "inbound_guard_plaintext"
CONNECT_GUARD_FILTER = "zpilot.inbound_guard"
#: The plaintext listener's chain that a connection to a ztunnel port gets.
REFUSED_PLAINTEXT_CHAIN = "inbound_guard_plaintext"
#: The HTTP/2 pseudo-header naming a CONNECT's target.
AUTHORITY = ":authority"
MAX_PORT = 65535


def reserved_ports(admin_port: int) -> list[range]:
    """The ztunnel's own ports as ranges: Istio's reserved block, plus the admin port if elsewhere."""
    reserved = [contract.ZTUNNEL_PORT_RANGE]
    if admin_port not in contract.ZTUNNEL_PORT_RANGE:
        reserved.append(range(admin_port, admin_port + 1))
    return reserved


@functools.lru_cache(maxsize=256)
def number_regex(low: int, high: int) -> str:
    """An RE2 alternation matching the decimal numbers ``low``..``high`` (no leading zeros), e.g.
    ``1[0-9]|20`` for 10..20. Checked against every port in the tests."""
    if not 0 <= low <= high:
        raise ValueError(f"not a range of numbers: {low}..{high}")
    parts: list[str] = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        first = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        last = min(high, 10**digits - 1)
        if first <= last:
            parts += _same_length(str(first), str(last))
    return "|".join(parts)


def _same_length(low: str, high: str) -> list[str]:
    """Alternatives matching the numbers from ``low`` to ``high``, both written with one length."""
    if low == high:
        return [low]
    if len(low) == 1:
        return [f"[{low}-{high}]"]
    rest = len(low) - 1
    if low[0] == high[0]:
        return [low[0] + _group(_same_length(low[1:], high[1:]))]
    out: list[str] = []
    first_full, last_full = int(low[0]), int(high[0])
    if low[1:] != "0" * rest:  # low's leading digit only partly: low..d99
        out.append(low[0] + _group(_same_length(low[1:], "9" * rest)))
        first_full += 1
    tail = None
    if high[1:] != "9" * rest:  # high's leading digit only partly: d00..high
        tail = high[0] + _group(_same_length("0" * rest, high[1:]))
        last_full -= 1
    if first_full <= last_full:
        lead = str(first_full) if first_full == last_full else f"[{first_full}-{last_full}]"
        out.append(lead + ("[0-9]" if rest == 1 else f"[0-9]{{{rest}}}"))
    if tail is not None:
        out.append(tail)
    return out


def _group(alternatives: Sequence[str]) -> str:
    return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"


def ports_regex(ranges: Iterable[range]) -> str:
    return "|".join(number_regex(r.start, r.stop - 1) for r in ranges)


@functools.lru_cache(maxsize=64)
def _ztunnel_ports_regex(admin_port: int) -> str:
    """:func:`ports_regex` of the ztunnel's own ports (in every pod's guard, twice: made once)."""
    return ports_regex(reserved_ports(admin_port))


def _header(name: str, regex: str) -> rbac_config.Permission:
    return rbac_config.Permission(
        header=route_components_pb2.HeaderMatcher(
            name=name, string_match=string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=regex))
        )
    )


def _target(header: str, pod_ip: str) -> rbac_config.Permission:
    """``header`` is ``<pod_ip>:<port>``, a port of 1..65535."""
    return _header(header, _target_regex(pod_ip))


def _target_regex(pod_ip: str) -> str:
    return rf"^{re.escape(pod_ip)}:(?:{_any_port_regex()})$"


@functools.lru_cache(maxsize=1)
def _any_port_regex() -> str:
    return number_regex(1, MAX_PORT)


def _names_the_pod(header: str, pod_ip: str, admin_port: int) -> rbac_config.Permission:
    """``header`` is ``<pod_ip>:<port>`` (a port of 1..65535) and the port is not the ztunnel's."""
    # (Envoy matches a header regex against the whole value, as RE2::FullMatch)
    ztunnel_port = _header(header, rf"^.*:(?:{_ztunnel_ports_regex(admin_port)})$")
    return rbac_config.Permission(
        and_rules=rbac_config.Permission.Set(rules=[_target(header, pod_ip), rbac_config.Permission(not_rule=ztunnel_port)])
    )


def connect_guard(pod_ip: str, admin_port: int = contract.PORT_ADMIN) -> hcm.HttpFilter:
    """The HTTP filter allowing a CONNECT to ``pod_ip`` (and nothing else) on non-ztunnel ports."""
    # Every pod's guard is this one but for the two regexes naming its IP: copied from a template
    # rather than built (10,000 of them in a cold generation at R), the same content either way.
    guard = rbac_http.RBAC()
    guard.CopyFrom(_guard_template(admin_port))
    both = guard.rules.policies[_GUARD_POLICY].permissions[0].and_rules.rules
    regex = _target_regex(pod_ip)
    for names_the_pod in both:  # each header's _target: the template's with this regex
        names_the_pod.and_rules.rules[0].header.string_match.safe_regex.regex = regex
    guard_filter = hcm.HttpFilter(name=CONNECT_GUARD_FILTER)
    pack_into(guard_filter.typed_config, guard)
    return guard_filter


_GUARD_POLICY = "connect-to-local-pod"


@functools.lru_cache(maxsize=64)
def _guard_template(admin_port: int) -> rbac_http.RBAC:
    """:func:`connect_guard`'s filter config for a pod IP of ``""`` (never modified: copied)."""
    rules = rbac_config.RBAC(
        action=rbac_config.RBAC.ALLOW,
        policies={
            _GUARD_POLICY: rbac_config.Policy(
                permissions=[
                    rbac_config.Permission(
                        and_rules=rbac_config.Permission.Set(
                            rules=[
                                _names_the_pod(ORIGINAL_DST_HEADER, "", admin_port),
                                _names_the_pod(AUTHORITY, "", admin_port),
                            ]
                        )
                    )
                ],
                principals=[rbac_config.Principal(any=True)],
            )
        },
    )
    return rbac_http.RBAC(rules=rules, rules_stat_prefix=CONNECT_GUARD_STAT_PREFIX)


def plaintext_matcher(pod_chains: dict[str, str], admin_port: int = contract.PORT_ADMIN) -> matcher.Matcher:
    """The plaintext listener's chain selection: a connection to one of the ztunnel's ports
    takes the refusing chain, whichever pod it names; otherwise the pod's own chain (by
    destination IP), and for no local pod the listener's default (blackhole) chain.

    The port is judged while the chain is chosen, before any filter runs: a network RBAC filter
    would judge only at the first byte, after tcp_proxy had already dialed the destination.
    """
    refuse = matcher.chain(REFUSED_PLAINTEXT_CHAIN)
    by_pod = None
    if pod_chains:  # read from its bytes, written from each pod's entry (kept: a node's next change writes them again)
        by_pod = matcher.OnMatch()
        by_pod.MergeFromString(serialized_by_pod(pod_chains))
    return matcher.regex("port", f"^(?:{ports_regex(reserved_ports(admin_port))})$", refuse, on_no_match=by_pod)


def serialized_by_pod(pod_chains: dict[str, str]) -> bytes:
    """:func:`plaintext_matcher`'s ``on_no_match`` (the pod's own chain by destination IP) serialized,
    for a listener joined from its parts: its bytes are what the whole matcher's serialization holds
    there (made from each pod's entry, kept: see ``matcher.serialized_exact``); empty for no pod."""
    return matcher.serialized_exact("ip", pod_chains) if pod_chains else b""


def refused_plaintext_chain(limits: DataPathLimits) -> listener_components_pb2.FilterChain:
    """Closes the connection without dialing anything (the blackhole has no endpoints), counted
    in ``tcp.inbound_guard_plaintext.downstream_cx_total`` and logged with this chain's name."""
    return proxy_chain(
        REFUSED_PLAINTEXT_CHAIN, names.BLACKHOLE_CLUSTER, idle_timeout=idle_timeout(limits),
        stat_prefix=PLAINTEXT_GUARD_STAT_PREFIX,
    )
