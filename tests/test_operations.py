"""Running unattended: incremental series, crash resume, store locking, Dask scale-out, and a real
Prefect server (cron deployment, UI in headless Chromium)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import chromium, write_jsonl

from curation.recipe import load_recipe
from curation.store import VersionLockedError, VersionStore

CLI = str(Path(sys.executable).with_name("curate"))
STEPS = [{"step": "length_filter", "min_words": 20}, {"step": "gopher_repetition"}, {"step": "exact_dedup"},
         {"step": "minhash_dedup"}]


WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there would their we him been has when who will more no if out so said what up its "
         "about into than them can only other new some could time these two may then do first any my now such like "
         "our over man me even most made after also did many before must through back years where much your way "
         "well down should because each just those people how too little state good very make world still own see "
         "men work long get here between both life being under never day same another know while last might us "
         "great old year off come since against go came right used take three river mill grain news road").split()


def doc(i: int, words: int = 120) -> str:
    """An English-looking document, different for each i (random common words: no repeated n-grams)."""
    import random

    rng = random.Random(i)
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def rows(start: int, n: int, prefix: str = "d") -> list[dict]:
    return [{"id": f"{prefix}{i}", "text": doc(i)} for i in range(start, start + n)]


def write_recipe(path: Path, inputs: list[dict], shard_mb: float = 1.0, name: str = "web") -> Path:
    path.write_text(yaml.safe_dump({"name": name, "inputs": inputs, "steps": STEPS, "shard_size_mb": shard_mb}))
    return path


def drop_folder(tmp_path: Path, first: str, records: list[dict]) -> tuple[Path, Path]:
    """A folder new files land in, holding its first file, and a recipe that watches it."""
    drop = tmp_path / "drop"
    drop.mkdir()
    write_jsonl(drop / first, records)
    return drop, write_recipe(tmp_path / "web.yaml", [{"path": "drop", "glob": "*.jsonl"}])


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "160", **extra}


def manifest_of(store: Path, name: str) -> dict:
    return json.loads((store / "versions" / name / "manifest.json").read_text())


# ---- a real Prefect server (module-wide) ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """`curate server` on a loopback port (its scheduler looks for due runs every 2 s): the API URL."""
    import httpx

    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w")
    server = subprocess.Popen([CLI, "server", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, (home / "server.log").read_text()[-3000:]
        time.sleep(0.5)
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
    log.close()


def _api(url: str, path: str, body: dict | None = None):
    import httpx

    response = httpx.post(f"{url}{path}", json=body or {}, timeout=30)
    response.raise_for_status()
    return response.json()


def _wait_for(predicate, seconds: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the process ended while waiting for {what}: {process.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


# ---- incremental series -------------------------------------------------------------------------------


@pytest.mark.e2e
def test_increments_add_only_new_files_dedup_against_the_parent_and_carry_it(tmp_path, prefect_harness):
    from flows.schedule import increment_flow

    drop, recipe = drop_folder(tmp_path, "day1.jsonl", rows(0, 60))
    store = VersionStore(tmp_path / "store")

    first = increment_flow(str(recipe), store.url, "web", workers=1)
    assert first["name"] == "web-0001" and first["parents"] == [] and first["rows"] == 60

    copied = doc(5)  # a day-1 text under a new id: dedup against the parent must catch it
    write_jsonl(drop / "day2.jsonl", [*rows(60, 30), {"id": "fresh-copy", "text": copied},
                                      {"id": "d7", "text": doc(999)}])  # a day-1 id reused
    second = increment_flow(str(recipe), store.url, "web", workers=1)
    assert second["name"] == "web-0002" and second["parents"] == ["web-0001"]
    assert second["carried"] == {"version": "web-0001", "rows": 60, "files": 1}
    assert second["rows"] == 60 + 30 and second["accounting"]["ok"]
    assert [f["path"] for f in second["inputs"][0]["files"]] == [str(drop / "day2.jsonl")]  # day 1 not re-read
    rejects = store.read_table("web-0002", "rejects", columns=["id", "step", "reason"]).to_pylist()
    by_id = {r["id"]: r for r in rejects}
    assert by_id["fresh-copy"]["step"] == "exact_dedup" and "web-0001" in by_id["fresh-copy"]["reason"]
    assert by_id["d7"]["reason"] == "duplicate_id=d7 already in version web-0001"
    ids = store.read_table("web-0002", columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 90 and ids[:60] == [f"d{i}" for i in range(60)]  # parent first, unchanged
    assert second["diff"]["added"] == 30 and second["diff"]["removed"] == 0

    nothing = increment_flow(str(recipe), store.url, "web", workers=1)
    assert nothing["published"] is None and "no new input files" in nothing["message"]

    # The watermark is a cache of what the manifests say: lost, it is rebuilt and nothing is re-ingested.
    (tmp_path / "store" / "series" / "web.json").unlink()
    from curation.series import next_increment

    step = next_increment(store, "web", load_recipe(recipe))
    assert step.name == "web-0003" and step.parent == "web-0002"
    assert sorted(step.seen) == [str(drop / "day1.jsonl"), str(drop / "day2.jsonl")]
    assert [s.params.get("against") for s in step.recipe.steps if s.step.endswith("_dedup")] == [["web-0002"]] * 2


@pytest.mark.e2e
def test_a_kill_between_publish_and_watermark_write_neither_reingests_nor_loses_the_parent(tmp_path, prefect_harness):
    from flows.schedule import increment_flow

    drop, recipe = drop_folder(tmp_path, "day1.jsonl", rows(0, 30))
    store = VersionStore(tmp_path / "store")
    watermark = tmp_path / "store" / "series" / "web.json"
    increment_flow(str(recipe), store.url, "web", workers=1)
    stale = watermark.read_bytes()
    write_jsonl(drop / "day2.jsonl", rows(30, 20))
    increment_flow(str(recipe), store.url, "web", workers=1)
    watermark.write_bytes(stale)  # as if killed after web-0002 was published, before its watermark write

    write_jsonl(drop / "day3.jsonl", rows(50, 10))
    third = increment_flow(str(recipe), store.url, "web", workers=1)
    assert third["name"] == "web-0003" and third["parents"] == ["web-0002"]
    assert [f["path"] for f in third["inputs"][0]["files"]] == [str(drop / "day3.jsonl")]  # day 2 not re-read
    assert third["rows"] == 60 and third["rejected_rows"] == 0
    assert json.loads(watermark.read_text())["versions"] == ["web-0001", "web-0002", "web-0003"]  # repaired


@pytest.mark.e2e
def test_a_series_continued_from_a_version_never_reingests_that_versions_files(tmp_path, prefect_harness):
    from flows.curate import run_curation
    from flows.schedule import increment_flow

    drop, recipe = drop_folder(tmp_path, "day1.jsonl", rows(0, 30))
    store = VersionStore(tmp_path / "store")
    run_curation(load_recipe(recipe), store.url, "base", workers=1)
    write_jsonl(drop / "day2.jsonl", rows(30, 20))
    first = increment_flow(str(recipe), store.url, "web", workers=1, start="base")
    assert first["parents"] == ["base"] and [f["path"] for f in first["inputs"][0]["files"]] == [
        str(drop / "day2.jsonl")]

    write_jsonl(drop / "day3.jsonl", rows(50, 10))
    second = increment_flow(str(recipe), store.url, "web", workers=1)
    assert second["parents"] == ["web-0001"]
    assert [f["path"] for f in second["inputs"][0]["files"]] == [str(drop / "day3.jsonl")]  # base's day 1 not re-read
    assert second["rows"] == 60 and second["rejected_rows"] == 0


def test_an_unreadable_watermark_file_is_rebuilt_from_the_manifests(tmp_path):
    from curation.series import next_increment

    drop, recipe = drop_folder(tmp_path, "day1.jsonl", rows(0, 5))
    store = VersionStore(tmp_path / "store")
    (tmp_path / "store" / "series").mkdir(parents=True)
    (tmp_path / "store" / "series" / "web.json").write_text('{"series": "web", "versions": ["web-00')  # cut short
    step = next_increment(store, "web", load_recipe(recipe))
    assert step.name == "web-0001" and step.parent is None and step.seen == {}


# ---- crash resume ---------------------------------------------------------------------------------------


def _done_markers(store: Path, name: str, prefix: str) -> list[Path]:
    return list((store / ".staging").glob(f"{name}.*/work/done/{prefix}*.arrow"))


@pytest.mark.e2e
def test_kill_9_mid_run_then_the_same_command_resumes_and_publishes_the_same_fingerprint(tmp_path, prefect_harness,
                                                                                        prefect_server):
    from flows.curate import run_curation

    for part in range(4):
        write_jsonl(tmp_path / f"in-{part}.jsonl", rows(part * 250, 250))
    recipe = write_recipe(tmp_path / "r.yaml", [{"path": "in-*.jsonl"}], shard_mb=0.1)  # ~24 shards
    store = tmp_path / "store"
    command = [CLI, "run", str(recipe), "--store", str(store), "--name", "v", "--workers", "1"]
    env = cli_env(tmp_path, PREFECT_API_URL=prefect_server)  # no temporary API to start in each process
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.monotonic() + 240
    while len(_done_markers(store, "v", "round-00")) < 3:  # a few shards of the first round are done
        assert process.poll() is None, process.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the run never got to its shards"
        time.sleep(0.02)
    tree = [process, *psutil.Process(process.pid).children(recursive=True)]
    os.killpg(process.pid, signal.SIGKILL)  # the flow process and its workers, as the OOM killer would
    for p in tree:
        try:
            p.wait(timeout=30) if isinstance(p, subprocess.Popen) else p.kill()
        except psutil.NoSuchProcess:
            pass
    done_before = len(_done_markers(store, "v", "round-"))
    assert not (store / "versions" / "v").exists()
    assert (store / ".staging" / "v.lock").exists()  # left by the killed run; its pid is gone

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    resumed = manifest_of(store, "v")["resumed"]
    assert resumed["ingest_tasks"] == resumed["of_ingest_tasks"] == 4
    assert done_before <= resumed["shard_tasks"] < resumed["of_shard_tasks"]  # only the rest was redone
    assert re.search(rf"resumed: 4 of 4 ingest tasks and {resumed['shard_tasks']} of", rerun.stdout)
    assert not (store / ".staging").exists() or not any((store / ".staging").iterdir())

    clean = run_curation(load_recipe(recipe), str(tmp_path / "clean"), "v", workers=1)
    assert "resumed" not in clean
    assert manifest_of(store, "v")["fingerprint"] == clean["fingerprint"]
    assert manifest_of(store, "v")["steps"] == clean["steps"]


def test_a_decision_that_fails_names_its_step_and_keeps_the_finished_tasks(tmp_path, prefect_harness, monkeypatch):
    from curation import dedup_parts
    from curation.pipeline import ShardError
    from curation.recipe import parse_recipe
    from flows.curate import run_curation

    def unreadable(*args, **kwargs):
        raise OSError("summary file unreadable")

    monkeypatch.setattr(dedup_parts, "band_candidates", unreadable)
    write_jsonl(tmp_path / "in.jsonl", rows(0, 40))
    recipe = parse_recipe({"inputs": [{"path": str(tmp_path / "in.jsonl")}], "shard_size_mb": 0.01,
                           "steps": [{"step": "minhash_dedup"}]})
    with pytest.raises(ShardError, match=r"step 'minhash_dedup' failed deciding from \d+ shards: OSError: summary"):
        run_curation(recipe, str(tmp_path / "store"), "x", workers=1)
    assert _done_markers(tmp_path / "store", "x", "ingest")  # the finished ingest is kept for a rerun


def test_a_finished_shard_whose_files_are_gone_is_done_again_on_resume(tmp_path, prefect_harness, monkeypatch):
    from curation import dedup_parts
    from curation.pipeline import ShardError
    from curation.recipe import parse_recipe
    from flows.curate import run_curation

    write_jsonl(tmp_path / "in.jsonl", rows(0, 40) + rows(0, 10, prefix="copy"))
    recipe = parse_recipe({"inputs": [{"path": str(tmp_path / "in.jsonl")}], "shard_size_mb": 0.01,
                           "steps": [{"step": "length_filter", "min_words": 5}, {"step": "minhash_dedup"}]})
    candidates = dedup_parts.band_candidates
    monkeypatch.setattr(dedup_parts, "band_candidates", lambda *a, **k: (_ for _ in ()).throw(OSError("stop")))
    with pytest.raises(ShardError):  # the run stops at the decision, its first round finished
        run_curation(recipe, str(tmp_path / "store"), "x", workers=1)
    summaries = sorted((tmp_path / "store" / ".staging").glob("x.*/work/summary-*.parquet"))
    assert len(summaries) >= 2
    summaries[0].unlink()  # say, a clean-up of the work folder
    monkeypatch.setattr(dedup_parts, "band_candidates", candidates)
    resumed = run_curation(recipe, str(tmp_path / "store"), "x", workers=1)
    assert resumed["resumed"]["shard_tasks"] == len(summaries) - 1  # the shard that lost its summary was redone
    clean = run_curation(recipe, str(tmp_path / "clean"), "x", workers=1)
    assert resumed["fingerprint"] == clean["fingerprint"] and resumed["rows"] == 40


@pytest.mark.e2e
def test_a_step_failing_in_a_worker_process_stops_the_run_naming_the_step_and_shard(tmp_path, prefect_harness):
    from curation.pipeline import ShardError
    from curation.recipe import parse_recipe
    from flows.curate import run_curation

    write_jsonl(tmp_path / "in.jsonl", rows(0, 40))
    broken = tmp_path / "broken-model"  # a classifier whose model file changed: fails when a worker loads it
    broken.mkdir()
    (broken / "model.bin").write_bytes(b"not a model")
    (broken / "classifier.json").write_text(json.dumps({"model_file": "model.bin", "sha256": "0" * 64}))
    recipe = parse_recipe({"inputs": [{"path": str(tmp_path / "in.jsonl")}], "shard_size_mb": 0.01,
                           "steps": [{"step": "length_filter", "min_words": 5},
                                     {"step": "quality_classifier", "model": str(tmp_path / "broken-model"),
                                      "min_score": 0.2}]})
    with pytest.raises(ShardError, match=r"step 'quality_classifier' failed on shard \S+raw-00000-\d+\.parquet: "
                                         r"ClassifierError: .*model\.bin: sha256 \S+ does not match"):
        run_curation(recipe, str(tmp_path / "store"), "x", workers=2)
    store = VersionStore(tmp_path / "store")
    assert not store.exists("x") and not (tmp_path / "store" / ".staging" / "x.lock").exists()
    assert _done_markers(tmp_path / "store", "x", "ingest")  # the finished ingest is kept for a rerun


# ---- concurrency --------------------------------------------------------------------------------------


def test_a_name_being_written_is_locked_and_a_dead_holders_lock_is_taken_over(tmp_path):
    store = VersionStore(tmp_path / "store")
    first = store.begin("v", run_key="ab" * 32)
    with pytest.raises(VersionLockedError, match=rf"being written by another run \(pid {os.getpid()} on "):
        store.begin("v", run_key="ab" * 32)
    other = store.begin("w", run_key="cd" * 32)  # another name in the same store is independent
    store.release(first)
    again = store.begin("v", run_key="ab" * 32)
    assert again.path == first.path and again.resumed  # the same run key finds the same work
    store.abandon(again)
    store.abandon(other)

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / "store" / ".staging" / "v.lock"
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0.0, "since": "earlier"}))
    staging = store.begin("v")  # the holder is gone: taken over
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    store.abandon(staging)
    assert not lock.exists()


@pytest.mark.e2e
def test_concurrent_runs_on_one_store(tmp_path, prefect_harness, prefect_server):
    from curation.store import VersionExistsError
    from flows.curate import run_curation

    write_jsonl(tmp_path / "in.jsonl", rows(0, 600))
    recipe_path = write_recipe(tmp_path / "r.yaml", [{"path": "in.jsonl"}], shard_mb=0.03)
    store = tmp_path / "store"
    other = subprocess.Popen([CLI, "run", str(recipe_path), "--store", str(store), "--name", "x", "--workers", "1"],
                             env=cli_env(tmp_path, PREFECT_API_URL=prefect_server), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: (store / ".staging" / "x.lock").exists(), 240, "the other run to start", other)
    recipe = load_recipe(recipe_path)
    with pytest.raises((VersionLockedError, VersionExistsError), match="version 'x' (is being written by another "
                                                                       "run|was just published|already exists)"):
        run_curation(recipe, str(store), "x", workers=1)  # same name, same store, while the other run writes it
    y = run_curation(recipe, str(store), "y", workers=1)  # another name in the same store, at the same time
    output = other.communicate(timeout=600)[0]
    assert other.returncode == 0, output
    x = manifest_of(store, "x")
    assert x["fingerprint"] == y["fingerprint"] and x["accounting"]["ok"] and y["accounting"]["ok"]
    assert x["rows"] == y["rows"] == 600
    assert VersionStore(store).names() == ["x", "y"] and not any((store / ".staging").iterdir())


# ---- Dask ---------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_dask_cluster_run_publishes_the_same_fingerprint_as_the_default_run(tmp_path, prefect_harness):
    from flows.curate import run_curation

    records = rows(0, 150) + [{"id": "copy", "text": doc(3)}]  # exact duplicate across shards
    write_jsonl(tmp_path / "in.jsonl", records)
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", [{"path": "in.jsonl"}], shard_mb=0.05))
    default = run_curation(recipe, str(tmp_path / "a"), "v", workers=2)
    dask = run_curation(recipe, str(tmp_path / "b"), "v", cluster="local:2")
    assert default["steps"][3]["rejected"] == 1  # the copy, decided across shards on both engines
    assert dask["fingerprint"] == default["fingerprint"] and dask["steps"] == default["steps"]
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", dashboard_address=None) \
            as existing:
        remote = run_curation(recipe, str(tmp_path / "c"), "v", cluster=existing.scheduler_address)  # tcp://...
    assert existing.scheduler_address.startswith("tcp://") and remote["fingerprint"] == default["fingerprint"]
    with pytest.raises(ValueError, match="expected local:N"):
        run_curation(recipe, str(tmp_path / "d"), "v", cluster="local:two")


# ---- schedules and the UI -------------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_cron_deployment_fires_on_a_local_server_and_makes_incremental_versions(tmp_path, prefect_server):
    drop, recipe = drop_folder(tmp_path, "a.jsonl", rows(0, 40))
    store = tmp_path / "store"
    serve = subprocess.Popen([CLI, "serve", str(recipe), "--cron", "* * * * * */5", "--store", str(store),
                              "--series", "nightly", "--workers", "1"],
                             env=cli_env(tmp_path, PREFECT_API_URL=prefect_server, PREFECT_RUNNER_POLL_FREQUENCY="1"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    series_file = store / "series" / "nightly.json"

    def summary_lists(*versions: str) -> bool:  # written by the run after it published
        return series_file.exists() and json.loads(series_file.read_text())["versions"][:len(versions)] == [
            *versions]

    def fired_runs() -> list[dict]:  # made by the schedule, not by hand, and finished
        deployments = _api(prefect_server, "/deployments/filter", {"deployments": {"name": {"any_": ["nightly"]}}})
        runs = _api(prefect_server, "/flow_runs/filter",  # not the many runs scheduled ahead
                    {"flow_runs": {"deployment_id": {"any_": [d["id"] for d in deployments]},
                                   "state": {"type": {"any_": ["COMPLETED"]}}}, "limit": 50})
        return [r for r in runs if r["auto_scheduled"]]

    def diff_artifact() -> list[dict]:  # the run's last step after publishing
        return _api(prefect_server, "/artifacts/filter", {"artifacts": {"key": {"any_": ["curate-nightly-0002-diff"]}}})

    try:
        _wait_for(lambda: (store / "versions" / "nightly-0001" / "manifest.json").exists(), 180, "the first run",
                  serve)
        write_jsonl(drop / "b.jsonl", rows(40, 25))
        _wait_for(lambda: (store / "versions" / "nightly-0002" / "manifest.json").exists(), 180,
                  "the run after new data arrived", serve)
        # The run that published nightly-0002 goes on to write the series summary and the diff; later ticks
        # find nothing new. Wait for what is asserted below while the runs are still being served.
        _wait_for(lambda: summary_lists("nightly-0001", "nightly-0002"), 120, "the series summary", serve)
        _wait_for(diff_artifact, 120, "the diff of nightly-0002", serve)
        _wait_for(lambda: len(fired_runs()) >= 2, 120, "two scheduled runs to complete", serve)
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
    second = manifest_of(store, "nightly-0002")
    assert second["parents"] == ["nightly-0001"] and second["rows"] == 65 and second["carried"]["rows"] == 40
    assert (store / "versions" / "nightly-0002" / "stats.json").exists() and second["guards"]["guards"]
    deployments = _api(prefect_server, "/deployments/filter", {"deployments": {"name": {"any_": ["nightly"]}}})
    assert deployments and deployments[0]["schedules"][0]["schedule"]["cron"] == "* * * * * */5"
    assert {row["measure"]: row["value"] for row in json.loads(diff_artifact()[0]["data"])}["added"] == 25


def _render(url: str, tmp_path: Path, png: Path) -> str:
    """The page's text once its scripts ran, and a screenshot of it."""
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1000",
            "--virtual-time-budget=20000"]
    subprocess.run([*base, f"--screenshot={png}", url], capture_output=True, timeout=120)
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


