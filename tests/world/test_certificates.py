"""Issue 4's remaining "done when" points, through the real world: two node namespaces, real
ztunnel Envoys fed by ``zpilot serve`` (20 s workload certificates) and rules by ``zpilot cni``.

- a long-lived connection sleep -> productpage (HBONE across nodes) survives certificate
  rotation, and both Envoys' ``/certs`` show the new serials;
- node authorization: ztunnel A never holds productpage's secret, and a node-A ADS client asking
  for it gets nothing and is counted;
- no private key material in any log, debug response or admin response of the run;
- ztunnel B's HBONE port refuses a client certificate from another CA and an expired one from
  our own CA (while a valid one from our CA, as a control, gets its CONNECT through to the pod).

All of it runs in a world of its own (module scope) per outbound layout, each torn down before
the next is built, also on failure: rotation under a live connection, the secrets a node is
served and the key material in what a run writes all go through the layout's tunnel clusters and
listeners. The HBONE port's refusals do not (ztunnel B's inbound side, the same in both layouts,
probed straight from ztunnel A's namespace): they run in the default layout's world only.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import re
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse

from zpilot import contract
from zpilot.contract import DEFAULT_LAYOUT
from zpilot.certs import CertificateAuthority
from zpilot.certs.x509_helpers import serial_hex
from zpilot.certs.xds_credentials import issue_node_credential
from zpilot.translators import bootstrap, names
from zpilot.world import scenarios
from zpilot.world.builder import World, WorldOptions
from zpilot.xds.order import SECRET_TYPE

from ..layouts import DEFAULT_FIRST
from ..xds.ads_client import AdsClient, tls_credentials

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.envoy, pytest.mark.slow]

LIFETIME = 20.0
TD = "cluster.local"
SLEEP_ID = f"spiffe://{TD}/ns/default/sa/sleep"
PRODUCTPAGE_ID = f"spiffe://{TD}/ns/default/sa/bookinfo-productpage"
PRODUCTPAGE_IP = "10.4.3.20"
HBONE_PORT = 15008


# -- an ADS client on the world's Unix socket ------------------------------------------------------


def UnixAdsClient(world: World, node: str) -> AdsClient:
    """tests/xds's client, connected to ``zpilot serve`` through the world's Unix socket as ``node``'s
    ztunnel would: over mutual TLS, with a node credential of the world's CA."""
    ca = world_ca(world)
    return AdsClient(f"unix:{world.xds_socket}",
                     credentials=tls_credentials(ca.trust_bundle_pem(), issue_node_credential(ca, node)))


def secrets_of(response: DiscoveryResponse) -> list[Secret]:
    return [Secret.FromString(any_.value) for any_ in response.resources]


@dataclass
class Issued:
    spiffe_id: str
    key_pem: bytes
    chain_pem: bytes
    seen_at: float


