"""Simulated time in reports: with a ``[network]`` model, the table has the simulated time to the target (the
whole run's is in table.csv and table.json), the answer has who gets there first, and a figure draws accuracy against the simulated clock.

Two small real runs (dense and SuRP, two clients, in-process engine) on a 3G and a broadband link; every expected value is
read from their ``rounds.jsonl`` here, not from the report's code. The same runs with the clock taken out
of their files give the report runs without a network get: no time column, no figure.
"""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser

import pytest

from fedcomp.reports import make_report
from fedcomp.reports.figures import accuracy_vs_time
from fedcomp.reports.runs import expand, group_runs
from fedcomp.sweep import run_sweep
from tests.conftest import small_config
from tests.test_reports import assert_laid_out, lay_out_in_chromium

GRID = {"uplink": [{"name": "identity"}, {"name": "surp", "density": 0.01}]}
NETWORK = {"link": "profile", "profile": ["3g", "broadband"]}  # client 0 on 3G sets each round's time
LABELS = {"identity": "dense", "surp": "SuRP 1% ↑"}


@pytest.fixture(scope="module")
def timed(tmp_path_factory):
    root = tmp_path_factory.mktemp("timed")
    cfg = small_config(root, client={"local_steps": 3}, federation={"num_clients": 2}, network=NETWORK)
    return run_sweep(cfg, GRID, seeds=1, sweep_dir=root / "sweep", progress=False)


@pytest.fixture(scope="module")
def timed_report(timed, tmp_path_factory):
    return make_report([timed.sweep_dir], tmp_path_factory.mktemp("timed_report"))


def _rows(timed):
    """Each group's rows, read from its rounds.jsonl."""
    out = {}
    for run in timed.runs:
        lines = (timed.sweep_dir / run.dir / "rounds.jsonl").read_text().splitlines()
        out[LABELS[run.overrides["uplink"]["name"]]] = [json.loads(line) for line in lines]
    return out


def _seconds(value):
    """Seconds as the report writes them, below two minutes (these runs last seconds)."""
    assert value < 120
    return f"{value:.3g} s"


def _markdown_table(markdown):
    lines = markdown.split("## Results", 1)[1].strip().splitlines()
    cols = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:] if line.startswith("|")]
    return cols, {r[0]: dict(zip(cols, r, strict=True)) for r in rows}


class _Table(HTMLParser):
    """The results table's header texts and each row's sort values (data-v)."""

    def __init__(self):
        super().__init__()
        self.heads, self.rows, self.images, self._in_th = [], [], set(), False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self._in_th = tag == "th"
        if tag == "tr" and self.heads:
            self.rows.append([])
        if tag == "td":
            self.rows[-1].append(a.get("data-v"))
        if tag == "img":
            self.images.add(a["id"])

    def handle_data(self, data):
        if self._in_th:
            self.heads.append(data)

    def handle_endtag(self, tag):
        self._in_th = False


def test_the_table_shows_simulated_time_to_the_target_from_the_rows(timed, timed_report):
    rows = _rows(timed)
    report = json.loads(timed_report.json.read_text())
    target = report["target_accuracy"]
    expected = {}
    for label, rs in rows.items():
        assert all(r["sim_clock_s"] > 0 for r in rs)
        reached = next(r for r in rs if r["test_accuracy"] >= target)  # one seed each: the default target is met
        expected[label] = (rs[-1]["sim_clock_s"], reached["sim_clock_s"])
    groups = {g["label"]: g["metrics"] for g in report["groups"]}
    for label, (whole, to_target) in expected.items():
        assert groups[label]["sim_clock_s"]["values"] == [whole]
        assert groups[label]["sim_s_to_target"]["values"] == [to_target]
    # Markdown: the columns, in their place beside the bytes, and the values as written.
    cols, table = _markdown_table(timed_report.markdown.read_text())
    t = f"{target:.4g}"
    at = cols.index(f"bytes to {t}")
    assert cols[at : at + 3] == [f"bytes to {t}", f"sim. time to {t}", f"rounds to {t}"]
    assert sum("time" in c for c in cols) == 1  # the whole run's: in table.csv and table.json
    for label, (_, to_target) in expected.items():
        assert table[label][f"sim. time to {t}"] == _seconds(to_target)
    # HTML: the same columns, each cell sorting by the exact seconds.
    page = _Table()
    page.feed(timed_report.html.read_text())
    assert page.heads == cols
    by_label = {r[0]: dict(zip(cols, r, strict=True)) for r in page.rows}
    for label, (_, to_target) in expected.items():
        assert float(by_label[label][f"sim. time to {t}"]) == to_target
    # The answer: who reaches the target in the least simulated time, the runner-up after it.
    (question,) = [q for q in report["headline"]["targets"] if q["direction"] == "time"]
    order = sorted(expected, key=lambda lab: expected[lab][1])
    assert [e["label"] for e in question["order"]] == order
    assert [e["values"] for e in question["order"]] == [[expected[lab][1]] for lab in order]
    assert "needs the least simulated time" in timed_report.markdown.read_text()


