"""What one ADS client may ask of the server: every number it controls has a bound here.

A request beyond a limit ends its own stream, before the server does any work proportional to
it: RESOURCE_EXHAUSTED for too much (too many names, too many streams, too many bytes) and
INVALID_ARGUMENT for a malformed value (a name longer than any real one), with a message naming
the limit and the ``zpilot serve`` flag that changes it. docs/xds-server.md ("Limits") lists them.

The defaults leave room for the largest nodes zpilot serves: a Kubernetes cluster has at most
5,000 nodes (one ADS stream each, per replica), a ztunnel node's config at the 100-node x 10k-pod
scale has a few thousand resources of a type, and the longest name zpilot generates (a SPIFFE
identity joined with a service's FQDN) stays under 1,200 characters.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    #: Largest request message (gRPC refuses bigger ones before zpilot sees them). A delta
    #: reconnect reports every resource the client has (name + version, ~100 bytes each).
    max_request_bytes: int = 4 * MiB
    #: Resource names one request may carry (SotW ``resource_names``, delta subscribe plus
    #: unsubscribe), one delta subscription may hold, and ``initial_resource_versions`` entries
    #: one delta request may report. Decoding cost grows with the count, not only the size.
    max_resource_names: int = 20_000
    #: Longest resource name, node id, type URL, nonce or version a request may carry.
    max_name_length: int = 4096
    #: Node metadata fields a first request may carry (Envoy sends a handful; zpilot reads one).
    max_node_metadata_fields: int = 1000
    #: Open ADS streams over all connections; more are refused with RESOURCE_EXHAUSTED.
    max_streams: int = 10_000
    #: Concurrent streams on one HTTP/2 connection (Envoy opens one per ADS connection); a
    #: client's further streams wait for one of its streams to end (HTTP/2 flow control).
    max_streams_per_connection: int = 100

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"limit {name} must be a positive integer, not {value!r}")


#: Characters of a NACK's error text kept (shown in /debug/syncz); longer texts are cut, not refused.
NACK_MESSAGE_CHARS = 4096

#: The ``zpilot serve`` flag behind each tunable limit, named in refusal messages.
FLAGS = {
    "max_request_bytes": "--max-request-bytes",
    "max_resource_names": "--max-resource-names",
    "max_streams": "--max-streams",
    "max_streams_per_connection": "--max-streams-per-connection",
}


def explain(limit: str, value: int) -> str:
    """``the limit is 20000 (zpilot serve --max-resource-names)`` for a refusal message."""
    flag = FLAGS.get(limit)
    return f"the limit is {value}" + (f" (zpilot serve {flag})" if flag else "")
