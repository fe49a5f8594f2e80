"""The benchmark harness's bookkeeping (the benchmarks themselves are not run here)."""

import json

from benchmarks.__main__ import SUITES, compare, markdown, plots, read_records, run_suite


def _rec(metric, value, unit, **case):
    return {"bench": "scaling", "case": case, "metric": metric, "value": value, "unit": unit,
            "env": {"backend": "cpu", "cpu_count": 2}}


def test_compare_reports_ratios_and_direction():
    a = [_rec("env_steps_per_s", 1000.0, "1/s", B=64), _rec("grad_step_s", 2.0, "s", H=80)]
    b = [_rec("env_steps_per_s", 1500.0, "1/s", B=64), _rec("grad_step_s", 3.0, "s", H=80),
         _rec("env_steps_per_s", 9.0, "1/s", B=1)]  # no counterpart in A: left out
    text = compare(a, b, "old", "new")
    rows = [l for l in text.splitlines() if l.startswith("| scaling")]
    assert len(rows) == 2
    assert "| 1.500 | B |" in rows[0]  # faster throughput: B better
    assert "| 1.500 | A |" in rows[1]  # slower step: A better


def test_markdown_and_plots(tmp_path):
    recs = [_rec("env_steps_per_s", 100.0 * b, "1/s", B=b, N=32, H=20) for b in (1, 4, 16)]
    recs += [_rec("temp_memory_mb", h / 10, "MiB", B=64, N=32, H=h, remat=r) for h in (10, 80) for r in (False, True)]
    recs.append({"bench": "generate", "skipped": "not present"})
    md = markdown(recs)
    assert md.count("| scaling |") == 7 and "generate: not present" in md
    written = plots(recs, tmp_path)
    names = {p.name for p in written}
    assert names == {"throughput_vs_batch.png", "memory_vs_horizon.png"}
    assert all(p.stat().st_size > 1000 for p in written)


def test_run_suite_reports_missing_scripts_as_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(SUITES, "tiny", [("benchmarks.does_not_exist", [])])
    recs = run_suite("tiny")
    assert recs == [{"bench": "does_not_exist", "skipped": recs[0]["skipped"]}]
    assert "not present" in recs[0]["skipped"]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert read_records(path) == recs
