"""Campaigns (svmpmu.campaign, svmpmu campaign): the merged report equals svmpmu.fuzz over the
same seeds for any shards, order and workers; checkpoints resume without redoing finished
shards and refuse another campaign's; a worker killed mid-shard changes nothing but the count
of shards rerun; bad inputs fail before any work."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import random
import signal
import sys
import threading
import time

import pytest

import svmpmu
from svmpmu.campaign import (
    CHECKPOINT_FORMAT,
    CampaignError,
    CampaignProgress,
    default_shard_traces,
)
from svmpmu.cli import main as cli_main
from svmpmu.cli_campaign import register
from svmpmu.cli_files import invalid_values
from svmpmu.fuzz import FuzzRun

campaign_module = importlib.import_module("svmpmu.campaign")  # svmpmu.campaign is the function

RUN = {"traces": 7_000, "length": 64, "seed": 5}


def comparable(report):
    """A report as data, without what depends on how it ran."""
    data = report.to_dict()
    del data["seconds"], data["campaign"]
    return data


@pytest.fixture(scope="module")
def fuzzed():
    """svmpmu.fuzz's reports of the runs the campaigns below make."""
    return {
        "v4": comparable(svmpmu.fuzz("v4", **RUN)),
        "baseline": comparable(svmpmu.fuzz("final", baseline="v4", **RUN)),
    }


@pytest.fixture
def count_shards(monkeypatch):
    """The trace ranges FuzzRun.tally runs in this process, as a list filled as they run."""
    ran = []
    tally = FuzzRun.tally

    def counting(self, start, end, threads=None):
        if end > start:
            ran.append((start, end))
        return tally(self, start, end, threads)

    monkeypatch.setattr(FuzzRun, "tally", counting)
    return ran