def test_a_figure_draws_accuracy_against_the_simulated_clock(timed, timed_report):
    path = timed_report.figures["accuracy_vs_time"]
    assert path == timed_report.out_dir / "figures" / "accuracy_vs_time.png"
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 5000
    assert "figures/accuracy_vs_time.png" in timed_report.markdown.read_text()
    page = _Table()
    page.feed(timed_report.html.read_text())
    assert page.images == set(timed_report.figures)
    # Each group's curve: (simulated clock, accuracy) at every evaluated round, in seconds (these runs are short).
    fig = accuracy_vs_time(group_runs(expand([timed.sweep_dir])))
    ax = fig.axes[0]
    drawn = {line.get_label().split(" (")[0]: list(zip(line.get_xdata(), line.get_ydata(), strict=True))
             for line in ax.get_lines()}  # fmt: skip
    rows = _rows(timed)
    assert drawn == {label: [(r["sim_clock_s"], r["test_accuracy"]) for r in rs] for label, rs in rows.items()}
    assert ax.get_xscale() == "log" and ax.get_xlabel().startswith("simulated time, s ")


def _without_clock(timed, dest):
    """A copy of the runs as a run without ``[network]`` writes them: no clock in any row or the summary."""
    shutil.copytree(timed.sweep_dir, dest)
    for run in timed.runs:
        rounds = dest / run.dir / "rounds.jsonl"
        rows = [json.loads(line) for line in rounds.read_text().splitlines()]
        for r in rows:
            r.update(sim_round_s=None, sim_clock_s=None, sim_client_s={})
        rounds.write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary = dest / run.dir / "summary.json"
        summary.write_text(json.dumps({**json.loads(summary.read_text()), "sim_clock_s": None}))
    return dest


def test_runs_without_a_clock_get_the_table_without_time_columns_and_no_figure(timed, timed_report, tmp_path):
    plain = make_report([_without_clock(timed, tmp_path / "sweep")], tmp_path / "report")
    assert "accuracy_vs_time" not in plain.figures and not (tmp_path / "report/figures/accuracy_vs_time.png").exists()
    cols, table = _markdown_table(plain.markdown.read_text())
    timed_cols, timed_table = _markdown_table(timed_report.markdown.read_text())
    # The same runs: every other column and cell as in the report with the clock.
    assert cols == [c for c in timed_cols if not c.startswith("sim. time")]
    assert table == {label: {c: row[c] for c in cols} for label, row in timed_table.items()}
    text = plain.markdown.read_text() + plain.html.read_text()
    assert "simulated" not in text and "sim. time" not in text
    assert all(q["direction"] != "time" for q in json.loads(plain.json.read_text())["headline"]["targets"])


def test_the_time_columns_and_figure_render_in_headless_chromium(timed_report, tmp_path):
    seen = lay_out_in_chromium(timed_report, tmp_path)
    assert_laid_out(timed_report, seen)  # the new figure too, decoded and within the window; the wider table fits
    assert seen["images"][-1]["id"] == "accuracy_vs_time"
    groups = json.loads(timed_report.json.read_text())["groups"]
    t = f"{json.loads(timed_report.json.read_text())['target_accuracy']:.4g}"
    assert f"sim. time to {t}" in seen["heads"]
    column = seen["heads"].index(f"sim. time to {t}")
    shown = {row[0]: row[column] for row in seen["cells"]}
    assert shown == {g["label"]: _seconds(g["metrics"]["sim_s_to_target"]["mean"]) for g in groups}
    times = sorted(g["metrics"]["sim_s_to_target"]["mean"] for g in groups)
    ascending, descending = seen["sorted"]["sim. time to"]
    assert [float(v) for v in ascending] == times and [float(v) for v in descending] == times[::-1]
