"""A kubeconfig user's ``oidc`` auth provider (``zpilot.kube.oidc``), against an in-process IdP over TLS and the
in-process API server: the ID token refreshed at the start and when due, the IdP's CA handed to TLS in memory
(kubernetes-asyncio wrote it to a temp file, then failed the refresh), the IdP verified without one."""

from __future__ import annotations

import base64
import json
import ssl
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web

from zpilot.kube import exec_plugin
from zpilot.kube.client import KubeConfigError, api_client
from zpilot.kube.kubeconfig import OidcProvider
from zpilot.kube.oidc import OidcError, OidcTokens, jwt_expiry

from .apiserver.tls import make_serving_certs
from .test_kubeconfig_tls import _holding, _with_user, whoami


def jwt(claims: dict) -> str:
    """An unsigned JWT of ``claims`` (the client reads its exp; the API server knows it as a bearer token)."""
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none'})}.{part(claims)}.c2ln"


class Idp:
    """An OpenID provider on 127.0.0.1 (TLS, its own CA): discovery and the refresh_token grant. Each refresh
    answers the next ID token and a new refresh token (rotated: the last one is refused)."""

    def __init__(self, apiserver, directory: Path) -> None:
        self.apiserver = apiserver
        self.directory = directory
        self.certs = make_serving_certs()
        self.refresh_token = "refresh-0"
        self.refreshes = 0
        self.lifetime = 3600  # of each ID token answered, in seconds
        self.plain_requests: list[str] = []  # what came without TLS: path, form
        self.to_plain: set[str] = set()  # paths redirected to the same path without TLS
        self.bad_id_tokens = 0
        self.error_description = "not the last one"  # of a refresh token refused  # how many of the next answers carry an ID token whose claims are not JSON
        self.issuer = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> "Idp":
        app = web.Application(middlewares=[self._record_plain])
        app.router.add_get("/realms/k8s/.well-known/openid-configuration", self._discovery)
        app.router.add_post("/token", self._token)
        app.router.add_get("/deep/.well-known/openid-configuration", self._deep)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        directory = self.directory
        directory.mkdir()
        (directory / "cert.pem").write_bytes(self.certs.cert_pem)
        (directory / "key.pem").write_bytes(self.certs.key_pem)
        context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.issuer = f"https://127.0.0.1:{port}/realms/k8s"
        plain = web.TCPSite(self._runner, "127.0.0.1", 0)  # (the same routes without TLS, for redirects to it)
        await plain.start()
        self.plain = f"http://127.0.0.1:{plain._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    @web.middleware
    async def _record_plain(self, request: web.Request, handler):
        if not request.secure:
            self.plain_requests.append(f"{request.path} {dict(await request.post())}")
        elif request.path in self.to_plain:
            raise web.HTTPTemporaryRedirect(self.plain + request.path_qs)
        return await handler(request)

    async def _deep(self, request: web.Request) -> web.Response:
        """A discovery document nested deeper than json.loads recurses."""
        return web.Response(body=b"[" * 100000, content_type="application/json")

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response({"issuer": self.issuer, "token_endpoint": f"https://{request.host}/token"})

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if request.headers.get("Authorization") != "Basic " + base64.b64encode(b"zpilot:s%2Fcret").decode():
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") != "refresh_token" or form.get("refresh_token") != self.refresh_token:
            return web.json_response({"error": "invalid_grant", "error_description": self.error_description}, status=400)
        self.refreshes += 1
        self.refresh_token = f"refresh-{self.refreshes}"
        token = jwt({"sub": f"oidc-{self.refreshes}", "exp": int(time.time()) + self.lifetime})
        if self.bad_id_tokens:
            self.bad_id_tokens -= 1
            token = "e30." + base64.urlsafe_b64encode(b"{not json").decode() + ".c2ln"
        self.apiserver.add_token(token, user=f"oidc-{self.refreshes}")
        return web.json_response({"id_token": token, "refresh_token": self.refresh_token, "token_type": "Bearer"})

    def kubeconfig(self, path: Path, *, ca: bool = True, id_token_exp: int | None = None) -> Path:
        """A kubeconfig of this IdP, its ID token (user ``old``) expired a minute ago unless ``id_token_exp``."""
        id_token = jwt({"sub": "old", "exp": int(time.time()) - 60 if id_token_exp is None else id_token_exp})
        self.apiserver.add_token(id_token, user="old")
        config = {"idp-issuer-url": self.issuer, "client-id": "zpilot", "client-secret": "s/cret",
                  "refresh-token": "refresh-0", "id-token": id_token}
        if ca:
            config["idp-certificate-authority-data"] = base64.b64encode(self.certs.ca_pem).decode()
        return _with_user(self.apiserver, path, {"auth-provider": {"name": "oidc", "config": config}})