@pytest.mark.parametrize("shards", [1, 2, 7])
def test_merged_report_equals_fuzz_for_any_number_of_shards(shards, fuzzed):
    size = -(-RUN["traces"] // shards)
    report = svmpmu.campaign("v4", shard_traces=size, threads=1, **RUN)
    assert comparable(report) == fuzzed["v4"]
    assert report.classes  # something to compare: v4 diverges
    assert report.campaign["shards"] == shards
    assert report.campaign["shard_traces"] == size
    assert report.campaign["scheduler"] is None
    with_baseline = svmpmu.campaign("final", baseline="v4", shard_traces=size, **RUN)
    assert comparable(with_baseline) == fuzzed["baseline"]
    assert with_baseline.gone


def test_the_engine_is_passed_on(capsys):
    walked = svmpmu.fuzz("v4", engine="automaton", **RUN)
    report = svmpmu.campaign("v4", engine="automaton", shard_traces=1_500, **RUN)
    assert report.engine == "automaton"
    assert report.classes == walked.classes
    assert comparable(report)["traces"] == comparable(walked)["traces"]
    assert (report.records, report.diverging) == (walked.records, walked.diverging)
    status, out, _err = campaign_cli(
        ["--policy", "v4", "--traces", "500", "--engine", "automaton"], capsys
    )
    assert status == 1
    assert "engine automaton" in out


def test_shards_in_shuffled_order_merge_to_the_same_report(monkeypatch, fuzzed, count_shards):
    rng = random.Random(7)
    monkeypatch.setattr(campaign_module, "_local_order", lambda s: rng.sample(list(s), len(s)))
    for _ in range(3):
        count_shards.clear()
        report = svmpmu.campaign("v4", shard_traces=999, **RUN)
        assert comparable(report) == fuzzed["v4"]
        assert count_shards != sorted(count_shards)  # shuffled indeed
        assert sorted(count_shards) == [(s, min(s + 999, 7_000)) for s in range(0, 7_000, 999)]


def test_progress_is_told_shards_rate_and_classes():
    seen: list[CampaignProgress] = []
    svmpmu.campaign("v4", shard_traces=2_000, progress=seen.append, **RUN)
    assert [p.shards_done for p in seen] == [0, 1, 2, 3, 4]
    assert {p.shards for p in seen} == {4}
    assert seen[-1].traces_done == seen[-1].traces == 7_000
    assert seen[-1].classes > 0
    assert seen[-1].records_per_second > 0
    assert seen[-1].dashboard is None
    assert seen[-1].rerun == 0


def test_default_shard_size():
    assert default_shard_traces(10**9, 64) == 500_000  # 32 M records
    assert default_shard_traces(10**9, 64, worker_threads=64) == 500_000
    assert default_shard_traces(4_000_000, 64, worker_threads=2) == 500_000  # 4 a thread
    assert default_shard_traces(2_000_000, 64, worker_threads=2) == 250_000
    assert default_shard_traces(100_000, 64, worker_threads=2) == 31_250  # 2 M records at least
    assert default_shard_traces(100, 64, worker_threads=2) == 100  # one shard
    assert default_shard_traces(10, 10**9) == 1
    assert default_shard_traces(0, 0) == 1


def test_an_interrupted_campaign_resumes_without_redoing_finished_shards(
    tmp_path, fuzzed, count_shards
):
    path = tmp_path / "c.json"

    def stop_after_three(p):
        if p.shards_done == 3:
            raise KeyboardInterrupt

    partial = svmpmu.campaign(
        "v4", shard_traces=1_000, checkpoint=path, progress=stop_after_three, **RUN
    )
    assert not partial.complete
    assert partial.interrupted
    assert partial.traces == 3_000
    assert partial.requested == 7_000
    saved = json.loads(path.read_text())
    assert saved["format"] == CHECKPOINT_FORMAT
    assert saved["done"] == [[0, 3_000]]
    assert saved["tally"]["traces"] == 3_000
    assert count_shards == [(0, 1_000), (1_000, 2_000), (2_000, 3_000)]

    count_shards.clear()
    resumed = svmpmu.campaign("v4", checkpoint=path, **RUN)  # the checkpoint's shard size
    assert count_shards == [(s, s + 1_000) for s in range(3_000, 7_000, 1_000)]
    assert comparable(resumed) == fuzzed["v4"]
    assert resumed.campaign["from_checkpoint"] == 3
    assert resumed.campaign["earlier_seconds"] > 0
    assert resumed.seconds >= resumed.campaign["earlier_seconds"]

    count_shards.clear()  # a finished campaign: nothing to run, the same report
    again = svmpmu.campaign("v4", checkpoint=path, **RUN)
    assert count_shards == []
    assert comparable(again) == fuzzed["v4"]


def test_an_interrupt_mid_shard_drops_that_shard_only(tmp_path, monkeypatch, fuzzed):
    path = tmp_path / "c.json"
    tally = FuzzRun.tally

    def interrupted_at_the_third(self, start, end, threads=None):
        if start == 2_000:
            raise KeyboardInterrupt
        return tally(self, start, end, threads)

    monkeypatch.setattr(FuzzRun, "tally", interrupted_at_the_third)
    partial = svmpmu.campaign("v4", shard_traces=1_000, checkpoint=path, **RUN)
    assert partial.traces == 2_000
    assert not partial.complete
    assert json.loads(path.read_text())["done"] == [[0, 2_000]]
    monkeypatch.setattr(FuzzRun, "tally", tally)
    assert comparable(svmpmu.campaign("v4", checkpoint=path, **RUN)) == fuzzed["v4"]


def test_a_checkpoint_of_another_campaign_is_refused(tmp_path):
    path = tmp_path / "c.json"
    svmpmu.campaign("v4", shard_traces=3_500, checkpoint=path, **RUN)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"another campaign: seed: 5 in the checkpoint, 6 here"):
        svmpmu.campaign("v4", checkpoint=path, **{**RUN, "seed": 6})
    with pytest.raises(ValueError, match=r"policy\.vmrun_order: 'before_entry' in the checkpoint"):
        svmpmu.campaign("final", checkpoint=path, **RUN)
    with pytest.raises(ValueError, match=r"shard_traces: 3500 in the checkpoint, 1000 here"):
        svmpmu.campaign("v4", shard_traces=1_000, checkpoint=path, **RUN)
    with pytest.raises(ValueError, match=r"mix\.ops\.RUN: 250 in the checkpoint, 0 here"):
        svmpmu.campaign("v4", checkpoint=path, mix=svmpmu.Mix().with_ops(RUN=0), **RUN)
    assert path.read_bytes() == before  # refused: left as it was

    data = json.loads(before)
    for damage, message in [
        ({"version": 99}, "version 99"),
        ({"svmpmu": "0.0.1"}, "written by svmpmu 0.0.1"),
        ({"format": "something"}, "not a svmpmu campaign checkpoint"),
        ({"done": [[0, 3_000]]}, "not whole shards"),
        ({"done": [[0, 3_500], [0, 3_500]]}, "counted twice"),
        ({"tally": {**data["tally"], "traces": 1}}, "tally has 1 traces"),
        ({"tally": "x"}, "damaged"),
    ]:
        path.write_text(json.dumps({**data, **damage}))
        with pytest.raises(ValueError, match=message):
            svmpmu.campaign("v4", checkpoint=path, **RUN)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a svmpmu campaign checkpoint"):
        svmpmu.campaign("v4", checkpoint=path, **RUN)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"traces": -1}, ValueError, "traces"),
        ({"length": "64"}, TypeError, "length"),
        ({"seed": 2**64}, ValueError, "seed"),
        ({"shard_traces": 0}, ValueError, "shard_traces must be at least 1"),
        ({"shard_traces": True}, TypeError, "shard_traces must be an int"),
        ({"threads": 0}, ValueError, "threads"),
        ({"n_pmcs": 7}, ValueError, "n_pmcs"),
        ({"policy": "v9"}, ValueError, "v9"),
        ({"engine": "quantum"}, ValueError, "engine must be one of"),
        ({"mix": {"RUN": 1}}, TypeError, "mix must be a svmpmu.Mix"),
        ({"progress": 3}, TypeError, "progress must be callable"),
        ({"checkpoint": 3}, TypeError, "checkpoint must be a path"),
    ],
)
def test_bad_inputs_fail_before_any_work(tmp_path, change, error, message, count_shards):
    arguments = {"policy": "v4", **RUN, "checkpoint": tmp_path / "c.json", **change}
    with pytest.raises(error, match=message):
        svmpmu.campaign(**arguments)
    assert count_shards == []
    assert not (tmp_path / "c.json").exists()