@pytest.mark.e2e
def test_the_prefect_ui_shows_the_flow_run_and_its_artifacts(tmp_path, prefect_server):
    from matplotlib.image import imread

    write_jsonl(tmp_path / "in.jsonl", rows(0, 30))
    recipe = write_recipe(tmp_path / "r.yaml", [{"path": "in.jsonl"}])
    result = subprocess.run([CLI, "run", str(recipe), "--store", str(tmp_path / "store"), "--name", "ui-check",
                             "--workers", "1"], env=cli_env(tmp_path, PREFECT_API_URL=prefect_server),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    steps = _api(prefect_server, "/artifacts/filter", {"artifacts": {"key": {"any_": ["curate-ui-check-steps"]}}})[0]
    run = _api(prefect_server, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [steps["flow_run_id"]]}}})[0]
    ui = prefect_server.removesuffix("/api")

    page = _render(f"{ui}/runs/flow-run/{run['id']}", tmp_path, tmp_path / "flow-run.png")
    assert run["name"] in page and "Completed" in page and "Artifacts" in page, page[:2000]
    artifact = _render(f"{ui}/artifacts/artifact/{steps['id']}", tmp_path, tmp_path / "artifact.png")
    assert "curate-ui-check-steps" in artifact and run["name"] in artifact
    assert re.search(r"length_filter 30 30 0", artifact), artifact[:2000]  # the table's row, rendered
    for png in (tmp_path / "flow-run.png", tmp_path / "artifact.png"):
        pixels = imread(png)[..., :3]
        assert pixels.shape[:2] == (1000, 1400) and pixels.std() > 0.05  # a drawn page, not a blank one


def test_the_shared_token_cache_is_bounded_by_characters():
    from curation.analysis import TokenCache

    cache = TokenCache(max_chars=100)
    for i in range(10):
        assert cache.tokens(str(i), "word " * 10) == ["word"] * 10  # 50 characters each
    assert cache.chars == 100 and len(cache._cache) == 2  # the oldest went first
    cache.clear()
    assert cache.chars == 0 and not cache._cache
