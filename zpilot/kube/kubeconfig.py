"""A kubeconfig as zpilot reads it: the files merged, the context chosen, its cluster and its user.

kubernetes-asyncio reads a kubeconfig too. But it runs the user's ``exec`` plugin as it loads, with no time
limit, so a plugin that hangs would hang ``zpilot serve``'s start. It also keeps the user's section private,
and renewal needs it. The kubeconfig format is public and stable
(https://kubernetes.io/docs/reference/config-api/kubeconfig.v1/). So zpilot reads the parts it acts on
itself, runs the plugin itself (:mod:`.exec_plugin`), and hands kubernetes-asyncio a document of one context
with the plugin's answer in the plugin's place (:meth:`KubeConfig.document`).

kubectl's rules:
- files are merged in order: the first file that names a cluster, context or user wins, and so does the
  first file that sets ``current-context``;
- a relative path is relative to the file that holds it: ``certificate-authority``, ``client-certificate``,
  ``client-key``, ``tokenFile``, and an ``exec`` command with a ``/`` in it (a bare command is looked up
  on ``PATH``);
- a field and its ``*-data`` both set is refused (client-go's validation: "certificate-authority-data and
  certificate-authority are both specified"; it would use the data, so zpilot did, silently), for the
  cluster's CA and the user's client certificate and key;
- a cluster with a CA and ``insecure-skip-tls-verify: true`` is refused (client-go: "specifying a root
  certificates file with the insecure flag is not allowed");
- an ``exec`` plugin with ``provideClusterInfo: true`` is given the cluster (server, CA, the
  ``client.authentication.k8s.io/exec`` extension) in ``KUBERNETES_EXEC_INFO``.

The cluster's CA and the user's client certificate and key are read here (:meth:`KubeConfig.tls`) and kept
in memory: kubernetes-asyncio would write the ``*-data`` ones to files under the temp directory, left there
until the process exits (:mod:`.key_material` makes the TLS context without a file). A client certificate and
key given as files are read again as they are rotated (:meth:`KubeConfig.client_certificate_files`,
:mod:`.client_tls`), as client-go re-reads them.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

#: A kubeconfig file larger than this is refused (kubeconfigs with many inline CAs are tens of KB).
MAX_KUBECONFIG_BYTES = 16 << 20
#: A CA bundle, client certificate or key (PEM) larger than this is refused (a public CA bundle is ~250 KB).
MAX_PEM_BYTES = 1 << 20
#: Longest field of an ``oidc`` auth provider's config (an ID token is a few KB).
MAX_OIDC_FIELD = 64 << 10
#: How much of an ``exec`` section's ``installHint`` is shown when its command is not found.
MAX_INSTALL_HINT = 500
#: The cluster extension whose value a ``provideClusterInfo`` plugin gets as ``spec.cluster.config`` (client-go's).
EXEC_CLUSTER_EXTENSION = "client.authentication.k8s.io/exec"
#: The fields of a cluster and a user that hold TLS material; kubernetes-asyncio is never given them.
_TLS_FIELDS = ("certificate-authority", "certificate-authority-data", "client-certificate",
               "client-certificate-data", "client-key", "client-key-data")

_SECTIONS = {"clusters": "cluster", "contexts": "context", "users": "user"}
_CLUSTER_PATHS = ("certificate-authority",)
_USER_PATHS = ("client-certificate", "client-key", "tokenFile")


class KubeConfigProblem(ValueError):
    """The kubeconfig cannot be used as it is: the message names the entry and what is wrong with it."""


@dataclass(frozen=True)
class ExecPlugin:
    """A user's ``exec`` credential plugin (EKS's ``aws eks get-token``, GKE's ``gke-gcloud-auth-plugin``)."""

    user: str  # the kubeconfig user it belongs to, for messages
    command: str
    args: tuple[str, ...]
    env: Mapping[str, str]  # the section's variables, added to the process's environment
    api_version: str
    #: What to tell the operator when ``command`` is not found (``installHint``, control characters removed, cut).
    install_hint: str = ""
    #: ``spec.cluster`` of KUBERNETES_EXEC_INFO when the section says ``provideClusterInfo: true``, else None.
    cluster: Mapping[str, Any] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class OidcProvider:
    """A user's ``oidc`` auth provider (``auth-provider: {name: oidc, config: ...}``): its IdP, client, tokens as
    the kubeconfig holds them, and the IdP's CA (PEM, in memory; None: the system's roots), refreshed by
    :mod:`.oidc`. Never shown with its secrets."""

    user: str  # the kubeconfig user it belongs to, for messages
    issuer: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    ca: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ExecCredential:
    """What a plugin answered: a token, or a client certificate and key (PEM); and when it expires, if said."""

    token: str | None = None
    client_certificate: str | None = None
    client_key: str | None = None
    expiry: datetime | None = None  # timezone-aware

    def __repr__(self) -> str:  # (never the token or key: they are secrets)
        return f"ExecCredential(token={'...' if self.token else None}, expiry={self.expiry})"


