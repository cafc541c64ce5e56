"""bench/report.py on a recorded sample (tests/unit/data/bench-samples.jsonl: 10 faults x 5 runs
with floors, phases on the hangs and the node loss, one failed broker_restart run).

The expected numbers are worked out by hand from that file, not by the code under test.
"""
import json
import shutil
from pathlib import Path

import pytest

from bench import report

DATA = Path(__file__).parent / "data" / "bench-samples.jsonl"
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def recorded():
    return report.load_jsonl(DATA)


@pytest.fixture(scope="module")
def summary(recorded):
    samples, floors, _ = recorded
    return report.summarize(samples, floors)


@pytest.fixture(scope="module")
def bench(recorded, summary):
    samples, _, meta = recorded
    return {"meta": report.bench_meta(meta, samples), "faults": summary}


def test_the_sample_has_every_fault_in_display_order(recorded, summary):
    samples, floors, meta = recorded
    assert (len(samples), len(floors)) == (50, 50)
    assert meta["runs"] == 5 and meta["beacon_cpu_s_per_min"] == 0.42
    assert list(summary) == list(report.FAULTS)


def test_p95_is_the_nearest_rank_for_small_n():
    assert report.p95([4.0]) == 4.0
    assert report.p95([5.0, 1.0]) == 5.0                        # ceil(1.9) - 1 = 1
    assert report.p95([3.0, 1.0, 2.0, 5.0, 4.0]) == 5.0         # ceil(4.75) - 1 = 4
    assert report.p95([float(v) for v in range(1, 21)]) == 19.0   # ceil(19) - 1 = 18
    assert report.p95([float(v) for v in range(1, 22)]) == 20.0   # ceil(19.95) - 1 = 19


def test_stats_of_a_hang(summary):
    # recovery 14.2 13.1 18.7 15.6 16.3 -> sorted 13.1 14.2 15.6 16.3 18.7
    hang = summary["worker_hang"]
    assert hang["label"] == "worker hang (SIGSTOP)"
    assert (hang["runs"], hang["failed"]) == (5, 0)
    assert hang["recovery_s"] == {"min": 13.1, "median": 15.6, "p95": 18.7, "max": 18.7}
    # floors 7.4 7.1 7.9 7.3 7.6 -> sorted 7.1 7.3 7.4 7.6 7.9
    assert hang["floor_s"] == {"min": 7.1, "median": 7.4, "p95": 7.9, "max": 7.9}
    # detect 4.8 5.1 6.2 7.0 9.9; decide 0.4 0.4 0.5 0.5 0.6; act 6.9 7.3 7.5 7.6 7.8;
    # verify 0.9 0.9 1.1 1.2 1.3
    assert hang["phases_median_s"] == {"detect_s": 6.2, "decide_s": 0.5, "act_s": 7.5,
                                       "verify_s": 1.1}
    assert list(hang["phases_median_s"]) == ["detect_s", "decide_s", "act_s", "verify_s"]


def test_ratios_are_against_the_median_floor(summary):
    hang = summary["worker_hang"]
    assert hang["ratio_median"] == pytest.approx(15.6 / 7.4, abs=1e-3)   # 2.108
    assert hang["ratio_p95"] == pytest.approx(18.7 / 7.4, abs=1e-3)      # 2.527
    assert summary["worker_kill9"]["phases_median_s"] == {}


def test_no_floor_gives_no_ratio_and_an_unmet_ratio_target():
    samples = [{"fault": "worker_hang", "run": 1, "recovery_s": 9.0}]
    hang = report.summarize(samples, [])["worker_hang"]
    assert hang["floor_s"] is None
    assert hang["ratio_median"] is None and hang["ratio_p95"] is None
    assert hang["met"] is False


def test_targets_one_met_one_not(summary):
    # api_server_hang: 1.6 1.9 2.2 2.4 2.8 -> p95 2.8 <= 3 s
    assert summary["api_server_hang"]["recovery_s"]["p95"] == 2.8
    assert summary["api_server_hang"]["met"] is True
    # scheduler_hang: median 10.9 / floor median 5.5 = 1.98 <= 2.0
    assert summary["scheduler_hang"]["ratio_median"] == pytest.approx(1.982, abs=1e-3)
    assert summary["scheduler_hang"]["met"] is True
    # master_node_loss: 13.1 13.4 14.9 16.2 17.8 -> p95 17.8 > 15 s
    assert summary["master_node_loss"]["met"] is False
    assert summary["worker_hang"]["met"] is False
    # no target: neither met nor missed
    assert summary["worker_kill9"]["target"] is None and summary["worker_kill9"]["met"] is None