class SecretCollector:
    """Subscribes to every secret of both nodes, as their ztunnels do, for the whole run, ACKing
    each push: so it receives every certificate and key zpilot hands out after it connected
    (rotations included). Those keys are what the key-material test looks for in the logs."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.subscriptions = {node.name: served_secret_names(world, node.key) for node in world.spec.nodes}
        self.issued: dict[str, Issued] = {}  # serial (hex, as Envoy prints it) -> what came with it
        self.first_response_at: dict[str, float] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="secret-collector", daemon=True)
        self._thread.start()

    async def _main(self) -> None:
        await asyncio.gather(*(self._stream(node, sorted(wanted)) for node, wanted in self.subscriptions.items()))

    async def _stream(self, node: str, wanted: list[str]) -> None:
        client = UnixAdsClient(self.world, node)
        try:
            client.request(SECRET_TYPE, names=wanted, node_name=node)
            while not self._stopping.is_set():
                try:
                    response = await client.recv(timeout=0.2)
                except asyncio.TimeoutError:
                    continue
                self.first_response_at.setdefault(node, time.time())
                self._record(response)
                client.request(SECRET_TYPE, names=wanted, nonce=response.nonce, version=response.version_info)
        except Exception as exc:  # reported by the tests that rely on the collector
            self.errors.append(f"{node}: {exc!r}")
        finally:
            await client.close()

    def _record(self, response: DiscoveryResponse) -> None:
        for secret in secrets_of(response):
            if not secret.HasField("tls_certificate"):
                continue
            chain = secret.tls_certificate.certificate_chain.inline_bytes
            leaf = x509.load_pem_x509_certificate(chain)
            [uri] = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.UniformResourceIdentifier)
            with self._lock:
                self.issued.setdefault(serial_hex(leaf.serial_number), Issued(
                    uri, secret.tls_certificate.private_key.inline_bytes, chain, time.time()))

    def snapshot(self) -> dict[str, Issued]:
        with self._lock:
            return dict(self.issued)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(10)


@dataclass
class CertWorld:
    world: World
    collector: SecretCollector
    started: float = field(default_factory=time.time)


@pytest.fixture(scope="module", params=DEFAULT_FIRST)  # (the HBONE port test's world is the default's)
def cw(request):
    """A world (of each outbound layout) whose workload certificates live 20 s (renewed every 10 s),
    with the collector subscribed from the start (the first certificates are renewed ~10 s after
    zpilot starts; the world is up after ~5)."""
    with World(options=WorldOptions(cert_lifetime=LIFETIME, layout=request.param)) as world:
        collector = SecretCollector(world)
        try:
            yield CertWorld(world, collector)
        finally:
            collector.stop()
    assert world.leftovers() == [], "the world left something behind"


# -- reading the world ----------------------------------------------------------------------------


def served_secret_names(world: World, node_key: str) -> set[str]:
    """The secret names zpilot's config for the node has (its /debug/config_dump)."""
    dump = world.debug(f"/debug/config_dump?node={world.spec.node(node_key).name}")
    [secrets] = [c for c in dump["configs"] if c["@type"].endswith("SecretsConfigDump")]
    return {s["name"] for s in secrets.get("dynamic_active_secrets", [])}


def envoy_secret_names(world: World, node_key: str) -> set[str]:
    """Every secret the node's Envoy holds from zpilot, active or warming (not its bootstrap's own:
    the ADS credential it reads from files)."""
    dump = json.loads(world.ztunnels[node_key].admin("/config_dump?resource=dynamic_active_secrets"))
    held = {c["name"] for c in dump.get("configs", [])}
    warming = json.loads(world.ztunnels[node_key].admin("/config_dump?resource=dynamic_warming_secrets"))
    return (held | {c["name"] for c in warming.get("configs", [])}) - {
        bootstrap.XDS_CLIENT_CERTIFICATE_SECRET, bootstrap.XDS_TRUST_BUNDLE_SECRET}


@dataclass(frozen=True)
class EnvoyCert:
    spiffe_id: str
    serial: str
    valid_from: datetime
    expiration: datetime


def _when(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def envoy_certs(world: World, node_key: str) -> dict[str, set[EnvoyCert]]:
    """Workload certificates in the Envoy's /certs, by SPIFFE ID (one entry per TLS context using it);
    not the node's ADS credential."""
    out: dict[str, set[EnvoyCert]] = {}
    for entry in json.loads(world.ztunnels[node_key].admin("/certs"))["certificates"]:
        for cert in entry.get("cert_chain", []):
            for san in cert.get("subject_alt_names", []):
                if "uri" in san and contract.node_of_credential_id(san["uri"], TD) is None:
                    out.setdefault(san["uri"], set()).add(EnvoyCert(
                        san["uri"], cert["serial_number"], _when(cert["valid_from"]), _when(cert["expiration_time"])))
    return out


def one_cert(world: World, node_key: str, spiffe_id: str) -> EnvoyCert | None:
    """The certificate the Envoy uses for the identity, once all its TLS contexts agree on one."""
    certs = envoy_certs(world, node_key).get(spiffe_id, set())
    return next(iter(certs)) if len(certs) == 1 else None


def meshed_identities(world: World, node_key: str) -> set[str]:
    """The identities of the pods the node's CNI captures (from the kernel's ipset, not from zpilot)."""
    captured = world.meshed_ips(node_key)
    return {f"spiffe://{TD}/ns/{p.namespace}/sa/{p.service_account}"
            for p in world.spec.pods_on(node_key) if p.ip in captured}


def unserved_sds(world: World) -> float:
    m = re.search(r'^zpilot_xds_unserved_resource_names_total\{type="SDS"\} (\S+)$', world.metrics(), re.M)
    return float(m.group(1)) if m else 0.0


# -- a hand-made HBONE client: TLS 1.3 + HTTP/2 CONNECT --------------------------------------------


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name: str, value: str) -> bytes:
    """HPACK literal header field without indexing, new name, no Huffman (short strings only)."""
    n, v = name.encode(), value.encode()
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