def test_checkpoint_paths_that_cannot_be_written_are_refused(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        svmpmu.campaign("v4", checkpoint=tmp_path, **RUN)
    with pytest.raises(ValueError, match="no directory"):
        svmpmu.campaign("v4", checkpoint=tmp_path / "missing" / "c.json", **RUN)


def test_a_client_without_dask_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    with pytest.raises(ImportError, match=r"pip install 'svmpmu\[cluster\]'"):
        svmpmu.campaign("v4", client=object(), **RUN)


def campaign_cli(argv, capsys):
    """``svmpmu campaign ARGV`` through the command's own parser: (status, stdout, stderr)."""
    parser = argparse.ArgumentParser(prog="svmpmu")
    handlers = register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["campaign", *argv])
    refused = invalid_values(parser, args)
    if refused:
        return 2, "", refused[0]
    status = handlers["campaign"](args, sys.stdout)
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_prints_fuzz_report_and_json(tmp_path, capsys):
    options = ["--policy", "v4", "--traces", "3000", "--seed", "2", "--no-progress"]
    assert cli_main(["fuzz", *options]) == 1
    fuzzed = capsys.readouterr().out.splitlines()
    path, report = tmp_path / "c.json", tmp_path / "r.json"
    status, out, err = campaign_cli(
        [*options, "--shard-traces", "700", "--checkpoint", str(path), "--json", str(report)],
        capsys,
    )
    assert status == 1
    lines = out.splitlines()
    assert lines[0] == fuzzed[0]
    assert lines[1].split(";")[0] == fuzzed[1].split(";")[0]  # but the rate
    assert lines[2:] == fuzzed[2:]
    assert "campaign: 5 shards of 700 traces in this process" in err
    data = json.loads(report.read_text())
    assert data["campaign"]["shards"] == 5
    assert data["traces"] == 3000
    assert json.loads(path.read_text())["done"] == [[0, 3000]]

    status, out, err = campaign_cli([*options, "--checkpoint", str(path), "--json", "-"], capsys)
    assert status == 1
    assert json.loads(out)["campaign"]["from_checkpoint"] == 5
    assert "5 taken from the checkpoint" in err

    status, out, _err = campaign_cli(["--policy", "arch", "--traces", "100"], capsys)
    assert status == 0  # arch against itself: nothing diverges
    assert "0 classes" in out


def test_cli_refuses_bad_options(capsys, monkeypatch):
    status, _out, err = campaign_cli(["--scheduler", "localhost"], capsys)
    assert status == 2
    assert "tcp://HOST:PORT" in err
    status, _out, err = campaign_cli(["--shard-traces", "0"], capsys)
    assert status == 2
    assert "--shard-traces" in err
    with pytest.raises(SystemExit):  # argparse: one of the two only
        campaign_cli(["--scheduler", "tcp://h:1", "--local-workers", "2"], capsys)
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ValueError, match=r"pip install 'svmpmu\[cluster\]'"):
        campaign_cli(["--local-workers", "2", "--traces", "10"], capsys)


# On a local Dask cluster: loopback only, two worker processes of one thread each.


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.CRITICAL,  # the worker killed below
    )
    with cluster, distributed.Client(cluster) as client:
        yield client