def test_targets_are_data_evaluated_generically():
    bounds = ({"metric": "recovery_s.median", "max": 10.0}, {"metric": "ratio_median", "max": 2.0})
    samples = [{"fault": "x", "run": 1, "recovery_s": 8.0},
               {"fault": "x", "run": 2, "recovery_s": 9.0}]
    floors = [{"fault": "x", "run": 1, "floor_s": 5.0}]
    assert report.summarize(samples, floors, {"x": bounds})["x"]["met"] is True      # 8.5, 1.7
    floors = [{"fault": "x", "run": 1, "floor_s": 4.0}]
    assert report.summarize(samples, floors, {"x": bounds})["x"]["met"] is False     # 8.5 / 4
    assert set(report.TARGETS) <= set(report.FAULTS)


def test_a_failed_run_is_counted_and_left_out_of_the_stats(summary):
    broker = summary["broker_restart"]
    assert (broker["runs"], broker["failed"]) == (5, 1)
    assert broker["errors"] == ["airflow-worker on worker1 not answering pings 300 s after the "
                                "broker returned"]
    # 19.2 21.5 18.7 20.4 -> sorted 18.7 19.2 20.4 21.5: median 19.8, p95 ceil(3.8) - 1 = 3
    assert broker["recovery_s"] == {"min": 18.7, "median": 19.8, "p95": 21.5, "max": 21.5}


def test_a_fault_without_a_successful_run_has_no_stats():
    samples = [{"fault": "master_node_loss", "run": 1, "recovery_s": None, "error": "timeout"},
               {"fault": "master_node_loss", "run": 2, "recovery_s": None, "error": "timeout"}]
    floors = [{"fault": "master_node_loss", "run": 1, "floor_s": 5.5}]
    loss = report.summarize(samples, floors)["master_node_loss"]
    assert (loss["runs"], loss["failed"]) == (2, 2)
    assert loss["recovery_s"] is None and loss["ratio_median"] is None
    assert loss["floor_s"]["median"] == 5.5
    assert loss["met"] is False
    row = report.markdown_table({"faults": {"master_node_loss": loss}}).splitlines()[2]
    assert row == "| master node loss | 2 (2 failed) | - | - | 5.5 | - / - | p95 <= 15 s | no |"


def test_markdown_table(bench):
    lines = report.markdown_table(bench).splitlines()
    assert lines[0] == ("| fault | runs | median s | p95 s | floor (median) s | "
                        "ratio median / p95 | target | met |")
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    assert len(lines) == 2 + len(report.FAULTS) + 1
    assert ("| worker hang (SIGSTOP) | 5 | 15.6 | 18.7 | 7.4 | 2.11 / 2.53 | "
            "ratio median <= 1.3, ratio p95 <= 1.5 | no |") in lines
    # floor 9.7 9.9 10.0 10.2 10.4 -> 10.0; ratios 2.2 / 10, 2.8 / 10
    assert ("| api-server hang (SIGSTOP) | 5 | 2.2 | 2.8 | 10.0 | 0.22 / 0.28 | "
            "p95 <= 3 s (out of haproxy) | yes |") in lines
    assert lines[-1] == ("| Helm chart (reference): hung daemon restarted by its liveness probe "
                         "(5 x 60 s); a crashed one at once, back-off 10 s doubling "
                         "| - | - | 300 | - | - | - | - |")
    assert report.markdown_table(bench) == report.markdown_table(json.loads(json.dumps(bench)))


def test_write_json_round_trips(tmp_path, bench):
    out = tmp_path / "results" / "bench.json"
    report.write_json(out, bench["faults"], bench["meta"])
    written = json.loads(out.read_text())
    assert written["meta"]["runs"] == 5 and written["meta"]["host_load"] == [1.84, 1.62, 1.41]
    assert list(written["faults"]) == list(report.FAULTS)
    assert report.markdown_table(written) == report.markdown_table(bench)


def test_readme_rewrite_between_the_markers(tmp_path, bench):
    copy = tmp_path / "README.md"
    shutil.copy(README, copy)
    before = copy.read_text()
    head, tail = before.split(report.BEGIN)[0], before.split(report.END)[1]

    report.rewrite_readme(copy, report.readme_section(bench))
    after = copy.read_text()
    assert after.startswith(head + report.BEGIN + "\n5 runs per fault, 2025-06-12T14:03:11; "
                            "host load 1.84 1.62 1.41; beacon 0.42 CPU s per minute.\n")
    assert after.endswith(report.END + tail)
    assert report.markdown_table(bench) in after
    report.rewrite_readme(copy, report.readme_section(bench))
    assert copy.read_text() == after   # a second rewrite changes nothing

    copy.write_text(head + tail)
    with pytest.raises(ValueError, match="bench:begin"):
        report.rewrite_readme(copy, "x")