@dataclass
class Probe:
    server_cert: dict | None = None  # the server's certificate as Python's ssl shows it (verified)
    error: str | None = None  # the TLS alert or the failure
    answer: bytes = b""  # what came back through the CONNECT tunnel

    @property
    def server_serial(self) -> str | None:
        return self.server_cert["serialNumber"].lower() if self.server_cert else None

    @property
    def server_sans(self) -> list[str]:
        return [v for k, v in (self.server_cert or {}).get("subjectAltName", ()) if k == "URI"]


def hbone_probe(world: World, netns: str, cert: Path, key: Path, *, target: str = f"{PRODUCTPAGE_IP}:9080") -> Probe:
    """From ``netns``, open a TLS connection to productpage's 15008 with the given client
    certificate (the server's is verified against the world's root), CONNECT to ``target`` and
    send ``GET /`` through the tunnel; returns what happened."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # SPIFFE: the identity is the URI SAN, checked below by the tests
    ctx.load_verify_locations(cafile=str(world.dir / "ca" / "root-cert.pem"))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["h2"])
    probe = Probe()
    raw = world.client.connect(netns, PRODUCTPAGE_IP, HBONE_PORT, timeout=5)
    try:
        tls = ctx.wrap_socket(raw)
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        probe.error = getattr(exc, "reason", None) or repr(exc)
        return probe
    with tls:
        probe.server_cert = tls.getpeercert()
        try:
            # In TLS 1.3 the server judges our certificate after our side of the handshake is done:
            # its verdict (an alert) is read before anything is written, so that no write into a
            # connection the server already closed can turn into a reset that swallows the alert.
            tls.settimeout(1.5)
            try:
                buf = tls.recv(65536)
            except TimeoutError:  # nothing sent before our preface: also fine
                buf = b""
            tls.settimeout(5)
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0))
            tls.sendall(_frame(1, 0x4, 1, _literal(":method", "CONNECT") + _literal(":authority", target)
                                    + _literal("x-envoy-original-dst-host", target)))
            sent_get = False
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
                    chunk = tls.recv(65536)
                    if not chunk:
                        probe.error = probe.error or "closed by the server"
                        return probe
                    buf += chunk
                length, kind, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
                stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                payload, buf = buf[9:9 + length], buf[9 + length:]
                if kind == 4 and not flags & 1:  # SETTINGS: acknowledge
                    tls.sendall(_frame(4, 1, 0))
                elif kind == 6 and not flags & 1:  # PING
                    tls.sendall(_frame(6, 1, 0, payload))
                elif kind == 1 and stream == 1 and not sent_get:  # the CONNECT's response headers
                    tls.sendall(_frame(0, 0, 1, b"GET / HTTP/1.1\r\nHost: productpage\r\nConnection: close\r\n\r\n"))
                    sent_get = True
                elif kind == 0 and stream == 1:
                    probe.answer += payload
                    head, _, body = probe.answer.partition(b"\r\n\r\n")
                    m = re.search(rb"(?i)content-length: *(\d+)", head)
                    if m and len(body) >= int(m.group(1)):
                        return probe
                elif kind in (3, 7):  # RST_STREAM, GOAWAY
                    probe.error = f"HTTP/2 frame type {kind}: {payload.hex()}"
                    return probe
            probe.error = "no answer within 5 s"
        except (ssl.SSLError, OSError) as exc:
            probe.error = getattr(exc, "reason", None) or repr(exc)
    return probe


def write_cert(directory: Path, stem: str, chain_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    cert, key = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    cert.write_bytes(chain_pem)
    key.write_bytes(key_pem)
    key.chmod(0o600)
    return cert, key


def world_ca(world: World, clock=None) -> CertificateAuthority:
    """The world's own CA, from its directory (what ``zpilot serve --ca-dir`` signs with)."""
    kwargs = {"clock": clock} if clock else {}
    return CertificateAuthority.load_or_create(world.dir / "ca", TD, **kwargs)