@dataclass(frozen=True)
class TlsMaterial:
    """The cluster's CA and the user's client certificate and key (PEM), in memory; None where not given."""

    ca: bytes | None = None
    client_certificate: bytes | None = None
    client_key: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class KubeConfig:
    """The chosen context of a (merged) kubeconfig, its file paths made absolute."""

    context: str
    cluster: Mapping[str, Any]
    user_name: str | None
    user: Mapping[str, Any] = field(repr=False)
    cluster_name: str = "cluster"

    def tls(self, credential: ExecCredential | None = None) -> TlsMaterial:
        """The CA, client certificate and key, read (files) or decoded (``*-data``) into memory; a plugin's
        certificate and key (``credential``) in place of the user's. KubeConfigProblem naming the entry."""
        cluster_who, user_who = f"cluster {self.cluster_name}", f"user {str(self.user_name)[:200]}"
        ca = _pem(self.cluster, "certificate-authority", cluster_who)
        if credential is not None and credential.client_certificate is not None:
            return TlsMaterial(ca, credential.client_certificate.encode(), (credential.client_key or "").encode())
        cert = _pem(self.user, "client-certificate", user_who)
        key = _pem(self.user, "client-key", user_who)
        if (cert is None) != (key is None):
            raise KubeConfigProblem(f"{user_who}: client-certificate and client-key go together (one is missing)")
        return TlsMaterial(ca, cert, key)

    def client_certificate_files(self) -> tuple[str, str] | None:
        """The user's client certificate and key files, when both are files (no ``-data``): the ones a running
        process reads again as they are rotated on disk (client-go re-reads exactly these, ``ReloadTLSFiles``);
        else None."""
        cert, key = self.user.get("client-certificate"), self.user.get("client-key")
        if isinstance(cert, str) and cert and isinstance(key, str) and key and not (
                self.user.get("client-certificate-data") or self.user.get("client-key-data")):
            return cert, key
        return None

    def exec_plugin(self) -> ExecPlugin | None:
        """The user's ``exec`` plugin, or None; KubeConfigProblem if its section is malformed."""
        section = self.user.get("exec")
        if section is None:
            return None
        who = f"user {self.user_name}"
        if not isinstance(section, dict) or not isinstance(section.get("command"), str) or not section["command"]:
            raise KubeConfigProblem(f"{who}: exec has no command")
        if not isinstance(section.get("apiVersion"), str):
            raise KubeConfigProblem(f"{who}: exec has no apiVersion")
        args = section.get("args") or []
        if not isinstance(args, list):
            raise KubeConfigProblem(f"{who}: exec args is not a list")
        env = section.get("env") or []
        if not isinstance(env, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in env):
            raise KubeConfigProblem(f"{who}: exec env is not a list of name and value")
        # (YAML's null, "value:" with nothing after it, is the empty string, as kubectl reads it: not "None")
        return ExecPlugin(user=str(self.user_name), command=section["command"], args=tuple(_text(a) for a in args),
                          env={e["name"]: _text(e.get("value")) for e in env}, api_version=section["apiVersion"],
                          install_hint=_printable(_text(section.get("installHint")))[:MAX_INSTALL_HINT],
                          cluster=self._exec_cluster() if section.get("provideClusterInfo") is True else None)

    def oidc_provider(self) -> OidcProvider | None:
        """The user's ``oidc`` auth provider, or None (another provider, ``gcp``, is kubernetes-asyncio's);
        KubeConfigProblem if its section is malformed: no ``idp-issuer-url`` or ``client-id``, an issuer not
        https (the client secret and refresh token go to it), its CA both a file and data, or not readable."""
        section = self.user.get("auth-provider")
        if not isinstance(section, dict) or section.get("name") != "oidc":
            return None
        who = f"user {str(self.user_name)[:200]}: auth-provider oidc"
        config = section.get("config") or {}
        if not isinstance(config, dict):
            raise KubeConfigProblem(f"{who}: config is not a mapping")

        def text(key: str) -> str | None:
            value = config.get(key)
            if value is None or value == "":
                return None
            if not isinstance(value, str) or len(value) > MAX_OIDC_FIELD:
                raise KubeConfigProblem(f"{who}: {key} is not text of at most {MAX_OIDC_FIELD} characters")
            return value

        issuer, client_id = text("idp-issuer-url"), text("client-id")
        if issuer is None or client_id is None:
            raise KubeConfigProblem(f"{who}: idp-issuer-url and client-id are both required")
        if not issuer.startswith("https://"):
            raise KubeConfigProblem(f"{who}: idp-issuer-url {issuer[:200]} is not https (the client secret and"
                                    " refresh token are sent to it)")
        _refuse_file_and_data(config, ("idp-certificate-authority",), who)
        return OidcProvider(user=str(self.user_name), issuer=issuer, client_id=client_id,
                            client_secret=text("client-secret"), id_token=text("id-token"),
                            refresh_token=text("refresh-token"), ca=_pem(config, "idp-certificate-authority", who))

    def _exec_cluster(self) -> dict[str, Any]:
        """The cluster as client-go gives it to a ``provideClusterInfo`` plugin (clientauthentication's Cluster:
        its JSON field names; the CA as base64, read from its file if need be; ``config``: the extension's)."""
        info: dict[str, Any] = {"server": _text(self.cluster.get("server"))}
        if self.cluster.get("tls-server-name"):
            info["tls-server-name"] = _text(self.cluster["tls-server-name"])
        if self.cluster.get("insecure-skip-tls-verify") is True:
            info["insecure-skip-tls-verify"] = True
        ca = _pem(self.cluster, "certificate-authority", f"cluster {self.cluster_name}")
        if ca is not None:
            info["certificate-authority-data"] = base64.b64encode(ca).decode()
        if self.cluster.get("proxy-url"):
            info["proxy-url"] = _text(self.cluster["proxy-url"])
        if self.cluster.get("disable-compression") is True:
            info["disable-compression"] = True
        for extension in self.cluster.get("extensions") or []:
            if isinstance(extension, dict) and extension.get("name") == EXEC_CLUSTER_EXTENSION:
                info["config"] = extension.get("extension")
        return info

    def document(self, credential: ExecCredential | None = None) -> dict[str, Any]:
        """A kubeconfig of this context alone for kubernetes-asyncio, with ``credential`` (a plugin's answer, or
        an ``oidc`` provider's ID token) in place of the user's ``exec`` section (or ``oidc`` auth provider), so
        that the library runs no plugin (and refreshes no token). Without the TLS material
        (:meth:`tls`): the library would write the ``*-data`` ones to temp files."""
        user = {k: v for k, v in self.user.items() if k not in _TLS_FIELDS}
        if credential is not None:
            user.pop("exec", None)
            if isinstance(user.get("auth-provider"), dict) and user["auth-provider"].get("name") == "oidc":
                del user["auth-provider"]  # (refreshed by zpilot: kubernetes-asyncio's wrote its CA to a temp file)
            if credential.token is not None:
                user["token"] = credential.token
        name = self.user_name or "user"
        return {
            "apiVersion": "v1", "kind": "Config", "current-context": self.context,
            "clusters": [{"name": "cluster", "cluster": {k: v for k, v in self.cluster.items() if k not in _TLS_FIELDS}}],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": self.context, "context": {"cluster": "cluster", "user": name}}],
        }


