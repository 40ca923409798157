"""Where ``zpilot.kube.client.api_client`` finds credentials, against the in-process API server:
--kubeconfig, then KUBECONFIG, then the pod's service account, then ~/.kube/config; --context."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from kubernetes_asyncio import client

from zpilot.kube.client import KubeConfigError, api_client, server


async def whoami(api: client.ApiClient, apiserver) -> str:
    """Make a call and say which user the API server saw (the credentials actually used)."""
    await client.CoreV1Api(api).list_namespace()
    return apiserver.requests[-1].user


@pytest.fixture
def home(tmp_path: Path, apiserver) -> Path:
    """A HOME whose ~/.kube/config works, as a token of its own ("home")."""
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    apiserver.write_kubeconfig(home / ".kube" / "config", token=apiserver.add_token(user="home"))
    return home


async def test_kubeconfig_flag_then_kubeconfig_env_then_in_cluster_then_home(apiserver, home, tmp_path):
    flag = apiserver.write_kubeconfig(tmp_path / "flag", token=apiserver.add_token(user="flag"))
    env_file = apiserver.write_kubeconfig(tmp_path / "env", token=apiserver.add_token(user="env"))
    sa_dir = tmp_path / "sa"
    pod_env = apiserver.write_in_cluster_files(sa_dir, token=apiserver.add_token(user="pod"))
    everything = {"HOME": str(home), "KUBECONFIG": f"{tmp_path / 'absent'}:{env_file}", **pod_env}

    async def user(kubeconfig=None, **environ) -> str:
        async with await api_client(kubeconfig, environ=environ, service_account_dir=sa_dir) as api:
            assert server(api) == apiserver.url
            return await whoami(api, apiserver)

    assert await user(flag, **everything) == "flag"
    assert await user(**everything) == "env"  # the absent file of the list is skipped, as kubectl does
    assert await user(**{k: v for k, v in everything.items() if k != "KUBECONFIG"}) == "pod"
    assert await user(HOME=str(home)) == "home"


async def test_the_kubeconfig_flag_names_one_file_even_with_a_colon(apiserver, tmp_path):
    """kubectl's --kubeconfig is one path (only KUBECONFIG is a list): a directory named with a colon
    holds the file, and the parts of its name are not read as files of their own."""
    (tmp_path / "a").mkdir()
    decoy = apiserver.write_kubeconfig(tmp_path / "a" / "config", token=apiserver.add_token(user="decoy"))
    folder = tmp_path / "a:b"
    folder.mkdir()
    flag = apiserver.write_kubeconfig(folder / "config", token=apiserver.add_token(user="flag"))
    assert decoy.is_file() and str(flag) == f"{tmp_path}/a:b/config"
    async with await api_client(flag, environ={}) as api:
        assert await whoami(api, apiserver) == "flag"
    with pytest.raises(KubeConfigError, match="no such file"):
        await api_client(f"{decoy}:{flag}", environ={})


async def test_context_picks_a_kubeconfig_context(apiserver, tmp_path):
    path = apiserver.write_kubeconfig(tmp_path / "kubeconfig", context="one")
    async with await api_client(path, "one", environ={}) as api:
        assert await whoami(api, apiserver) == "admin"
    with pytest.raises(KubeConfigError, match=f"--kubeconfig {path} context two: .*two"):
        await api_client(path, "two", environ={})


async def test_missing_or_unusable_credentials_are_named(apiserver, tmp_path):
    with pytest.raises(KubeConfigError, match=f"--kubeconfig {tmp_path / 'nope'}: no such file"):
        await api_client(tmp_path / "nope", environ={})
    with pytest.raises(KubeConfigError, match=f"default kubeconfig {tmp_path}/.kube/config: no such file"):
        await api_client(environ={"HOME": str(tmp_path)})
    broken = tmp_path / "broken"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    with pytest.raises(KubeConfigError, match=f"KUBECONFIG {broken}: "):
        await api_client(environ={"KUBECONFIG": str(broken)})
    sa_dir = tmp_path / "sa"
    env = apiserver.write_in_cluster_files(sa_dir)
    with pytest.raises(KubeConfigError, match="in-cluster credentials have no contexts"):
        await api_client(None, "prod", environ=env, service_account_dir=sa_dir)
    (sa_dir / "ca.crt").unlink()
    with pytest.raises(KubeConfigError, match=f"in-cluster credentials \\({sa_dir}\\): .*cert"):
        await api_client(environ=env, service_account_dir=sa_dir)


# -- credentials that expire: a long-running serve or CNI agent keeps one client for hours -----------------------


def _rotate(path: Path, token: str) -> None:
    """Replace a token file as the kubelet does: a new file moved over the old one."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(token)
    fresh.replace(path)