# -- 1. rotation under a live connection -----------------------------------------------------------


def test_long_lived_connection_survives_certificate_rotation(cw, tmp_path):
    """A keep-alive connection sleep -> productpage's VIP (through ztunnel A's tunnel to B's 15008)
    is used every 0.3 s while zpilot renews the 20 s certificates (at half life) and pushes them.
    Both Envoys' /certs switch to new serials before the old ones expire; the connection keeps
    answering on the same tunnel (the pod sees the same peer throughout) past the old
    certificates' expiry; and a new handshake at B is served the new certificate."""
    world = cw.world
    world.wait_until(lambda: one_cert(world, "b", PRODUCTPAGE_ID) and one_cert(world, "a", SLEEP_ID),
                     timeout=20, what="both Envoys to hold one certificate per identity")
    old = {"b": one_cert(world, "b", PRODUCTPAGE_ID), "a": one_cert(world, "a", SLEEP_ID)}
    assert old["b"].expiration - old["b"].valid_from == timedelta(seconds=LIFETIME + 120), old  # 2 min backdated

    vip, port = scenarios.service_target(world, "productpage")
    sock = world.client.connect(world.pod_ns("sleep"), vip, port, timeout=10)
    local = "%s:%d" % sock.getsockname()[:2]
    conn = http.client.HTTPConnection(vip, port, timeout=10)
    conn.sock = sock
    offset_a = world.ztunnels["a"].access_log.mark()
    offset_b = world.ztunnels["b"].access_log.mark()
    seen_peers: list[str] = []
    new: dict[str, EnvoyCert] = {}
    new_seen_at: dict[str, datetime] = {}
    try:
        first_request = time.monotonic()
        old_expired = max(c.expiration for c in old.values()) + timedelta(seconds=1)
        while time.monotonic() - first_request < 3 * LIFETIME:
            conn.request("GET", "/")
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200, (response.status, body[:200])
            seen_peers.append(json.loads(body)["peer"])
            for key, spiffe_id in (("b", PRODUCTPAGE_ID), ("a", SLEEP_ID)):
                if key not in new:
                    current = one_cert(world, key, spiffe_id)
                    if current is not None and current.serial != old[key].serial:
                        new[key], new_seen_at[key] = current, datetime.now(timezone.utc)
            if len(new) == 2 and datetime.now(timezone.utc) > old_expired:
                break
            time.sleep(0.3)
        assert set(new) == {"a", "b"}, f"no new serial at {set('ab') - set(new)} within {3 * LIFETIME:.0f} s: {old}"
        assert datetime.now(timezone.utc) > old_expired, "the connection did not outlive the old certificates"
        for key in ("a", "b"):
            # renewed at half life (not earlier), and pushed before the old one expired
            assert new[key].valid_from - old[key].valid_from >= timedelta(seconds=LIFETIME / 2), (old[key], new[key])
            assert new_seen_at[key] <= old[key].expiration, (key, new_seen_at[key], old[key])
        # one request after the old certificates expired, on the same connection
        conn.request("GET", "/")
        response = conn.getresponse()
        seen_peers.append(json.loads(response.read())["peer"])
        last_request = time.monotonic()
        assert response.status == 200
        assert len(set(seen_peers)) == 1, f"the tunnel was re-established: {sorted(set(seen_peers))}"
        closed = [e for e in world.ztunnels["a"].access_log.since(offset_a) if e.get("downstream_remote") == local]
        assert closed == [], f"ztunnel A closed the connection during the rotation: {closed}"
    finally:
        conn.close()

    # once closed, B logs the one CONNECT that carried it all: sleep's identity, alive throughout
    def connect_logged() -> list:
        return [e for e in world.ztunnels["b"].access_log.since(offset_b)
                if e.get("method") == "CONNECT" and e.get("upstream_local") == seen_peers[0]]

    world.wait_until(lambda: connect_logged(), timeout=10, what="ztunnel B's log line for the tunnel")
    [tunnel] = connect_logged()
    assert tunnel["peer_san"] == SLEEP_ID and tunnel["local_san"] == PRODUCTPAGE_ID
    assert tunnel["duration_ms"] >= 1000 * (last_request - first_request) - 500, tunnel

    # a new handshake at B gets productpage's new certificate (checked against the world's root)
    client_cert = write_cert(tmp_path, "sleep", *_pems(world_ca(world).issue(SLEEP_ID, timedelta(minutes=5))))
    probe = hbone_probe(world, world.pod_ns(world.spec.ztunnel_on("a")), *client_cert)
    assert probe.server_sans == [PRODUCTPAGE_ID], probe
    current_b = one_cert(world, "b", PRODUCTPAGE_ID)
    assert probe.server_serial in (new["b"].serial, current_b.serial if current_b else None), (probe, new["b"])
    assert probe.server_serial != old["b"].serial