def read_kubeconfig(paths: Sequence[str | Path], context: str | None = None) -> KubeConfig:
    """The files at ``paths`` merged (kubectl's rules, above), and ``context`` (default: current-context).

    Raises KubeConfigProblem (or OSError) naming what is wrong, never quoting the file."""
    named: dict[str, dict[str, Any]] = {kind: {} for kind in _SECTIONS}
    current: str | None = None
    for path in map(Path, paths):
        document = _load(path)
        if not current and isinstance(document.get("current-context"), str):
            current = document["current-context"] or None
        for kind, key in _SECTIONS.items():
            for entry in document.get(kind) or []:
                if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                    raise KubeConfigProblem(f"{path}: an entry of {kind} has no name")
                section = entry.get(key) or {}
                if not isinstance(section, dict):
                    raise KubeConfigProblem(f"{path}: {key} {entry['name']} is not a mapping")
                named[kind].setdefault(entry["name"], _absolute(kind, section, path.parent))
    chosen = context or current
    if not chosen:
        raise KubeConfigProblem("no current-context (give --context)")
    ctx = named["contexts"].get(chosen)
    if ctx is None:
        known = ", ".join(sorted(named["contexts"])) or "none"
        raise KubeConfigProblem(f"no context {chosen} (contexts: {known})")
    cluster = named["clusters"].get(ctx.get("cluster"))
    if cluster is None:
        raise KubeConfigProblem(f"context {chosen}: no cluster {ctx.get('cluster')}")
    if cluster.get("insecure-skip-tls-verify") is True and (
            cluster.get("certificate-authority") or cluster.get("certificate-authority-data")):
        raise KubeConfigProblem(
            f"cluster {str(ctx.get('cluster'))[:200]}: certificate-authority and insecure-skip-tls-verify are both set, which"
            " kubectl refuses too (a CA that is not checked): remove one")
    _refuse_file_and_data(cluster, ("certificate-authority",), f"cluster {str(ctx.get('cluster'))[:200]}")
    user_name = ctx.get("user")
    if user_name is not None and user_name not in named["users"]:
        raise KubeConfigProblem(f"context {chosen}: no user {user_name}")
    if user_name is not None:
        _refuse_file_and_data(named["users"][user_name], ("client-certificate", "client-key"),
                              f"user {str(user_name)[:200]}")
    return KubeConfig(context=chosen, cluster=cluster, user_name=user_name,
                      user=named["users"].get(user_name, {}) if user_name is not None else {},
                      cluster_name=str(ctx.get("cluster"))[:200])  # (a name for messages: bounded)