def test_the_cli_writes_json_and_prints_the_table(tmp_path, capsys):
    assert report.main([str(DATA), "--out-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "bench.json").exists()
    assert ("| master node loss | 5 | 14.9 | 17.8 | 5.7 | 2.61 / 3.12 | p95 <= 15 s | no |"
            in printed)


def test_plot_writes_a_png(tmp_path, bench):
    pytest.importorskip("matplotlib", reason="matplotlib lives in .venv-bench (make bench-deps)")
    out = tmp_path / "bench.png"
    report.plot(bench, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000


def test_the_driver_knows_every_fault_of_the_table():
    from bench import recovery
    assert list(recovery.ALL) == list(report.FAULTS)


def test_phases_come_from_the_audit_records(monkeypatch):
    """detect = intent time - decided_s - inject time; act = outcome - intent; verify = healthy - outcome."""
    from bench import recovery
    recs = [{"ts": 99.0, "action": "intent", "daemon": "worker", "id": "old"},
            {"ts": 104.0, "action": "intent", "daemon": "worker", "id": "a", "decided_s": 1.5,
             "intent": "restart"},
            {"ts": 104.2, "action": "intent", "daemon": "scheduler", "id": "b"},
            {"ts": 110.0, "action": "restart", "daemon": "worker", "id": "a", "outcome": "ok"}]
    monkeypatch.setattr(recovery.H, "salt_run_json", lambda lab, *a, **k: recs)
    got = recovery.phases(None, 100.0, 111.0, recovery.ALL["worker_hang"])
    assert got == {"detect_s": 2.5, "decide_s": 1.5, "act_s": 6.0, "verify_s": 1.0, "action": "restart"}
    assert recovery.phases(None, 100.0, 111.0, recovery.ALL["metastore_restart"]) == {}
    # the runner's outcome written after our probe said healthy: act ends at healthy, verify 0
    late = recovery.phases(None, 100.0, 108.0, recovery.ALL["worker_hang"])
    assert late == {"detect_s": 2.5, "decide_s": 1.5, "act_s": 4.0, "verify_s": 0.0,
                    "outcome_after_healthy_s": 2.0, "action": "restart"}


def test_readme_context_names_the_beacon_cost_per_node():
    from bench import report
    text = report.readme_section({"meta": {"runs": 3, "ts": "t", "beacon_cpu_s_per_min": 0.5,
                                           "beacon_cpu_s_per_min_by_node": {"worker1": 0.5, "master1": 1.25,
                                                                            "master2": None}},
                                  "faults": {}})
    assert "beacon (salt-minion) CPU s per minute: worker1 0.5, master1 1.25" in text
    assert "master2" not in text.split(".\n", 1)[0]


def test_phase_seconds_folds_a_job_that_started_before_the_fault():
    from bench import report
    got = report.phase_seconds({"detect_s": -4.21, "decide_s": 10.13, "act_s": 0.0, "action": "haproxy-set"})
    assert got == {"detect_s": 0.0, "decide_s": 5.92, "act_s": 0.0}
    assert report.phase_seconds({"detect_s": 2.0, "decide_s": 1.0}) == {"detect_s": 2.0, "decide_s": 1.0}
    assert report.phase_seconds(None) == {}


def test_runs_text_counts_the_faults_runs():
    from bench import report
    assert report.runs_text({"meta": {"runs": 9}, "faults": {"a": {"runs": 5}, "b": {"runs": 5}}}) == "5 runs"
    assert report.runs_text({"faults": {"a": {"runs": 2}, "b": {"runs": 5}, "c": {"runs": 3}}}) == "2-5 runs"
    assert report.runs_text({"faults": {"a": {"runs": 1}}}) == "1 run"
    assert report.runs_text({"meta": {"runs": 4}, "faults": {}}) == "4 runs"   # nothing per fault


def test_carry_over_keeps_what_was_not_measured_now_and_says_so():
    from bench import report
    now = {"scheduler_hang": {"label": "scheduler hang", "runs": 5, "failed": 0, "recovery_s": None,
                              "floor_s": None, "ratio_median": None, "ratio_p95": None,
                              "target": None, "met": None}}
    earlier = {"meta": {"ts": "2026-12-02T03:52:06"},
               "faults": {"scheduler_hang": dict(now["scheduler_hang"], runs=3),
                          "worker_kill9": dict(now["scheduler_hang"], label="worker kill -9", runs=3)}}
    merged = report.carry_over(now, earlier)
    assert list(merged) == ["worker_kill9", "scheduler_hang"]        # the table's fault order
    assert merged["scheduler_hang"]["runs"] == 5 and "from_bench" not in merged["scheduler_hang"]
    assert merged["worker_kill9"]["from_bench"] == "2026-12-02T03:52:06"
    row = report._row(merged["worker_kill9"])
    assert "| 3 (earlier bench, 2026-12-02T03:52:06) |" in row


def test_the_picture_labels_a_carried_over_fault_like_the_table():
    fault = {"label": "worker kill -9", "recovery_s": {"median": 1.0, "p95": 2.0},
             "from_bench": "2026-12-02T03:52:06"}
    assert report._plot_label(fault) == "worker kill -9\n(earlier bench, 2026-12-02T03:52:06)"
    assert report._plot_label(dict(fault, from_bench=None)) == "worker kill -9"
    assert report._plot_label(dict(fault, recovery_s=None, from_bench=None)) == \
        "worker kill -9 (no successful run)"