# -- 2. node authorization -------------------------------------------------------------------------


def test_node_a_never_gets_productpages_secret(cw):
    """ztunnel A's Envoy holds exactly the secrets zpilot serves node A (ROOTCA and node A's own
    identities, taken from the kernel's view of which pods are captured there), and no
    productpage certificate; a Python ADS client speaking as node A and asking for productpage's
    secrets gets only its own, or an empty response, and each refused name is counted."""
    world = cw.world
    node_a = world.spec.node("a").name
    own = meshed_identities(world, "a")
    assert own and PRODUCTPAGE_ID not in own and SLEEP_ID in own, own
    served_a = served_secret_names(world, "a")
    assert {n.split("~")[0] for n in served_a} == own | {"ROOTCA"}, served_a
    world.wait_until(lambda: envoy_secret_names(world, "a") == served_a, timeout=10,
                     what="ztunnel A's Envoy to hold exactly node A's secrets")
    held_certs = envoy_certs(world, "a")
    assert set(held_certs) <= own and PRODUCTPAGE_ID not in held_certs, set(held_certs)
    # ... nor did A's Envoy ever ask for one (what zpilot recorded of its subscriptions)
    for conn in world.debug(f"/debug/syncz?node={node_a}"):
        for status in conn["types"]:
            if status["type_url"] == SECRET_TYPE:
                assert not any(n.startswith(PRODUCTPAGE_ID) for n in status.get("subscribed") or []), status

    foreign = sorted(n for n in served_secret_names(world, "b") if n.startswith(PRODUCTPAGE_ID))
    assert foreign, "node B's config has no productpage secret to ask for"
    [mine] = sorted(n for n in served_a if n.split("~")[0] == SLEEP_ID)  # by pod (article) or identity (linear)
    log_offset = world.server.stderr.stat().st_size

    async def ask() -> tuple[list[str], list[str]]:
        client = UnixAdsClient(world, node_a)
        try:
            client.request(SECRET_TYPE, names=[mine, *foreign], node_name=node_a)
            first = await client.recv(timeout=10)
            client.request(SECRET_TYPE, names=foreign, nonce=first.nonce, version=first.version_info)
            second = await client.recv(timeout=10)
            return [s.name for s in secrets_of(first)], [s.name for s in secrets_of(second)]
        finally:
            await client.close()

    before = unserved_sds(world)
    first, second = asyncio.run(ask())
    assert first == [mine]
    assert second == []
    world.wait_until(lambda: unserved_sds(world) >= before + 2 * len(foreign), timeout=5,
                     what="zpilot to count the refused names")
    assert unserved_sds(world) == before + 2 * len(foreign)
    logged = world.server.stderr.read_bytes()[log_offset:].decode(errors="replace")
    assert f"node={node_a} asked for SDS" in logged and foreign[0] in logged, logged[-2000:]