@pytest.fixture
def reread_at_once(monkeypatch):
    """Token files read again at every request rather than after a minute (kubernetes-asyncio's in-cluster
    period, and ours for a kubeconfig's ``tokenFile``): what a minute does, without waiting for it."""
    from datetime import timedelta

    from kubernetes_asyncio.config import incluster_config

    from zpilot.kube import client as kube_client

    monkeypatch.setattr(incluster_config, "TOKEN_REFRESH_PERIOD", timedelta(0))
    monkeypatch.setattr(kube_client, "TOKEN_FILE_REREAD_SECONDS", 0.0)


async def test_a_rotated_service_account_token_is_used_by_a_client_made_before(apiserver, tmp_path, reread_at_once):
    """A bound service-account token lasts about an hour: the kubelet writes a new one before, and the old one
    then expires. A client made from the first goes on with the next."""
    sa_dir = tmp_path / "sa"
    env = apiserver.write_in_cluster_files(sa_dir, token=(first := apiserver.add_token(user="pod-1")))
    async with await api_client(environ=env, service_account_dir=sa_dir) as api:
        assert await whoami(api, apiserver) == "pod-1"
        _rotate(sa_dir / "token", apiserver.add_token(user="pod-2"))
        apiserver.auth.remove_token(first)  # expired
        assert await whoami(api, apiserver) == "pod-2"


async def test_a_rotated_kubeconfig_token_file_is_used_by_a_client_made_before(apiserver, tmp_path, reread_at_once):
    """A kubeconfig user's ``tokenFile`` (a token something else renews) is read again too, not only at start."""
    token_file = tmp_path / "token"
    token_file.write_text(first := apiserver.add_token(user="file-1"))
    path = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
    document = yaml.safe_load(path.read_text())
    document["users"][0]["user"] = {"tokenFile": str(token_file)}
    path.write_text(yaml.safe_dump(document))
    async with await api_client(path, environ={}) as api:
        assert await whoami(api, apiserver) == "file-1"
        _rotate(token_file, apiserver.add_token(user="file-2"))
        apiserver.auth.remove_token(first)
        assert await whoami(api, apiserver) == "file-2"


