"""The manifest directory source: change detection, stable reads, and what a bad file keeps."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

import pytest
import yaml

from zpilot.kube.directory import ManifestDirectory, ManifestDirectorySource, stamps
from zpilot.kube.manifests import load_manifests
from zpilot.kube.source import FeedSource, ModelEvent, SourceError, first_model

ARTICLE = Path(__file__).resolve().parents[2] / "examples" / "article"
NODE = "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n"


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    target = tmp_path / "manifests"
    shutil.copytree(ARTICLE, target)
    return target


def pod_names(event: ModelEvent) -> set[str]:
    return {w.name for w in event.index.cluster.workloads}


def kubectl_list(path: Path) -> str:
    """The file as ``kubectl get -o yaml`` prints it: keys sorted, so ``kind: List`` comes after the items."""
    items = [item for doc in yaml.safe_load_all(path.read_text()) if doc for item in doc.get("items", [doc])]
    return yaml.safe_dump({"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}},
                          sort_keys=True)


class Collector:
    """Reads a source in the background and keeps every event."""

    def __init__(self, source) -> None:
        self.events: list[ModelEvent] = []
        self._iter = source.events()
        self._task: asyncio.Task | None = None
        self._new = asyncio.Event()

    async def __aenter__(self) -> "Collector":
        self._task = asyncio.create_task(self._run())
        await self.wait(lambda e: e.initial)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._iter.aclose()

    async def _run(self) -> None:
        async for event in self._iter:
            self.events.append(event)
            self._new.set()

    async def wait(self, predicate, timeout: float = 10.0) -> ModelEvent:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if predicate(event):
                    return event
            self._new.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no such event in {len(self.events)} events")
            try:
                await asyncio.wait_for(self._new.wait(), remaining)
            except asyncio.TimeoutError:
                pass


def test_stamps_see_edits_additions_and_removals(tmp_path):
    (tmp_path / "a.yaml").write_text("kind: Node\n")
    first = stamps(tmp_path)
    (tmp_path / "b.yaml").write_text("kind: Node\n")
    second = stamps(tmp_path)
    assert second != first
    (tmp_path / "notes.txt").write_text("ignored")
    assert stamps(tmp_path) == second
    (tmp_path / "b.yaml").unlink()
    assert stamps(tmp_path) == first
    assert stamps(tmp_path / "missing") is None


async def test_the_first_model_is_what_a_one_shot_read_sees(manifests):
    event = await first_model(ManifestDirectorySource(manifests))
    assert event.initial
    assert event.index.cluster == load_manifests(manifests).cluster


async def test_a_burst_of_writes_is_one_change(tmp_path):
    (tmp_path / "n0.yaml").write_text(NODE.format(name="n0"))
    async with Collector(ManifestDirectorySource(tmp_path, interval=0.01, quiet=0.1)) as seen:
        start = time.monotonic()
        for i in range(1, 6):  # a burst of writes 20 ms apart
            (tmp_path / f"n{i}.yaml").write_text(NODE.format(name=f"n{i}"))
            await asyncio.sleep(0.02)
        event = await seen.wait(lambda e: len(e.index.cluster.nodes) == 6)
        await asyncio.sleep(0.3)
        assert len(seen.events) == 2 and event is seen.events[1]
        assert start <= event.changed_at <= start + 0.1  # when the burst began


async def test_a_file_rewritten_slowly_in_place_never_loses_its_pods(manifests):
    """Issue 11.4: ``kubectl get pods -o yaml > pods.yaml`` truncates first, then writes when the API
    answers, maybe page by page. With each pause longer than the quiet window, a source that read the
    file as it found it pushed an empty mesh; no model may ever lack the file's pods."""
    pods = manifests / "pods.yaml"
    complete = kubectl_list(pods)
    pods.write_text(complete)
    rewritten = complete.replace("10.4.4.19", "10.4.4.99")  # sleep's new IP: shows the rewrite was read
    item_boundary = rewritten.index("- apiVersion", len(rewritten) // 2)
    quiet = 0.05
    async with Collector(ManifestDirectorySource(manifests, interval=0.01, quiet=quiet)) as seen:
        everyone = pod_names(seen.events[0])
        assert "sleep-5644bdc767-2dfg7" in everyone
        with open(pods, "w") as out:  # the shell's O_TRUNC
            out.flush()
            await asyncio.sleep(6 * quiet)  # kubectl asks the API server
            for cut in (len(rewritten) // 3, item_boundary):  # a cut inside an item, a cut between items
                out.write(rewritten[out.tell():cut])
                out.flush()
                await asyncio.sleep(6 * quiet)  # the next page
            out.write(rewritten[out.tell():])
        final = await seen.wait(lambda e: "10.4.4.99" in {ip for w in e.index.cluster.workloads for ip in w.ips})
        assert pod_names(final) == everyone
        for event in seen.events:
            assert pod_names(event) == everyone, "a model lost pods while the file was being written"
        # meanwhile the file was reported, and that report is gone now
        reported = {p.reason for e in seen.events for p in e.index.problems if p.subject == str(pods)}
        assert any("keeping the 8 objects of its last good read" in r for r in reported), reported
        assert not any(p.subject == str(pods) for p in final.index.problems)


async def test_an_empty_or_broken_file_keeps_its_objects_until_it_reads_or_is_removed(manifests, caplog):
    pods = manifests / "pods.yaml"
    text = pods.read_text()
    caplog.set_level(logging.INFO, logger="zpilot.problems")
    async with Collector(ManifestDirectorySource(manifests, interval=0.01, quiet=0.03)) as seen:
        everyone = pod_names(seen.events[0])
        pods.write_text("")
        empty = await seen.wait(lambda e: any(p.subject == str(pods) for p in e.index.problems))
        assert pod_names(empty) == everyone
        assert [str(p) for p in empty.index.problems if p.subject == str(pods)] == [
            f"warning: {pods}: empty: no documents; keeping the 8 objects of its last good read until it reads again"]
        pods.write_text(text[: len(text) // 2] + "\n  - [unclosed\n")
        broken = await seen.wait(lambda e: any(p.subject == str(pods) and "the file looks incomplete" in p.reason
                                               for p in e.index.problems))
        assert pod_names(broken) == everyone
        pods.write_text(text.replace("10.4.4.19", "10.4.4.98"))
        fixed = await seen.wait(lambda e: not any(p.subject == str(pods) for p in e.index.problems))
        assert pod_names(fixed) == everyone
        pods.unlink()  # removing the file is how its objects go
        gone = await seen.wait(lambda e: "sleep-5644bdc767-2dfg7" not in pod_names(e))
        assert not any(p.subject == str(pods) for p in gone.index.problems)
    assert any(r.getMessage().startswith(f"resolved: {pods}: empty") for r in caplog.records)


async def test_the_first_model_waits_for_a_file_being_written(manifests):
    pods = manifests / "pods.yaml"
    text = pods.read_text()
    pods.write_text(text[: len(text) // 2] + "\n  - [unclosed\n")
    feed = ManifestDirectory(manifests, interval=0.01, quiet=0.3)
    events = FeedSource(lambda: feed, name="test", quiet=0.3).events()
    try:
        first = asyncio.ensure_future(anext(events))
        while str(pods) not in feed._changing:  # the first read found it unusable: it is waited for
            assert not first.done()
            await asyncio.sleep(0.005)
        pods.write_text(text)
        event = await asyncio.wait_for(first, 10)
        assert "sleep-5644bdc767-2dfg7" in pod_names(event)
        assert not any(p.subject == str(pods) for p in event.index.problems)
    finally:
        await events.aclose()


async def test_a_directory_that_disappears_keeps_the_model(manifests, caplog):
    async with Collector(ManifestDirectorySource(manifests, interval=0.01, quiet=0.03)) as seen:
        parked = manifests.with_name("parked")
        with caplog.at_level(logging.INFO):
            manifests.rename(parked)
            deadline = time.monotonic() + 5
            while not any("is gone; keeping the last config" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the disappearance was not noticed"
                await asyncio.sleep(0.01)
            parked.rename(manifests)
            await asyncio.sleep(0.3)
        assert len(seen.events) == 1


async def test_a_missing_directory_is_an_error():
    with pytest.raises(SourceError, match="does not exist"):
        await first_model(ManifestDirectorySource(Path("/nonexistent/zpilot")))


async def test_duplicates_resolve_as_a_one_shot_read_resolves_them(tmp_path):
    (tmp_path / "a-b").mkdir()
    (tmp_path / "a").mkdir()
    pod = (ARTICLE / "pods.yaml").read_text()
    (tmp_path / "a-b" / "pods.yaml").write_text(pod)
    (tmp_path / "a" / "pods.yaml").write_text(pod.replace("hostIP: 10.168.15.222", "hostIP: 10.168.15.99"))
    event = await first_model(ManifestDirectorySource(tmp_path))
    once = load_manifests(tmp_path)
    assert event.index.cluster == once.cluster
    dups = sorted(str(p) for p in event.index.problems if "duplicate of" in p.reason)
    assert dups and dups == sorted(str(p) for p in once.problems if "duplicate of" in p.reason)