# -- 3. no private key material anywhere -----------------------------------------------------------


PEM_KEY_MARKERS = [b"PRIVATE KEY-----", b"LS0tLS1CRUdJTiBQUklWQVRFIEtFWS", b"LS0tLS1CRUdJTiBFQyBQUklWQVRFIEtFWS"]


def base64_at_every_offset(data: bytes) -> list[bytes]:
    """What ``data`` looks like inside any longer base64 text, whatever its offset there."""
    out = []
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + data)
        out.append(encoded[4:-4])  # leave out the characters the prefix and padding touch
    return out


def key_needles(pem: bytes) -> tuple[list[bytes], list[bytes]]:
    """Ways a PEM private key can show up in text: (exact, hex to match in any case). Exact: the
    PEM, its body (whole or any line of it), its DER, and the base64 of the PEM, the DER or the
    private scalar at any offset; hex: the DER's and the private scalar's."""
    body_lines = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    body = b"".join(body_lines)
    der = base64.b64decode(body)
    key = serialization.load_pem_private_key(pem, None)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    exact = [pem.strip(), body, *[line for line in body_lines if len(line) >= 32], der,
             *base64_at_every_offset(pem), *base64_at_every_offset(der), *base64_at_every_offset(scalar)]
    return exact, [der.hex().encode(), scalar.hex().encode()]


def collect_everything(world: World) -> dict[str, bytes]:
    """Every log file of the run and every debug / admin response: source -> bytes."""
    out: dict[str, bytes] = {}
    stores = (world.ca_dir, world.credentials_dir)
    for path in sorted(world.dir.rglob("*")):
        # the key stores (the CA's, the nodes' ADS credentials) are the exceptions
        if path.is_file() and not any(store in path.parents for store in stores):
            out[f"file {path.relative_to(world.dir)}"] = path.read_bytes()
    openapi = world.debug("/openapi.json")
    node_names = [n.name for n in world.spec.nodes]
    for path, ops in openapi["paths"].items():
        if "get" not in ops or "{" in path or path in ("/openapi.json", "/docs", "/redoc"):
            continue
        params = {p["name"]: p.get("required", False) for p in ops["get"].get("parameters", [])}
        queries = [f"?node={n}" for n in node_names] if "node" in params else [""]
        if "node" in params and not params["node"]:
            queries.append("")
        for query in queries:
            status, body = world.debug(path + query, raw=True)
            assert status == 200, (path + query, status, body[:300])
            out[f"zpilot {path}{query}"] = body
    out["zpilot /metrics"] = world.metrics().encode()
    for key, zt in world.ztunnels.items():
        for path in ("/config_dump?include_eds", "/certs", "/clusters", "/listeners", "/stats", "/server_info"):
            out[f"envoy {key} {path}"] = zt.admin(path).encode()
    return out