class _Later(datetime):
    """The clock of exec_plugin.due 56 minutes ahead."""

    @classmethod
    def now(cls, tz=None):  # type: ignore[override]
        return datetime.now(tz) + timedelta(minutes=56)


async def test_the_id_token_is_refreshed_with_the_idp_ca_in_memory_and_again_when_due(
        apiserver, tmp_path, temp_dir, monkeypatch):
    """The kubeconfig's ID token has expired: it is refreshed at the start, through TLS checked against the IdP's
    CA (``idp-certificate-authority-data``), which no file holds, nor held (kubernetes-asyncio wrote it to a temp
    file, then handed aiohttp that file's name as a TLS context: the refresh failed). Once due, it is refreshed
    again with the refresh token the IdP rotated (kept in memory)."""
    async with Idp(apiserver, tmp_path / "idp") as idp:
        async with await api_client(idp.kubeconfig(tmp_path / "kubeconfig"), environ={}) as api:
            assert idp.refreshes == 1 and await whoami(api, apiserver) == "oidc-1"
            assert await whoami(api, apiserver) == "oidc-1"  # (not due: not refreshed again)
            monkeypatch.setattr(exec_plugin, "datetime", _Later)  # (oidc-1, of an hour, is due 5 min before exp)
            assert await whoami(api, apiserver) == "oidc-2" and idp.refresh_token == "refresh-2"
    assert _holding(temp_dir, idp.certs.ca_pem) == [] and list(temp_dir.iterdir()) == []


async def test_without_its_ca_the_idp_is_checked_against_the_system_roots(apiserver, tmp_path, temp_dir):
    """Without ``idp-certificate-authority``, kubernetes-asyncio turned the IdP's certificate check off and sent
    it the client secret and refresh token whoever it was; client-go checks it against the system's roots, so
    does zpilot: an IdP of an unknown CA is refused, the start failing with an error naming the user and issuer."""
    async with Idp(apiserver, tmp_path / "idp") as idp:
        with pytest.raises(KubeConfigError, match=r"user .*: auth-provider oidc https://127\.0\.0\.1:\d+/realms/k8s: "
                                                  r".*certificate verify failed"):
            await api_client(idp.kubeconfig(tmp_path / "kubeconfig", ca=False), environ={})
        assert idp.refreshes == 0


@pytest.mark.parametrize("config, error", [
    ({"client-id": "zpilot"}, "idp-issuer-url and client-id are both required"),
    ({"idp-issuer-url": "http://idp.example", "client-id": "zpilot"}, "is not https"),
    ({"idp-issuer-url": "https://idp.example", "client-id": "zpilot", "idp-certificate-authority": "/x",
      "idp-certificate-authority-data": "eA=="}, "both set"),
    ({"idp-issuer-url": "https://idp.example", "client-id": "zpilot"}, "no refresh-token"),
])
async def test_an_oidc_provider_that_cannot_be_used_is_refused_at_the_start(apiserver, tmp_path, config, error):
    path = _with_user(apiserver, tmp_path / "kubeconfig", {"auth-provider": {"name": "oidc", "config": config}})
    with pytest.raises(KubeConfigError, match=error):
        await api_client(path, environ={})


def test_an_id_token_s_expiry_is_its_jwt_exp_read_as_base64url():
    token = jwt({"exp": 1_700_000_000, "name": "??>>??>>"})
    assert "_" in token.split(".")[1] and "-" in token.split(".")[1]  # (base64url: standard base64 refused these)
    assert jwt_expiry(token).timestamp() == 1_700_000_000
    assert jwt_expiry(jwt({"sub": "x"})) is None
    deep = "e30." + base64.urlsafe_b64encode(b"[" * 60000).decode() + ".c2ln"  # (json.loads: RecursionError)
    for bad in ("abc", "a.%%%.c", jwt({"exp": "soon"}), deep):
        with pytest.raises(OidcError):
            jwt_expiry(bad)


async def test_an_id_token_shorter_lived_than_the_margin_is_not_refreshed_before_every_request(
        apiserver, tmp_path):
    """An IdP whose ID tokens live less than the five minutes' margin (Keycloak's default lifespan is five
    minutes) was asked for a new one before each request, every token being due as it came; it is renewed
    halfway through its life instead (client-go: 10 s before its exp)."""
    async with Idp(apiserver, tmp_path / "idp") as idp:
        idp.lifetime = 240
        async with await api_client(idp.kubeconfig(tmp_path / "kubeconfig"), environ={}) as api:
            assert idp.refreshes == 1
            for _ in range(3):
                assert await whoami(api, apiserver) == "oidc-1"
            assert idp.refreshes == 1