def _exec_kubeconfig(apiserver, tmp_path: Path, *, expires_in: timedelta) -> tuple[Path, Path, Path]:
    """A kubeconfig whose user is an ``exec`` credential plugin (as EKS's ``aws eks get-token`` and GKE's
    ``gke-gcloud-auth-plugin`` are): it prints the token in ``token`` with an ``expirationTimestamp``
    ``expires_in`` from each run, and counts its runs in ``runs``."""
    token, runs, plugin = tmp_path / "exec-token", tmp_path / "exec-runs", tmp_path / "plugin.py"
    runs.write_text("")
    plugin.write_text(
        "import datetime, json, pathlib\n"
        f"pathlib.Path({str(runs)!r}).open('a').write('run\\n')\n"
        f"expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds={expires_in.total_seconds()})\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential', 'status': {\n"
        f"    'token': pathlib.Path({str(token)!r}).read_text(),\n"
        "    'expirationTimestamp': expiry.strftime('%Y-%m-%dT%H:%M:%SZ')}}))\n"
    )
    path = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
    document = yaml.safe_load(path.read_text())
    document["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                                             "args": [str(plugin)], "interactiveMode": "Never"}}
    path.write_text(yaml.safe_dump(document))
    return path, token, runs


async def test_an_exec_plugins_token_is_asked_for_again_once_it_expires(apiserver, tmp_path):
    """An exec plugin's token expires (EKS's after 15 minutes): past its ``expirationTimestamp`` (less the five
    minutes kubernetes-asyncio keeps in hand: one that expires in one minute is due now) the plugin is run again."""
    path, token, runs = _exec_kubeconfig(apiserver, tmp_path, expires_in=timedelta(minutes=1))
    token.write_text(first := apiserver.add_token(user="exec-1"))
    async with await api_client(path, environ={}) as api:
        assert await whoami(api, apiserver) == "exec-1"
        token.write_text(apiserver.add_token(user="exec-2"))
        apiserver.auth.remove_token(first)
        assert await whoami(api, apiserver) == "exec-2"


async def test_an_exec_plugin_is_not_run_again_while_its_token_is_good(apiserver, tmp_path):
    path, token, runs = _exec_kubeconfig(apiserver, tmp_path, expires_in=timedelta(hours=1))
    token.write_text(apiserver.add_token(user="exec"))
    async with await api_client(path, environ={}) as api:
        for _ in range(3):
            assert await whoami(api, apiserver) == "exec"
    assert runs.read_text().splitlines() == ["run"]


async def test_a_plugin_that_fails_to_renew_leaves_the_token_in_hand(apiserver, tmp_path, caplog):
    """The request goes out with the last token (the API server's 401, if it has expired, is what the caller
    retries on), and the failure is logged."""
    path, token, runs = _exec_kubeconfig(apiserver, tmp_path, expires_in=timedelta(minutes=1))
    token.write_text(apiserver.add_token(user="exec"))
    async with await api_client(path, environ={}) as api:
        assert await whoami(api, apiserver) == "exec"
        token.unlink()  # the plugin now exits with an error
        with caplog.at_level("WARNING", logger="zpilot.kube.client"):
            assert await whoami(api, apiserver) == "exec"
    assert "credentials could not be renewed" in caplog.text, caplog.text
    assert len(runs.read_text().splitlines()) >= 2


async def test_a_plugin_that_hangs_does_not_hold_requests(apiserver, tmp_path, monkeypatch, caplog):
    """A plugin that never answers (a prompt, a metadata endpoint that does not reply) is given up after
    ``EXEC_PLUGIN_TIMEOUT_SECONDS``: the request goes out with the token in hand rather than waiting for ever,
    and the next request does not run the plugin again at once (each would wait that long too)."""
    from zpilot.kube import client as kube_client

    monkeypatch.setattr(kube_client, "EXEC_PLUGIN_TIMEOUT_SECONDS", 0.5)
    path, token, runs = _exec_kubeconfig(apiserver, tmp_path, expires_in=timedelta(minutes=1))
    plugin = tmp_path / "plugin.py"
    hang, started = tmp_path / "hang", tmp_path / "started"
    plugin.write_text(f"import pathlib, time\npathlib.Path({str(started)!r}).open('a').write('start\\n')\n"
                      f"if pathlib.Path({str(hang)!r}).exists():\n    time.sleep(60)\n" + plugin.read_text())
    token.write_text(apiserver.add_token(user="exec"))
    async with await api_client(path, environ={}) as api:
        assert await whoami(api, apiserver) == "exec"
        hang.touch()
        with caplog.at_level("WARNING", logger="zpilot.kube.client"):
            assert await whoami(api, apiserver) == "exec"
            assert await whoami(api, apiserver) == "exec"
    assert "credentials could not be renewed" in caplog.text, caplog.text
    # loaded, renewed (a minute is within kubernetes-asyncio's margin), then one run that hung (killed, never
    # counted): not one per request
    assert len(runs.read_text().splitlines()) == 2
    assert len(started.read_text().splitlines()) == 3
    left = [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(plugin).encode() in _read_or_empty(p)]
    assert not left, "the plugin that hung was left running"


def _read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # the process ended meanwhile
        return b""


# -- the first load: a plugin run at serve's start is bounded as a renewal is -------------------------------------


def _plugin_first_load(apiserver, tmp_path: Path, body: str) -> tuple[Path, Path]:
    """A kubeconfig whose user's ``exec`` plugin is the Python ``body`` (given ``SECRET``, a token it may print)."""
    path, _, _ = _exec_kubeconfig(apiserver, tmp_path, expires_in=timedelta(hours=1))
    plugin = tmp_path / "plugin.py"
    plugin.write_text(f"import signal, sys\nSECRET = {SECRET!r}\n{body}")
    return path, plugin


SECRET = "s3cr3t-token-never-shown"


async def test_a_plugin_that_hangs_at_the_first_load_fails_the_start_naming_the_user(apiserver, tmp_path):
    """kubernetes-asyncio waits for a plugin without limit, so a plugin that hangs (a prompt, a metadata
    endpoint that never replies) hung ``zpilot serve``'s start. It is now killed after ``exec_timeout`` and the
    error names the kubeconfig user; what it printed (a token, perhaps) is not in the error."""
    path, plugin = _plugin_first_load(apiserver, tmp_path, "print(SECRET, flush=True)\nsignal.pause()\n")
    with pytest.raises(KubeConfigError) as caught:
        await asyncio.wait_for(api_client(path, environ={}, exec_timeout=0.5), 20)  # (20 s: only if it hangs)
    message = str(caught.value)
    assert f"--kubeconfig {path}: kubeconfig user test-apiserver: exec plugin {sys.executable}: no answer in 0.5 s" \
        in message, message
    assert SECRET not in message
    left = [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(plugin).encode() in _read_or_empty(p)]
    assert not left, "the plugin that hung was left running"


async def test_a_plugin_that_hangs_is_killed_with_what_it_ran(apiserver, tmp_path):
    """A plugin that is a script waiting on a command it ran (the command holding its output open): both are
    killed. With the script alone killed, the command ran on holding the pipes, and asyncio's wait for the
    script waited for them too: serve's start (or a renewal, every request behind it) hung without limit."""
    marker = f"held-by-{tmp_path.name}"
    path, plugin = _plugin_first_load(
        apiserver, tmp_path,
        "import subprocess\n"
        f"subprocess.run([sys.executable, '-c', 'import signal; signal.pause()', {marker!r}])\n")
    with pytest.raises(KubeConfigError, match="no answer in 0.5 s"):
        await asyncio.wait_for(api_client(path, environ={}, exec_timeout=0.5), 20)  # (20 s: only if it hangs)

    def left() -> list[Path]:
        return [p for p in Path("/proc").glob("[0-9]*/cmdline") if marker.encode() in _read_or_empty(p)
                and (p.parent / "stat").exists() and b") Z " not in _read_or_empty(p.parent / "stat")]

    for _ in range(100):  # (SIGKILL is delivered asynchronously: a moment, not a time limit on zpilot)
        if not left():
            break
        await asyncio.sleep(0.05)
    assert not left(), "the command the plugin ran was left running"


async def test_a_plugin_whose_output_a_daemon_holds_fails_in_its_time(apiserver, tmp_path):
    """A plugin that starts a daemon of its own session (a credential agent) which keeps the plugin's output
    open: killing the plugin's process group does not end it, and the pipes stay open. The start fails in its
    time all the same (the wait for the plugin's end was for its pipes too: it hung as long as the daemon)."""
    marker = f"daemon-of-{tmp_path.name}"
    path, plugin = _plugin_first_load(
        apiserver, tmp_path,
        "import subprocess\n"
        f"subprocess.Popen([sys.executable, '-c', 'import signal; signal.pause()', {marker!r}], start_new_session=True)\n"
        "signal.pause()\n")
    pipes_before = _pipes()
    try:
        with pytest.raises(KubeConfigError, match="no answer in 0.5 s"):
            await asyncio.wait_for(api_client(path, environ={}, exec_timeout=0.5), 20)  # (20 s: only if it hangs)
        # our ends of its outputs closed though the daemon holds its own: a transport left open ran its __del__
        # in a later garbage collection (after its loop had closed: "Event loop is closed"; once inside
        # CPython's ast.parse: SystemError)
        assert _pipes() <= pipes_before
    finally:
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):  # the daemon this test started
            if marker.encode() in _read_or_empty(cmdline):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)