def test_no_private_key_material_in_logs_debug_output_or_metrics(cw):
    """After traffic and at least one rotation, nothing the run wrote or serves (zpilot serve's
    output, both Envoys' logs and access logs, the CNI agents', every debug API endpoint for every
    node, /metrics, both Envoys' /config_dump and /certs) contains a PEM private key header, its
    base64, or any of the private keys actually issued in the run: the root's (from the CA
    directory) and every workload key zpilot served (read over ADS as the nodes, all rotations)."""
    world = cw.world
    for source, target in (("sleep", "productpage"), ("sleep", "details")):
        trace = scenarios.request(world, source, *scenarios.service_target(world, target), settle=0)
        assert trace.ok, trace.error
    # a rotation during the run, seen by the collector (the test above waits for one too)
    world.wait_until(lambda: sum(i.spiffe_id == PRODUCTPAGE_ID for i in cw.collector.snapshot().values()) >= 2,
                     timeout=2 * LIFETIME, what="a second productpage certificate")
    assert not cw.collector.errors, cw.collector.errors
    issued = cw.collector.snapshot()

    # the collector has the key of every certificate zpilot issued since it subscribed (zpilot
    # logs each issue with its serial), and the keys are real ones, matching their certificates
    log_text = world.server.stderr.read_text(errors="replace")
    logged = re.findall(r"^(\S+ \S+) INFO zpilot\.certs\.identity: issued certificate for (\S+) serial ([0-9a-f]+)",
                        log_text, re.M)
    assert len(logged) >= 2 * 3, logged  # three identities, at least one rotation
    subscribed = min(cw.collector.first_response_at.values())
    for when, spiffe_id, serial in logged:
        superseded = any(s == spiffe_id and datetime.strptime(w, "%Y-%m-%d %H:%M:%S,%f").timestamp() < subscribed
                         and w > when for w, s, _ in logged)
        if not superseded:  # obtainable over ADS once the collector was there
            assert serial in issued and issued[serial].spiffe_id == spiffe_id, (serial, spiffe_id, sorted(issued))
    for serial, item in issued.items():
        leaf = x509.load_pem_x509_certificate(item.chain_pem)
        key = serialization.load_pem_private_key(item.key_pem, None)
        assert key.public_key().public_numbers() == leaf.public_key().public_numbers(), serial

    secret_keys = {f"workload key {serial} ({i.spiffe_id})": i.key_pem for serial, i in issued.items()}
    secret_keys["root key"] = (world.dir / "ca" / "root-key.pem").read_bytes()
    for node in world.spec.nodes:  # each node's ADS client key (zpilot bootstrap wrote it)
        secret_keys[f"node {node.key}'s ADS credential key"] = (
            world.credential_dir(node.key) / contract.CREDENTIAL_KEY_FILE).read_bytes()
    needles = {what: key_needles(pem) for what, pem in secret_keys.items()}

    haystacks = collect_everything(world)
    expected_sources = {"file zpilot-serve.err", "file zpilot-serve.out", "file ztunnel-a.out", "file ztunnel-a.err",
                        "file ztunnel-b.out", "file ztunnel-b.err", "file cni-agent-a.err", "file cni-agent-b.err",
                        "zpilot /metrics", "zpilot /debug/syncz", "zpilot /debug/registryz",
                        "zpilot /debug/connections", "envoy a /certs", "envoy b /certs",
                        "envoy a /config_dump?include_eds", "envoy b /config_dump?include_eds",
                        *(f"zpilot /debug/config_dump?node={n.name}" for n in world.spec.nodes)}
    assert expected_sources <= set(haystacks), expected_sources - set(haystacks)
    # the haystacks are not empty: the certificates themselves are there, keys redacted
    assert base64.b64encode(b"[redacted]") in haystacks["envoy a /config_dump?include_eds"]
    assert any(i.chain_pem.splitlines()[1] in haystacks[f"zpilot /debug/config_dump?node={world.spec.node('b').name}"]
               or base64.b64encode(i.chain_pem)[:60] in haystacks[f"zpilot /debug/config_dump?node={world.spec.node('b').name}"]
               or serial in haystacks[f"zpilot /debug/config_dump?node={world.spec.node('b').name}"].decode()
               for serial, i in issued.items())

    found = []
    for source, data in haystacks.items():
        lowered = data.lower()
        for marker in PEM_KEY_MARKERS:
            if marker in data:
                found.append(f"{source}: {marker.decode()}")
        for what, (exact, hexes) in needles.items():
            if any(n in data for n in exact) or any(h in lowered for h in hexes):
                found.append(f"{source}: {what}")
    assert found == [], "private key material found:\n" + "\n".join(found)


# -- 4. mTLS refusal at the HBONE port -------------------------------------------------------------


