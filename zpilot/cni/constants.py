"""Names and numbers of the 2022 ambient redirection (istio/istio experimental-ambient, cni/pkg/ambient).

They are kept exactly as the article and the 2022 agent used them so that an operator's notes,
dashboards and muscle memory (``ip rule``, ``iptables-save | grep ztunnel-``) carry over.
"""

from __future__ import annotations

# -- packet marks (each matched as mark/mark) ---------------------------------------------------
MARK_OUTBOUND = 0x100  # TCP from a meshed pod: route it to the ztunnel through istioout
MARK_SKIP = 0x200  # already handled (came out of a tunnel, or from the ztunnel): normal routing
MARK_CONN_SKIP = 0x220  # a connection that must never be redirected (ztunnel's own, UDP, kubelet)
MARK_PROXY = 0x210  # traffic the ztunnel sends on behalf of a pod (spoofed source)
MARK_PROXY_RETURN = 0x040  # the other direction of a MARK_PROXY connection: back to the ztunnel

# -- inside the ztunnel pod --------------------------------------------------------------------
TPROXY_MARK = 0x400  # set by TPROXY: deliver locally (table 100)
OUTBOUND_SOCKET_MARK = 0x401  # SO_MARK of ztunnel_outbound: route through pistioout
INBOUND_SOCKET_MARK = 0x402  # SO_MARK of ztunnel_inbound(_plaintext): route through pistioin
PASSTHROUGH_MARK = 0x4D3  # return traffic of spoofed connections arriving on eth0: deliver locally
ZTUNNEL_MARK_MASK = 0xFFF

PORT_OUTBOUND = 15001
PORT_INBOUND_PLAINTEXT = 15006
PORT_HBONE = 15008
#: Same-node HBONE goes to podIP:15088 and the ztunnel redirects it to its own 15008 (2022 design).
PORT_HBONE_LOCAL = 15088

# -- iptables ----------------------------------------------------------------------------------
CHAIN_PREFIX = "ztunnel-"
PREROUTING = "ztunnel-PREROUTING"
POSTROUTING = "ztunnel-POSTROUTING"
INPUT = "ztunnel-INPUT"
OUTPUT = "ztunnel-OUTPUT"
FORWARD = "ztunnel-FORWARD"

# -- ipset -------------------------------------------------------------------------------------
IPSET_NAME = "ztunnel-pods-ips"
IPSET_TYPE = "hash:ip"

# -- tunnels -----------------------------------------------------------------------------------
INBOUND_TUNNEL = "istioin"
OUTBOUND_TUNNEL = "istioout"
ZTUNNEL_INBOUND_TUNNEL = "pistioin"
ZTUNNEL_OUTBOUND_TUNNEL = "pistioout"
INBOUND_VNI = 1000
OUTBOUND_VNI = 1001
INBOUND_NODE_ADDRESS = "192.168.126.1"
INBOUND_ZTUNNEL_ADDRESS = "192.168.126.2"
OUTBOUND_NODE_ADDRESS = "192.168.127.1"
OUTBOUND_ZTUNNEL_ADDRESS = "192.168.127.2"
TUNNEL_PREFIXLEN = 30
#: Geneve's IANA port. VXLAN, when it stands in, uses it too: the node rules stay identical, and
#: it cannot collide with a cluster overlay's own VXLAN (Calico 4789, flannel 8472).
TUNNEL_PORT = 6081
#: Outer IPv4 (20) + UDP (8) + Geneve/VXLAN (8) + inner Ethernet (14): 1460 -> 1410 as in the article.
TUNNEL_OVERHEAD = 50

# -- policy routing ----------------------------------------------------------------------------
TABLE_INBOUND = 100  # node: ztunnel + one route per meshed pod via istioin; ztunnel: local delivery
TABLE_OUTBOUND = 101
TABLE_PROXY_RETURN = 102
NODE_RULE_PRIORITIES = (100, 101, 102, 103)
#: 19999 first: same-node HBONE hairpin replies (from 127.0.0.1, after the 15088 REDIRECT) are
#: delivered locally instead of leaving through pistioin by rule 20002 (istio/istio#42163).
ZTUNNEL_HAIRPIN_RULE_PRIORITY = 19999
HAIRPIN_SOURCE = "127.0.0.1"
ZTUNNEL_RULE_PRIORITIES = (ZTUNNEL_HAIRPIN_RULE_PRIORITY, 20000, 20001, 20002, 20003)
MAIN_RULE_PRIORITY = 32766
OWNED_TABLES = (TABLE_INBOUND, TABLE_OUTBOUND, TABLE_PROXY_RETURN)
#: ``proto boot``: what ``ip route add`` uses, so ``ip route`` prints our routes like the article.
ROUTE_PROTO = 3