def _pipes() -> set[str]:
    """This process's open pipes."""
    found = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("pipe:"):
            found.add(target)
    return found


async def test_a_plugin_that_prints_without_end_is_cut_off(apiserver, tmp_path):
    """What a plugin prints is read up to 1 MiB (exec_plugin.MAX_OUTPUT_BYTES), then it is killed: memory stays
    bounded whatever it prints, and the error says so, never quoting it."""
    path, plugin = _plugin_first_load(
        apiserver, tmp_path, "while True:\n    sys.stdout.write(SECRET * 4096)\n")
    pipes_before = _pipes()
    with pytest.raises(KubeConfigError, match="printed more than 1 MiB \\(killed\\)$") as caught:
        await asyncio.wait_for(api_client(path, environ={}, exec_timeout=15), 20)  # (20 s: only if it hangs)
    assert SECRET not in str(caught.value)
    # its outputs read to their end and closed: a pipe left open (its reader stopped) kept a transport whose
    # __del__ later ran inside a garbage collection, once inside ast.parse (SystemError)
    assert _pipes() <= pipes_before
    left = [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(plugin).encode() in _read_or_empty(p)]
    assert not left, "the plugin was left running"


async def test_a_plugin_that_fails_at_the_first_load_says_why_without_its_output(apiserver, tmp_path, caplog):
    """The plugin's standard error (its own message) is in the error; its standard output never is, nor is it
    logged (kubernetes-asyncio logged a failed plugin's message itself)."""
    path, _ = _plugin_first_load(
        apiserver, tmp_path, "print(SECRET)\nprint('please run aws sso login', file=sys.stderr)\nsys.exit(3)\n")
    with caplog.at_level("DEBUG"), pytest.raises(KubeConfigError, match="exit status 3: please run aws sso login$"):
        await api_client(path, environ={})
    assert SECRET not in caplog.text
    path, _ = _plugin_first_load(apiserver, tmp_path, "print('not json', SECRET)\n")
    with pytest.raises(KubeConfigError, match="user test-apiserver: .*printed no ExecCredential") as caught:
        await api_client(path, environ={})
    assert SECRET not in str(caught.value)