@pytest.mark.parametrize("cw", [DEFAULT_LAYOUT], indirect=True)  # inbound only: see the module's docstring
def test_hbone_port_refuses_foreign_and_expired_client_certificates(cw, tmp_path):
    """From ztunnel A's namespace straight to productpage's 15008 on node B (as ztunnel A does),
    with sleep's identity each time: a certificate from our CA gets its CONNECT through to the pod
    (the control); one with the same identity from another CA is refused with "unknown CA"; one
    from our own CA that expired an hour ago is refused with "certificate expired". Nothing of the
    refused ones gets past the handshake: ztunnel B logs no CONNECT, no upstream, no bytes."""
    world = cw.world
    netns = world.pod_ns(world.spec.ztunnel_on("a"))
    ours = world_ca(world)
    valid = write_cert(tmp_path, "valid", *_pems(ours.issue(SLEEP_ID, timedelta(minutes=5))))
    foreign_ca = CertificateAuthority.generate(TD)
    foreign = write_cert(tmp_path, "foreign", *_pems(foreign_ca.issue(SLEEP_ID, timedelta(minutes=5))))
    behind = timedelta(0)  # the CA loads at the real time (its root is minutes old), then signs in the past
    past_ca = world_ca(world, clock=lambda: datetime.now(timezone.utc) - behind)
    behind = timedelta(hours=2)
    expired_cert = past_ca.issue(SLEEP_ID, timedelta(hours=1))
    assert expired_cert.not_after < datetime.now(timezone.utc) - timedelta(minutes=50)
    expired = write_cert(tmp_path, "expired", *_pems(expired_cert))

    zt_b = world.ztunnels["b"]
    results = {}
    for name, (cert, key) in (("valid", valid), ("foreign", foreign), ("expired", expired)):
        offset = zt_b.access_log.mark()
        errors_before = sum(zt_b.stats(r"ssl\.(connection_error|fail_verify_error)$").values())
        probe = hbone_probe(world, netns, cert, key)
        want = (lambda es: any(e.get("method") == "CONNECT" for e in es)) if name == "valid" else bool
        world.wait_until(lambda: want(zt_b.access_log.since(offset)), timeout=10,
                         what=f"ztunnel B's log line for the {name} probe")
        time.sleep(0.3)  # anything else it logs for the connection
        entries = zt_b.access_log.since(offset)
        errors_after = sum(zt_b.stats(r"ssl\.(connection_error|fail_verify_error)$").values())
        results[name] = (probe, entries, errors_after - errors_before)

    probe, entries, ssl_errors = results["valid"]
    assert probe.error is None and probe.server_sans == [PRODUCTPAGE_ID], probe
    assert b" 200 OK" in probe.answer and b"productpage-v1" in probe.answer, probe.answer
    [connect] = [e for e in entries if e.get("method") == "CONNECT"]
    assert connect["peer_san"] == SLEEP_ID and connect["authority"] == f"{PRODUCTPAGE_IP}:9080", connect
    assert connect["filter_chain"] == f"inbound_{PRODUCTPAGE_IP}" and connect["upstream_cluster"] == names.VIRTUAL_INBOUND
    assert ssl_errors == 0

    for name, reason in (("foreign", "TLSV1_ALERT_UNKNOWN_CA"), ("expired", "SSLV3_ALERT_CERTIFICATE_EXPIRED")):
        probe, entries, ssl_errors = results[name]
        assert probe.server_sans == [PRODUCTPAGE_ID], (name, probe)  # we did reach productpage's chain
        assert probe.error == reason, (name, probe)
        assert probe.answer == b"", (name, probe)
        assert [e for e in entries if e.get("method") == "CONNECT"] == [], (name, entries)
        [entry] = entries
        assert entry["log"] == contract.INBOUND_LISTENER and entry["filter_chain"] == f"inbound_{PRODUCTPAGE_IP}", entry
        # (its peer_san is the SAN the client presented, verified or not: Envoy logs it either way)
        assert entry["method"] is None and entry["upstream_cluster"] is None and entry["upstream_host"] is None, entry
        assert entry["bytes_received"] == 0 and entry["bytes_sent"] == 0, entry
        assert ssl_errors >= 1, (name, ssl_errors)


def _pems(issued) -> tuple[bytes, bytes]:
    return issued.cert_chain_pem, issued.private_key_pem