def test_a_campaign_on_dask_equals_the_local_run(dask_client, tmp_path, fuzzed):
    seen = []
    report = svmpmu.campaign(
        "v4",
        client=dask_client,
        shard_traces=500,
        checkpoint=tmp_path / "c.json",
        progress=seen.append,
        **RUN,
    )
    assert comparable(report) == fuzzed["v4"]
    how = report.campaign
    assert how["shards"] == 14
    assert how["workers"] == 2
    assert how["threads"] == 1
    assert how["scheduler"].startswith("tcp://127.0.0.1:")
    assert how["dashboard"].startswith("http://127.0.0.1:")
    assert how["rerun"] == 0
    assert seen[-1].shards_done == 14
    assert seen[-1].dashboard == how["dashboard"]
    with_baseline = svmpmu.campaign(
        "final", baseline="v4", client=dask_client, shard_traces=3_000, **RUN
    )
    assert comparable(with_baseline) == fuzzed["baseline"]


def test_a_dask_campaign_interrupted_resumes_here(dask_client, tmp_path, fuzzed, count_shards):
    path = tmp_path / "c.json"

    def stop_after_two(p):
        if p.shards_done == 2:
            raise KeyboardInterrupt

    partial = svmpmu.campaign(
        "v4",
        client=dask_client,
        shard_traces=1_000,
        checkpoint=path,
        progress=stop_after_two,
        **RUN,
    )
    assert not partial.complete
    assert partial.traces == 2_000
    done = json.loads(path.read_text())["done"]
    assert sum(end - start for start, end in done) == 2_000  # whichever finished first
    resumed = svmpmu.campaign("v4", checkpoint=path, **RUN)
    assert len(count_shards) == 5  # only the five shards the cluster had not finished
    assert comparable(resumed) == fuzzed["v4"]
    assert resumed.campaign["from_checkpoint"] == 2


def _executing(dask_worker):
    """The keys of the tasks a Dask worker is running (client.run's function)."""
    return [ts.key for ts in dask_worker.state.executing]


def test_a_worker_killed_mid_shard_changes_nothing_but_the_reruns(dask_client):
    run = {"traces": 600_000, "length": 64, "seed": 11}
    pids = dask_client.run(os.getpid)
    killed = []

    def kill_a_worker_mid_shard():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for address, keys in dask_client.run(_executing).items():
                if any(str(k).startswith("svmpmu-shard") for k in keys):
                    time.sleep(0.15)  # well into a shard of about a second
                    os.kill(pids[address], signal.SIGKILL)
                    killed.append(address)
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_worker_mid_shard, daemon=True)
    killer.start()
    report = svmpmu.campaign("final", client=dask_client, shard_traces=150_000, **run)
    killer.join()
    assert killed
    assert report.campaign["rerun"] == 1
    assert comparable(report) == comparable(svmpmu.fuzz("final", **run))
    dask_client.wait_for_workers(2, timeout=60)  # the nanny restarts it


def test_cli_on_a_scheduler_and_on_local_workers(dask_client, capsys):
    options = ["--policy", "v4", "--traces", "3000", "--seed", "2", "--no-progress", "--summary"]
    assert cli_main(["fuzz", *options]) == 1
    fuzzed = capsys.readouterr().out.splitlines()
    address = dask_client.scheduler.address
    status, out, err = campaign_cli([*options, "--scheduler", address], capsys)
    assert status == 1
    assert out.splitlines()[2:] == fuzzed[2:]
    assert f"on 2 Dask workers (2 threads) of {address}" in err
    status, out, err = campaign_cli([*options, "--local-workers", "1"], capsys)
    assert status == 1
    assert out.splitlines()[2:] == fuzzed[2:]
    assert "on 1 Dask worker (1 thread) of tcp://127.0.0.1:" in err


def test_a_client_must_be_a_running_dask_client(dask_client):
    with pytest.raises(TypeError, match=r"client must be a dask\.distributed\.Client"):
        svmpmu.campaign("v4", client=dask_client.scheduler.address, **RUN)


def test_workers_of_another_svmpmu_version_are_refused(dask_client, monkeypatch, tmp_path):
    monkeypatch.setattr(campaign_module, "__version__", "0.0.0")  # the client's, as it says
    with pytest.raises(CampaignError, match="install the same version"):
        svmpmu.campaign("v4", client=dask_client, checkpoint=tmp_path / "c.json", **RUN)
    assert json.loads((tmp_path / "c.json").read_text())["done"] == []