async def test_an_already_expired_id_token_from_the_idp_is_not_asked_again_at_every_request(
        apiserver, tmp_path, monkeypatch):
    """An IdP answering tokens expired as they come (its clock, or a bug) is asked again only after
    RENEWAL_RETRY_SECONDS, as after a failed renewal, not before every request."""
    async with Idp(apiserver, tmp_path / "idp") as idp:
        path = idp.kubeconfig(tmp_path / "kubeconfig", id_token_exp=int(time.time()) + 400)
        async with await api_client(path, environ={}) as api:
            assert idp.refreshes == 0 and await whoami(api, apiserver) == "old"
            idp.lifetime = -60
            monkeypatch.setattr(exec_plugin, "EXPIRY_MARGIN", exec_plugin.EXPIRY_MARGIN * 2)  # the kubeconfig's is due
            assert await whoami(api, apiserver) == "oidc-1" and idp.refreshes == 1
            for _ in range(3):
                assert await whoami(api, apiserver) == "oidc-1"
            assert idp.refreshes == 1


def _provider(idp: Idp) -> OidcProvider:
    return OidcProvider(user="u", issuer=idp.issuer, client_id="zpilot", client_secret="s/cret",
                        refresh_token=idp.refresh_token, ca=idp.certs.ca_pem)


async def test_a_rotated_refresh_token_is_kept_though_its_id_token_is_refused(apiserver, tmp_path):
    """The IdP rotated the refresh token (the last one is refused now) in an answer whose ID token cannot be read:
    the renewal fails, but the next one uses the new refresh token (it was dropped: every renewal after that
    failed, for the process's life)."""
    async with Idp(apiserver, tmp_path / "idp") as idp:
        tokens = OidcTokens(_provider(idp))
        idp.bad_id_tokens = 1
        with pytest.raises(OidcError, match="not base64url JSON"):
            await tokens.renew(10)
        assert idp.refresh_token == "refresh-1"
        renewed = await tokens.renew(10)
        assert idp.refreshes == 2 and renewed.token is not None and jwt_expiry(renewed.token) is not None


async def test_an_idp_answering_deeply_nested_json_is_an_oidc_error(apiserver, tmp_path):
    """A discovery document nested deeper than Python's recursion limit (json.loads raises RecursionError, which
    is no ValueError) is refused as any answer that is not a JSON object: an OidcError naming the user."""
    async with Idp(apiserver, tmp_path / "idp") as idp:
        tokens = OidcTokens(OidcProvider(user="u", issuer=idp.issuer.replace("/realms/k8s", "/deep"),
                                         client_id="zpilot", refresh_token="r", ca=idp.certs.ca_pem))
        with pytest.raises(OidcError, match="user u: .*answered no JSON object"):
            await tokens.renew(10)


@pytest.mark.parametrize("path", ["/token", "/realms/k8s/.well-known/openid-configuration"])
async def test_an_idp_redirecting_to_plain_http_is_refused(apiserver, tmp_path, path):
    """The issuer and token endpoint must be https (the refresh token and client secret go there, the discovery
    says where they go); a redirect to plain HTTP was followed: the token request's (a 307 sends the form again)
    gave the refresh token in clear, the discovery's took the token endpoint from whoever answered."""
    async with Idp(apiserver, tmp_path / "idp") as idp:
        idp.to_plain.add(path)
        with pytest.raises(OidcError, match="user u: .*(answered HTTP 307|was redirected to http:)"):
            await OidcTokens(_provider(idp)).renew(10)
        assert not any("refresh" in request for request in idp.plain_requests), idp.plain_requests
        assert idp.refreshes == 0


async def test_an_id_token_expired_at_the_year_one_is_refreshed(apiserver, tmp_path):
    """An ``exp`` at the first instant datetime can hold (Go's zero time, 0001-01-01) is a token long expired: it
    was subtracted the five minutes' margin, OverflowError escaping the start's error handling (a traceback)."""
    async with Idp(apiserver, tmp_path / "idp") as idp:
        path = idp.kubeconfig(tmp_path / "kubeconfig", id_token_exp=-62135596800)
        async with await api_client(path, environ={}) as api:
            assert await whoami(api, apiserver) == "oidc-1"


async def test_the_idp_s_error_is_quoted_without_control_characters(apiserver, tmp_path):
    """The OAuth error fields quoted in the message (logged, printed at the start) lose their control characters:
    a newline forged a log line, an escape sequence drove the operator's terminal."""
    async with Idp(apiserver, tmp_path / "idp") as idp:
        idp.error_description = "refused\n2026-12-02 WARNING zpilot: forged\x1b[2J"
        provider = OidcProvider(user="u", issuer=idp.issuer, client_id="zpilot", client_secret="s/cret",
                                refresh_token="stale", ca=idp.certs.ca_pem)
        with pytest.raises(OidcError) as failed:
            await OidcTokens(provider).renew(10)
        assert str(failed.value).endswith("answered HTTP 400: invalid_grant refused2026-12-02 WARNING zpilot: forged[2J")