def _refuse_file_and_data(section: Mapping[str, Any], keys: Sequence[str], who: str) -> None:
    """KubeConfigProblem if a field and its ``-data`` are both set: kubectl refuses such an entry (client-go's
    ``validateClusterInfo``/``validateAuthInfo``), as one of the two is not what the author meant to use."""
    for key in keys:
        if section.get(key) and section.get(f"{key}-data"):
            raise KubeConfigProblem(f"{who}: {key} and {key}-data are both set, which kubectl refuses too (it would"
                                    f" use {key}-data and ignore the file): remove one")


def _text(value: Any) -> str:
    """A kubeconfig string as kubectl reads it: null is the empty string."""
    return "" if value is None else str(value)


def _printable(text: str) -> str:
    """``text`` without control characters (client-go strips a hint's ANSI escapes): a kubeconfig may come
    from anyone, and the hint goes to the operator's terminal and logs."""
    return "".join(c for c in text if c.isprintable() or c == " ").strip()


def _pem(section: Mapping[str, Any], key: str, who: str) -> bytes | None:
    """``key``'s PEM: ``key-data`` (base64) if set, else the file ``key`` names (read, bounded), else None."""
    data = section.get(f"{key}-data")
    if data:
        if not isinstance(data, str) or len(data) > MAX_PEM_BYTES * 4 // 3 + 4:
            raise KubeConfigProblem(f"{who}: {key}-data is not base64 text of at most {MAX_PEM_BYTES >> 20} MiB")
        try:
            return base64.b64decode("".join(data.split()), validate=True)  # (folded lines, as Go's decoder takes)
        except ValueError:
            raise KubeConfigProblem(f"{who}: {key}-data is not base64") from None
    path = section.get(key)
    if not path:
        return None
    return read_pem_file(str(path), key, who)


def read_pem_file(path: str, key: str, who: str) -> bytes:
    """The file ``path`` (the entry's field ``key``) read, at most ``MAX_PEM_BYTES``: at load, and again as a
    client certificate is rotated. KubeConfigProblem naming the entry, the field and the file."""
    try:
        with open(path, "rb") as f:
            pem = f.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise KubeConfigProblem(f"{who}: {key} {path}: {exc.strerror or exc}") from None
    if len(pem) > MAX_PEM_BYTES:
        raise KubeConfigProblem(f"{who}: {key} {path}: larger than {MAX_PEM_BYTES >> 20} MiB")
    return pem


def _load(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        text = f.read(MAX_KUBECONFIG_BYTES + 1)
    if len(text) > MAX_KUBECONFIG_BYTES:
        raise KubeConfigProblem(f"{path}: larger than {MAX_KUBECONFIG_BYTES >> 20} MiB")
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        # Never str(exc): PyYAML quotes the line it failed on, and in a kubeconfig that can be a token or key.
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise KubeConfigProblem(f"{path}: not YAML{at} ({str(problem)[:100]})") from None
    if not isinstance(document, dict):
        raise KubeConfigProblem(f"{path}: not a kubeconfig (not a mapping)")
    return document


def _absolute(kind: str, section: dict[str, Any], base: Path) -> dict[str, Any]:
    """``section`` with its relative file paths made relative to ``base`` (the directory of its file)."""
    keys = _CLUSTER_PATHS if kind == "clusters" else _USER_PATHS if kind == "users" else ()
    out = dict(section)
    for key in keys:
        if isinstance(out.get(key), str) and out[key] and not Path(out[key]).is_absolute():
            out[key] = str(base / out[key])
    exec_section = out.get("exec")
    if kind == "users" and isinstance(exec_section, dict):
        command = exec_section.get("command")
        if isinstance(command, str) and "/" in command and not Path(command).is_absolute():
            out["exec"] = {**exec_section, "command": str(base / command)}
    return out
