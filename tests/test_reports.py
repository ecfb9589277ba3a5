"""Sweeps and reports on real small runs: a real 2 compressors × 2 seeds sweep, then its report."""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import re
import shutil
import statistics
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fedcomp.cli import main as cli_main
from fedcomp.config import ConfigError
from fedcomp.reports import ReportError, make_report
from fedcomp.servers.recorder import read_rounds
from fedcomp.sweep import parse_grid, plan, run_sweep
from tests.conftest import small_config

GRID = {"uplink": [{"name": "identity"}, {"name": "surp", "density": 0.01}]}


def sweep_config(root):
    return small_config(root, client={"local_steps": 10})  # four runs: a few steps each are enough to compare


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    return run_sweep(sweep_config(root), GRID, seeds=2, sweep_dir=root / "sweep", progress=False)


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):
    return make_report([sweep.sweep_dir], tmp_path_factory.mktemp("report"))


def _rows(run_dir):
    return read_rounds(run_dir)


def _per_client_round(rows):
    return sum(r["uplink_bytes"] for r in rows) / sum(len(r["clients"]) for r in rows)


def test_sweep_runs_the_cross_product_one_directory_each(sweep):
    assert [r.status for r in sweep.runs] == ["complete"] * 4
    assert sorted(r.seed for r in sweep.runs) == [0, 0, 1, 1]
    recorded = json.loads((sweep.sweep_dir / "sweep.json").read_text())
    assert [r["dir"] for r in recorded["runs"]] == [r.dir for r in sweep.runs]
    for r in sweep.runs:
        assert len(_rows(sweep.sweep_dir / r.dir)) == 2


def test_report_groups_seeds_into_one_row_per_compressor(report, sweep):
    table = json.loads(report.json.read_text())
    assert [g["label"] for g in table["groups"]] == ["dense", "SuRP 1% ↑"]
    assert all(g["seeds"] == [0, 1] and g["status"] == "complete" for g in table["groups"])
    with report.csv.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows] == ["dense", "SuRP 1% ↑"]


def test_report_figures_match_the_run_files(report, sweep):
    groups = {g["label"]: g for g in json.loads(report.json.read_text())["groups"]}
    runs = {(r.overrides["uplink"]["name"], r.seed): _rows(sweep.sweep_dir / r.dir) for r in sweep.runs}
    for label, name in (("dense", "identity"), ("SuRP 1% ↑", "surp")):
        m = groups[label]["metrics"]
        totals = [sum(r["uplink_bytes"] for r in runs[(name, s)]) for s in (0, 1)]
        assert m["uplink_bytes"]["values"] == totals
        assert m["uplink_bytes"]["mean"] == pytest.approx(sum(totals) / 2)
        finals = [runs[(name, s)][-1]["test_accuracy"] for s in (0, 1)]
        assert m["final_accuracy"]["values"] == finals
        assert m["final_accuracy"]["std"] == pytest.approx(abs(finals[0] - finals[1]) / 2**0.5)
    identity_pcr = (_per_client_round(runs[("identity", 0)]) + _per_client_round(runs[("identity", 1)])) / 2
    ratios = groups["SuRP 1% ↑"]["metrics"]["compression_ratio"]["values"]
    assert ratios == [pytest.approx(identity_pcr / _per_client_round(runs[("surp", s)])) for s in (0, 1)]
    assert min(ratios) > 20  # 1% of the coordinates, each costing well under 5 floats
    # Totals both ways: each run's uplink plus downlink bytes, summed over its rows.
    for label, name in (("dense", "identity"), ("SuRP 1% ↑", "surp")):
        m = groups[label]["metrics"]
        downs = [sum(r["downlink_bytes"] for r in runs[(name, s)]) for s in (0, 1)]
        assert m["downlink_bytes"]["values"] == downs
        assert m["total_bytes"]["values"] == [u + d for u, d in zip(m["uplink_bytes"]["values"], downs, strict=True)]
    # The default target: the lower median of the groups' mean final accuracies, rounded down to 0.01.
    target = json.loads(report.json.read_text())["target_accuracy"]
    means = sorted(sum(runs[(name, s)][-1]["test_accuracy"] for s in (0, 1)) / 2 for name in ("identity", "surp"))
    assert target == pytest.approx(math.floor(round(means[0] * 100, 6)) / 100)
    for label, name in (("dense", "identity"), ("SuRP 1% ↑", "surp")):
        for s in (0, 1):
            up = down = 0
            expected = (None, None, None)
            for r in runs[(name, s)]:
                up, down = up + r["uplink_bytes"], down + r["downlink_bytes"]
                if r["test_accuracy"] >= target:
                    expected = (r["round"], up, up + down)
                    break
            got = groups[label]["metrics"]
            assert (
                got["rounds_to_target"]["values"][s],
                got["uplink_bytes_to_target"]["values"][s],
                got["total_bytes_to_target"]["values"][s],
            ) == expected
    # Useful for compressed methods: the compressed group (the lower of the two) reaches it on average.
    surp_best = [max(r["test_accuracy"] for r in runs[("surp", s)]) for s in (0, 1)]
    assert max(surp_best) >= target


def _markdown_table(markdown):
    """The Results table of report.md as {method: {column: cell}}."""
    lines = markdown.split("## Results", 1)[1].strip().splitlines()
    cols = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:] if line.startswith("|")]
    return {r[0]: dict(zip(cols, r, strict=True)) for r in rows}


def test_the_table_is_compact_and_shows_totals_both_ways(report, sweep):
    table = _markdown_table(report.markdown.read_text())
    runs = {(r.overrides["uplink"]["name"], r.seed): _rows(sweep.sweep_dir / r.dir) for r in sweep.runs}
    for label, name in (("dense", "identity"), ("SuRP 1% ↑", "surp")):
        totals = [sum(r["uplink_bytes"] + r["downlink_bytes"] for r in runs[(name, s)]) for s in (0, 1)]
        mean = sum(totals) / 2
        assert 1e6 <= mean < 1e9  # written in MB
        assert table[label]["total bytes ↑+↓"] == f"{mean / 1e6:.2f} MB"
    assert len(next(iter(table.values()))) <= 12  # was 16 columns, each cell wrapped on three lines
    assert not any("time" in column for column in next(iter(table.values())))  # no [network]: no simulated time
    assert list(table) == sorted(table, key=lambda k: -float(table[k]["final accuracy"].split(" ")[0]))


def _answers(markdown):
    section = markdown.split("## Answer", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("- ")]


T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}


def _leaders(per_group, higher_is_better, relative=0.0):
    """Recomputed tie rule for groups that ran the same seeds (values in seed order): the best mean, and every
    group whose per-seed differences from it lie within their paired 95% t-interval (or within ``relative``)."""
    means = {g: statistics.mean(v) for g, v in per_group.items()}
    order = sorted(means, key=lambda g: -means[g] if higher_is_better else means[g])
    first = order[0]
    tied = [first]
    for g in order[1:]:
        d = [a - b for a, b in zip(per_group[first], per_group[g], strict=True)]
        half = T975[len(d) - 1] * statistics.stdev(d) / len(d) ** 0.5
        if abs(statistics.mean(d)) <= half or abs(means[first] - means[g]) <= relative * min(means[first], means[g]):
            tied.append(g)
    return tied, ("wins" if len(tied) == 1 and len(order) > 1 else "only" if len(order) == 1 else "tie")


def test_the_headline_names_the_method_the_run_files_make_best(report, sweep):
    """Each budget and target, recomputed here from rounds.jsonl: the named method(s) and the verdict."""
    by_group = {"dense": [], "SuRP 1% ↑": []}
    for r in sweep.runs:
        label = "dense" if r.overrides["uplink"]["name"] == "identity" else "SuRP 1% ↑"
        by_group[label].append(_rows(sweep.sweep_dir / r.dir))

    def cumulative(rows):  # (accuracy, bytes both ways so far) per round; every round is evaluated here
        assert all(r["test_accuracy"] is not None for r in rows)
        out, spent = [], 0
        for r in rows:
            spent += r["uplink_bytes"] + r["downlink_bytes"]
            out.append((r["test_accuracy"], spent))
        return out

    headline = json.loads(report.json.read_text())["headline"]
    answers = _answers(report.markdown.read_text())
    budgets = sorted({max(cumulative(rows)[-1][1] for rows in runs) for runs in by_group.values()})
    assert [q["value"] for q in headline["budgets"]] == budgets
    for q, line, budget in zip(headline["budgets"], answers[: len(budgets)], budgets, strict=True):
        per_group = {
            g: [max(a for a, spent in cumulative(rows) if spent <= budget) for rows in runs]
            for g, runs in by_group.items()
            if all(cumulative(rows)[0][1] <= budget for rows in runs)
        }
        tied, verdict = _leaders(per_group, higher_is_better=True)
        assert (q["best"], q["verdict"]) == (tied, verdict), (budget, per_group)
        assert all(f"**{g}**" in line for g in tied) and line.startswith("- Within ")
    # Both methods compete at every budget here (identity fits one round of the compressed run's total).
    assert all(len(q["order"]) == 2 for q in headline["budgets"])

    target = json.loads(report.json.read_text())["target_accuracy"]
    # One answer per direction: both together, the uplink alone, the downlink alone.
    assert [(q["value"], q["direction"]) for q in headline["targets"]] == [
        (target, "total"), (target, "uplink"), (target, "downlink")]  # fmt: skip
    for k, (q, key) in enumerate(zip(headline["targets"], ("both", "uplink_bytes", "downlink_bytes"), strict=True)):
        reached = {}
        for g, runs in by_group.items():
            firsts = []
            for rows in runs:
                spent = 0
                for r in rows:
                    spent += r["uplink_bytes"] + r["downlink_bytes"] if key == "both" else r[key]
                    if r["test_accuracy"] >= target:
                        break
                else:
                    spent = None
                firsts.append(spent)
            if None not in firsts:
                reached[g] = firsts
        assert reached, "the default target is reached in every seed by some method"
        tied, verdict = _leaders(reached, higher_is_better=False, relative=0.05)
        assert (q["best"], q["verdict"]) == (tied, verdict), (key, reached)
        line = answers[len(budgets) + k]
        assert line.startswith("- To reach accuracy") and all(f"**{g}**" in line for g in tied)
        for g in set(by_group) - set(reached):
            assert g in line  # named with how many seeds got there


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.tables = {}, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images[a["id"]] = a["src"]
        self.tables += tag == "table"


def test_every_figure_is_written_and_embedded_in_html_that_parses(report, sweep):
    parser = _Images()
    parser.feed(report.html.read_text())
    parser.close()
    assert parser.tables == 1
    assert (
        set(parser.images)
        == set(report.figures)
        == {
            "frontier",
            "accuracy_vs_bytes",
            "accuracy_vs_rounds",
            "bytes_per_round",
        }
    )
    for name, path in report.figures.items():
        png = path.read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000
        prefix = "data:image/png;base64,"
        assert parser.images[name].startswith(prefix) and base64.b64decode(parser.images[name][len(prefix) :]) == png
        assert f"figures/{name}.png" in report.markdown.read_text()
    text = report.markdown.read_text()
    # No [network] model: no simulated time anywhere in the answer either.
    targets = json.loads(report.json.read_text())["headline"]["targets"]
    assert targets and all(q["direction"] != "time" for q in targets) and "simulated" not in text
    assert "mnist5k" in text and "lenet5_caffe" in text and "Flower version" in text
    # How the examples spread over the clients, from summary.json, beside the partition: an IID split of the
    # 4,000 training digits over 3 clients.
    summary = json.loads((sweep.sweep_dir / sweep.runs[0].dir / "summary.json").read_text())
    sizes = summary["client_sizes"]
    assert (sizes["clients"], sizes["samples"], sizes["min"], sizes["max"]) == (3, 4000, 1333, 1334)
    assert "iid (examples per client 1333–1334, median 1333, Gini 0.00)" in text


def test_a_sweep_started_again_skips_the_runs_already_complete(sweep, tmp_path):
    cfg = sweep_config(tmp_path)
    again = run_sweep(cfg, GRID, seeds=2, sweep_dir=sweep.sweep_dir, progress=False)
    assert [r.status for r in again.runs] == ["skipped"] * 4
    # Started again with another config on the same folder: nothing is taken for done, the old runs are kept.
    other = tmp_path / "other"
    shutil.copytree(sweep.sweep_dir, other, ignore=shutil.ignore_patterns(".lock"))
    changed = {**cfg, "client": {**cfg["client"], "lr": cfg["client"]["lr"] / 2}}
    redone = run_sweep(changed, {"uplink.name": ["identity"]}, seeds=1, sweep_dir=other, progress=False)
    assert [r.status for r in redone.runs] == ["complete"] and len(list((other / ".attempts").iterdir())) == 1


def test_two_grid_points_never_share_a_run_directory():
    from fedcomp.config import ConfigError
    from fedcomp.sweep import plan

    with pytest.raises(ConfigError, match="would share the run directory 'name=a_b__seed=0'"):
        plan({}, {"name": ["a b", "a_b"]}, 1)


def test_partial_runs_are_reported_as_partial(sweep, tmp_path):
    crashed = tmp_path / "crashed"
    shutil.copytree(sweep.sweep_dir / sweep.runs[1].dir, crashed)
    lines = (crashed / "rounds.jsonl").read_text().splitlines()
    (crashed / "rounds.jsonl").write_text(lines[0] + "\n" + lines[1][:20])  # round 2 torn mid-write
    summary = json.loads((crashed / "summary.json").read_text())
    (crashed / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    rep = make_report([crashed], tmp_path / "out")
    (group,) = json.loads(rep.json.read_text())["groups"]
    assert group["status"] == "partial only, not counted: seed 1 partial (1/2 rounds)" and not group["counted"]
    assert group["metrics"]["uplink_bytes"]["values"] == [_rows(crashed)[0]["uplink_bytes"]]
    # Beside the complete run of the same seed, the crashed one is not a second seed.
    rep = make_report([sweep.sweep_dir / sweep.runs[1].dir, crashed], tmp_path / "both")
    (group,) = json.loads(rep.json.read_text())["groups"]
    assert group["seeds"] == [1] and group["status"] == "complete (1 seeds); not counted: seed 1 partial (1/2 rounds)"


def test_bad_report_inputs_get_clear_errors(sweep, tmp_path, capsys):
    with pytest.raises(ReportError, match="not a fedcomp run directory"):
        make_report([tmp_path], tmp_path / "out")
    other = tmp_path / "other"
    shutil.copytree(sweep.sweep_dir / sweep.runs[0].dir, other)
    config = (other / "config.toml").read_text().replace('name = "lenet5_caffe"', 'name = "mlp"')
    (other / "config.toml").write_text(config)
    with pytest.raises(ReportError, match=r"different experiments: model\.name"):
        make_report([sweep.sweep_dir / sweep.runs[0].dir, other], tmp_path / "out")
    assert cli_main(["report", str(tmp_path / "missing"), "-o", str(tmp_path / "out")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_sweep_directories_have_one_name_whichever_way_the_grid_is_written():
    base = small_config(Path("/nonexistent"))
    from_cli = plan(base, parse_grid(['uplink={name="surp",density=0.01}']), seeds=2)
    from_python = plan(base, {"uplink.name": ["surp"], "uplink.density": [0.01]}, seeds=2)
    names = ["uplink.name=surp__uplink.density=0.01__seed=0", "uplink.name=surp__uplink.density=0.01__seed=1"]
    assert [r.dir for r, _ in from_cli] == [r.dir for r, _ in from_python] == names


def test_grid_keys_that_do_not_exist_stop_the_sweep_before_it_runs(tmp_path, capsys):
    cfg = small_config(tmp_path)
    with pytest.raises(ConfigError, match=r"federation\.roundz"):
        run_sweep(cfg, parse_grid(["federation.roundz=1,2"]), sweep_dir=tmp_path / "s", progress=False)
    with pytest.raises(ConfigError, match=r"uplink\.densty"):
        run_sweep(cfg, parse_grid(['uplink={name="surp",densty=0.1}']), sweep_dir=tmp_path / "s", progress=False)
    assert not (tmp_path / "s" / "sweep.json").exists()
    cfg_file = tmp_path / "base.toml"
    cfg_file.write_text("[federation]\nrounds = 1\n")
    code = cli_main(["sweep", str(cfg_file), "--grid", "model.nam=mlp", "--sweep-dir", str(tmp_path / "c")])
    assert code == 2 and "model.nam" in capsys.readouterr().err
    assert not (tmp_path / "c" / "sweep.json").exists()
    assert parse_grid(['uplink={name="surp",density=0.01},{name="identity"}', "client.lr=0.1,0.01"]) == {
        "uplink": [{"name": "surp", "density": 0.01}, {"name": "identity"}],
        "client.lr": [0.1, 0.01],
    }


def test_a_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    # Both runs lack their files: the second is still tried after the first failed, and each failure is its
    # own; both are found before any engine starts, so the test needs none.
    cfg = small_config(tmp_path, federation={"rounds": 1}, data={"data_dir": str(tmp_path / "no-data")})
    res = run_sweep(cfg, {"data.dataset": ["mnist", "fashion_mnist"]}, sweep_dir=tmp_path / "s", progress=False)
    assert [r.status for r in res.runs] == ["failed", "failed"]
    # Found before the engine starts, as a config error naming the key and the dataset.
    assert all("data.data_dir" in r.error for r in res.runs)
    assert "MNIST" in res.runs[0].error and "FashionMNIST" in res.runs[1].error, [r.error for r in res.runs]
    recorded = json.loads((tmp_path / "s" / "sweep.json").read_text())["runs"]
    assert [r["status"] for r in recorded] == ["failed", "failed"]
    assert [r["error"] for r in recorded] == [r.error for r in res.runs]


def test_group_labels_read_as_methods_with_their_rates_per_direction():
    from fedcomp.reports.runs import _label

    both = {"uplink.name": "surp", "uplink.density": 0.01, "downlink.name": "surp", "downlink.density": 0.05}
    assert _label(both, ["downlink.density"]) == "SuRP 1% ↑ · SuRP 5% Δ↓"
    assert _label({"uplink.name": "identity"}, ["uplink.name"]) == "dense"  # nothing compressed
    assert _label({"uplink.name": "identity", "downlink.name": "topk"}, []) == "dense ↑ · top-k Δ↓"
    assert _label({"uplink.name": "surp", "uplink.density": 1.0, "uplink.max_bytes": 4000}, []) == "SuRP ≤4 kB ↑"
    assert _label({"uplink.name": "mine.py:Codec"}, []) == "mine.py:Codec ↑"  # your own: as it is named
    groups = "[{'layers': ['features.*'], 'forms': [{'form': 'quantize', 'k': 4}]}]"
    flat = {"uplink.name": "surp", "server_compression.name": "lc", "server_compression.groups": groups}
    label = _label(flat, ["server_compression.groups", "server_compression.name"])
    assert label.startswith("SuRP ↑ · LC groups=") and "…" in label and len(label) < 70
    lr = {"uplink.name": "topk", "uplink.density": 0.01, "client.lr": 0.1}
    assert _label(lr, ["client.lr"]) == "top-k 1% ↑ · client.lr=0.1"  # other varying keys after the methods


# ----------------------------------------------------------------------------- damaged run directories


def _report_cli(paths, out, capsys):
    code = cli_main(["report", *map(str, paths), "-o", str(out)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.err


def _copy_run(sweep, index, dest):
    shutil.copytree(sweep.sweep_dir / sweep.runs[index].dir, dest)
    return dest


def test_a_report_on_damaged_run_files_names_them_and_uses_every_intact_row(sweep, tmp_path, capsys):
    # A binary rounds.jsonl: no rows, every line named (the first few one by one).
    binary = _copy_run(sweep, 0, tmp_path / "binary")
    (binary / "rounds.jsonl").write_bytes(b"\x00\xff\xfe garbage \x80\n\x9c\x9d\n")
    code, err = _report_cli([binary], tmp_path / "out1", capsys)
    assert code == 0
    assert f"{binary / 'rounds.jsonl'} line 1: not UTF-8 text" in err and "line 2" in err
    (group,) = json.loads((tmp_path / "out1" / "table.json").read_text())["groups"]
    assert group["status"] == "partial only, not counted: seed 0 partial (0/2 rounds)" and group["warnings"]

    # Round 1's row lacks a key in one copy; round 2's has a None count in the other: the other row is used.
    rows = _rows(sweep.sweep_dir / sweep.runs[0].dir)
    missing = _copy_run(sweep, 0, tmp_path / "missing")
    first = {k: v for k, v in rows[0].items() if k != "clients"}
    (missing / "rounds.jsonl").write_text(json.dumps(first) + "\n" + json.dumps(rows[1]) + "\n")
    none = _copy_run(sweep, 0, tmp_path / "none")
    (none / "rounds.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[1], "wall_s": None}) + "\n")
    (none / "summary.json").write_text("null")
    code, err = _report_cli([missing, none], tmp_path / "out2", capsys)
    assert code == 0
    assert f"{missing / 'rounds.jsonl'} line 1: no 'clients' list" in err
    assert f"{none / 'rounds.jsonl'} line 2: 'wall_s' is None, not a number" in err
    assert f"{none / 'summary.json'}: null, not a JSON object" in err
    (group,) = json.loads((tmp_path / "out2" / "table.json").read_text())["groups"]
    assert group["metrics"]["uplink_bytes"]["values"] == [rows[1]["uplink_bytes"], rows[0]["uplink_bytes"]]
    assert len(group["warnings"]) == 5  # two damaged lines, two "n intact rows read" lines, the summary
    markdown = (tmp_path / "out2" / "report.md").read_text()
    assert "## Warnings" in markdown and "⚠ damaged files (see Warnings, 5)" in markdown
    assert html.escape("line 1: no 'clients' list") in (tmp_path / "out2" / "report.html").read_text()


def test_a_report_shows_rounds_that_aggregated_nothing(sweep, tmp_path):
    run = _copy_run(sweep, 0, tmp_path / "run")
    rows = _rows(run)
    empty = {**rows[1], "clients": [], "uplink_bytes": 0, "failed_clients": rows[1]["sampled_clients"]}
    (run / "rounds.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps(empty) + "\n")
    rep = make_report([run], tmp_path / "out")
    (group,) = json.loads(rep.json.read_text())["groups"]
    assert group["metrics"]["rounds_without_update"]["values"] == [1.0]
    assert group["metrics"]["failed_replies"]["values"] == [float(rows[0]["failed_clients"] + empty["failed_clients"])]
    n = rows[0]["failed_clients"] + empty["failed_clients"]
    (row,) = _markdown_table(rep.markdown.read_text()).values()
    assert row["failures"] == f"{n} {'reply' if n == 1 else 'replies'}, 1 round w/o update" and not rep.warnings


def test_a_report_on_a_damaged_sweep_record_or_member_does_not_crash(sweep, tmp_path, capsys):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep.sweep_dir, copy, ignore=shutil.ignore_patterns("report"))
    (copy / "sweep.json").write_text("null")
    code, err = _report_cli([copy], tmp_path / "out1", capsys)
    assert code == 0 and f"{copy / 'sweep.json'}: not a sweep record; reporting the 4 run directories" in err
    assert len(json.loads((tmp_path / "out1" / "table.json").read_text())["groups"]) == 2

    # A member whose config.toml is binary is left out, named; the others are reported.
    (copy / sweep.runs[3].dir / "config.toml").write_bytes(b"\xff\xfe\x00")
    code, err = _report_cli([copy], tmp_path / "out2", capsys)
    assert code == 0 and f"{copy / sweep.runs[3].dir / 'config.toml'}: unreadable" in err and "left out" in err

    # Nothing reportable: a clear error, exit status 2.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "sweep.json").write_bytes(b"\x00\x01 not json")
    code, err = _report_cli([bare], tmp_path / "out3", capsys)
    assert code == 2 and f"{bare / 'sweep.json'}: unreadable" in err and "holds no run directory" in err


def test_a_corrupt_model_file_is_named_and_the_ratio_left_out(sweep, tmp_path, capsys):
    surp = next(i for i, r in enumerate(sweep.runs) if r.overrides["uplink"]["name"] == "surp")
    run = _copy_run(sweep, surp, tmp_path / "surp")
    (run / "model.pt").write_bytes(b"PK\x03\x04 not a zip")
    code, err = _report_cli([run], tmp_path / "out", capsys)
    assert code == 0 and f"{run / 'model.pt'}: unreadable" in err
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    assert table["identity_bytes_per_client_round"] is None
    assert "no readable model.pt" in table["identity_source"]


# ----------------------------------------------------------------------------- the command line, as users call it


def test_report_target_counts_rounds_and_bytes_from_the_rows(sweep, tmp_path, capsys):
    """--target: the first evaluated round at or above it, recomputed here from rounds.jsonl."""
    run_dir = sweep.sweep_dir / sweep.runs[0].dir
    rows = _rows(run_dir)
    target = rows[0]["test_accuracy"]  # reached in round 1 by construction
    unreachable = max(r["test_accuracy"] for r in rows) + 0.01
    first_round = rows[0]["uplink_bytes"] + rows[0]["downlink_bytes"]  # a budget that only round 1 fits
    args = ["--target", str(target), "--target", str(unreachable), "--budget", f"{first_round}"]
    assert cli_main(["report", str(run_dir), "-o", str(tmp_path / "out"), *args]) == 0
    printed = capsys.readouterr().out
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    (group,) = table["groups"]
    assert group["metrics"]["rounds_to_target"]["values"] == [1.0]
    assert group["metrics"]["uplink_bytes_to_target"]["values"] == [float(rows[0]["uplink_bytes"])]
    assert group["metrics"]["total_bytes_to_target"]["values"] == [float(first_round)]
    (budget,) = table["headline"]["budgets"]
    assert budget["value"] == first_round and budget["order"][0]["values"] == [rows[0]["test_accuracy"]]
    reachable, _, _, beyond, _, _ = table["headline"]["targets"]  # total, uplink, downlink for each target
    assert (reachable["value"], reachable["best"], reachable["rounds"][group["label"]]["values"]) == (
        target,
        [group["label"]],
        [1.0],
    )
    assert beyond["verdict"] == "none" and beyond["incomplete"][0]["seeds_with_value"] == 0
    assert all(line in printed for line in table["headline"]["lines"])  # the answer on the command line too
    with pytest.raises(SystemExit):
        cli_main(["report", str(run_dir), "-o", str(tmp_path / "out3"), "--budget", "10 XB"])
    assert "not a byte count: '10 XB'" in capsys.readouterr().err
    assert cli_main(["report", str(run_dir), "-o", str(tmp_path / "out2"), "--target", str(unreachable)]) == 0
    (group,) = json.loads((tmp_path / "out2" / "table.json").read_text())["groups"]
    assert group["metrics"]["rounds_to_target"]["values"] == [None]


def test_report_allow_mixed_reports_different_experiments_side_by_side(sweep, tmp_path, capsys):
    other = _copy_run(sweep, 0, tmp_path / "other")
    config = (other / "config.toml").read_text().replace('name = "lenet5_caffe"', 'name = "mlp"')
    (other / "config.toml").write_text(config)
    paths = [str(sweep.sweep_dir / sweep.runs[0].dir), str(other)]
    assert cli_main(["report", *paths, "-o", str(tmp_path / "refused")]) == 2
    assert "different experiments" in capsys.readouterr().err
    assert cli_main(["report", *paths, "-o", str(tmp_path / "mixed"), "--allow-mixed"]) == 0
    groups = json.loads((tmp_path / "mixed" / "table.json").read_text())["groups"]
    assert len(groups) == 2


def test_a_sweep_whose_runs_fail_exits_1_and_records_why(tmp_path, capsys):
    cfg_file = tmp_path / "base.toml"
    cfg_file.write_text(
        f'output_dir = "{tmp_path}"\n[federation]\nrounds = 1\n[data]\ndata_dir = "{tmp_path / "none"}"\n'
    )
    code = cli_main(["sweep", str(cfg_file), "--grid", "data.dataset=mnist", "--sweep-dir", str(tmp_path / "s")])
    assert code == 1
    (run,) = json.loads((tmp_path / "s" / "sweep.json").read_text())["runs"]
    assert run["status"] == "failed" and "data.data_dir" in run["error"]


def test_a_sweep_started_again_moves_an_unfinished_run_aside_and_redoes_it(sweep, tmp_path, capfd):
    again_dir = tmp_path / "again"
    shutil.copytree(sweep.sweep_dir, again_dir, ignore=shutil.ignore_patterns(".lock"))
    crashed = again_dir / sweep.runs[3].dir
    lines = (crashed / "rounds.jsonl").read_text().splitlines()
    (crashed / "rounds.jsonl").write_text(lines[0] + "\n")
    summary = json.loads((crashed / "summary.json").read_text())
    (crashed / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    (crashed / "model.pt").unlink()
    res = run_sweep(sweep_config(tmp_path), GRID, seeds=2, sweep_dir=again_dir, progress=True)
    assert [r.status for r in res.runs] == ["skipped"] * 3 + ["complete"]
    # The progress bar names the grid point and seed it is running, not the experiment.
    err = capfd.readouterr().err
    assert "[4/4] uplink.name=surp__uplink.density=0.01__seed=1: 100%" in err, err[-1500:]
    (attempt,) = (again_dir / ".attempts").iterdir()
    assert _rows(attempt) == _rows(sweep.sweep_dir / sweep.runs[3].dir)[:1]  # kept as it was, not deleted
    redone = _rows(crashed)
    assert [r["round"] for r in redone] == [1, 2]
    # The redone run is the same experiment with the same seed: it records the same rounds.
    assert [r["uplink_bytes"] for r in redone] == [
        r["uplink_bytes"] for r in _rows(sweep.sweep_dir / sweep.runs[3].dir)
    ]


# ----------------------------------------------------------------------------- ties, ticks, the browser


def test_ties_wins_and_leads_follow_the_seed_spread():
    from fedcomp.reports.compare import Entry, rank

    clear = rank([Entry("a", (0.80, 0.82)), Entry("b", (0.70, 0.72))], higher_is_better=True)
    assert (clear.tied, clear.verdict) == (("a",), "wins")  # 0.10 apart, sd 0.014
    close = rank([Entry("a", (0.80, 0.90)), Entry("b", (0.78, 0.80))], higher_is_better=True)
    assert (close.tied, close.verdict) == (("a", "b"), "tie")  # 0.06 apart, a's sd 0.071
    # One seed against a spread: judged by that spread. One seed each: no spread, so only "leads".
    assert rank([Entry("a", (0.9,)), Entry("b", (0.5, 0.52))], higher_is_better=True).verdict == "wins"
    assert rank([Entry("a", (0.9,)), Entry("b", (0.89, 0.60))], higher_is_better=True).verdict == "tie"
    assert rank([Entry("a", (0.8,)), Entry("b", (0.7,))], higher_is_better=True).verdict == "leads"
    # Fewest bytes: 3% apart with no spread at all is still a tie; 30% apart is a win.
    assert rank([Entry("a", (100.0, 100.0)), Entry("b", (103.0, 103.0))], False, relative=0.05).verdict == "tie"
    assert rank([Entry("a", (100.0, 100.0)), Entry("b", (130.0, 130.0))], False, relative=0.05).tied == ("a",)


def test_paired_seeds_are_judged_seed_by_seed_and_a_lower_mean_never_wins_on_spread_alone():
    from fedcomp.reports.compare import Entry, pareto_front, rank

    # Better on every one of five seeds by about a point, across seeds that differ by tens of points:
    # unpaired, the spread hides it; paired (the same seeds), it is a win.
    a = (0.50, 0.70, 0.90, 0.60, 0.80)
    b = tuple(v - 0.01 - 0.001 * k for k, v in enumerate(a))
    assert rank([Entry("a", a), Entry("b", b)], True).verdict == "tie"
    seeds = (0, 1, 2, 3, 4)
    assert rank([Entry("a", a, seeds), Entry("b", b, seeds)], True).verdict == "wins"
    # Worse on some seeds, better on others: a tie, paired or not.
    mixed = (0.52, 0.68, 0.91, 0.59, 0.79)
    assert rank([Entry("a", a, seeds), Entry("m", mixed, seeds)], True).verdict == "tie"
    # Half the bytes at 3 points lower accuracy on every seed, across seeds that vary by 30 points. Unpaired, the
    # spread calls the accuracies level and the cheaper one takes the higher one's star; paired, it is a
    # trade-off and each keeps its star.
    accs = (0.60, 0.90, 0.62, 0.92, 0.70)
    cheap = tuple(v - d for v, d in zip(accs, (0.030, 0.031, 0.029, 0.032, 0.030), strict=True))
    full = (Entry("full", (1e6,) * 5, seeds), Entry("full", accs, seeds))
    half = (Entry("half", (5e5,) * 5, seeds), Entry("half", cheap, seeds))
    assert pareto_front([full, half]) == [0, 1]
    assert pareto_front([tuple(Entry(e.label, e.values) for e in p) for p in (full, half)]) == [1]


def test_partial_runs_enter_neither_the_headline_nor_the_frontier_nor_the_seed_count():
    from fedcomp.reports.headline import make_headline
    from fedcomp.reports.table import build_table

    done = _group("done", [100, 110], [0.8, 0.81])
    half = _group("half", [50], [0.9], complete=False)  # crashed early with a lucky accuracy
    headline = make_headline([done, half], [0.5])
    assert all(e["label"] != "half" for q in headline.as_dict()["targets"] for e in q["order"])
    assert headline.left_out == ["half"] and "Not counted (no complete run): half." in headline.lines()
    rows = {r.label: r for r in build_table([done, half], 0.5).rows}
    assert rows["done"].counted and not rows["half"].counted
    assert rows["done"].seeds == [0, 1] and rows["half"].status.startswith("partial only")
    # A second, interrupted run of seed 0 beside the complete one: still two seeds.
    again = _group("done", [100, 110], [0.8, 0.81])
    again.runs.append(_group("done", [30], [0.2], complete=False).runs[0])
    assert [r.seed for r in again.counted] == [0, 1] and len(again.left_out) == 1


def test_the_bottom_line_names_the_cheapest_method_within_a_point_of_dense():
    from fedcomp.reports.headline import bottom_line
    from fedcomp.reports.runs import RunGroup, RunRecord

    def group(label, name, up, down, acc):
        row = {"round": 1, "uplink_bytes": up, "downlink_bytes": down, "test_accuracy": acc}
        runs = [RunRecord(Path(label), {"uplink": {"name": name}, "seed": s}, {"status": "complete"}, [row])
                for s in (0, 1)]  # fmt: skip
        return RunGroup(label, runs)

    dense = group("dense", "identity", 1000, 1000, 0.90)
    close = group("SuRP 1% ↑", "surp", 10, 1000, 0.895)
    closer_cheaper = group("SuRP 0.1% ↑", "surp", 1, 1000, 0.891)
    far = group("top-k 0.01% ↑", "topk", 1, 10, 0.80)  # cheapest, but 10 points below dense
    line = bottom_line([dense, close, closer_cheaper, far])
    assert line.startswith("SuRP 0.1% ↑ reaches within 1 point of dense accuracy (0.891 against 0.900)")
    assert "2.0× fewer bytes in both directions (1,000.0× uplink, 1.0× downlink)" in line
    assert bottom_line([dense, far]) == "No compressed method comes within 1 point of dense accuracy (0.900)."
    other_dense = group("dense · client.lr=0.1", "identity", 1000, 1000, 0.95)
    assert bottom_line([dense, other_dense, close]).startswith("Several dense groups")
    assert bottom_line([close]).startswith("No dense run")


def test_pareto_stars_need_a_difference_beyond_noise():
    from fedcomp.reports.compare import Entry, pareto_front

    def point(label, nbytes, accs):
        return Entry(label, (nbytes, nbytes)), Entry(label, accs)

    good = point("good", 1_000_000, (0.90, 0.91))
    random_k = point("random-k", 997_000, (0.12, 0.13))  # 0.3% fewer bytes, far lower accuracy: no star
    cheap = point("cheap", 400_000, (0.70, 0.72))  # 60% fewer bytes: a real trade-off, a star
    noisy = point("noisy", 1_000_000, (0.80, 0.99))  # as many bytes, within good's noise: both keep their star
    assert pareto_front([good, random_k, cheap, noisy]) == [0, 2, 3]


def _group(label, totals, accs, complete=True):
    from fedcomp.reports.runs import RunGroup, RunRecord

    runs = []
    for seed, (total, acc) in enumerate(zip(totals, accs, strict=True)):
        row = {"round": 1, "uplink_bytes": total // 2, "downlink_bytes": total - total // 2, "test_accuracy": acc,
               "clients": [0], "sampled_clients": 1, "failed_clients": 0}  # fmt: skip
        summary = {"status": "complete" if complete else "failed"}
        runs.append(RunRecord(Path(label), {"uplink": {"name": label}, "seed": seed}, summary, [row]))
    return RunGroup(label, runs)


def test_default_budgets_are_each_methods_largest_total_and_near_ones_merge():
    from fedcomp.reports.headline import default_budgets

    groups = [_group("a", [200, 210], [0.5, 0.6]), _group("b", [1000, 1000], [0.7, 0.7]), _group("c", [208], [0.1])]
    assert default_budgets(groups) == [210.0, 1000.0]  # c's 208 is within 5% of a's 210: the same question


def test_byte_labels_are_human_units_with_the_decimals_neighbours_need():
    from fedcomp.reports.units import parse_bytes, tick_labels

    assert tick_labels([1e4, 1e5, 1e6, 1e7]) == ["10 kB", "100 kB", "1 MB", "10 MB"]
    assert tick_labels([9e5, 9.5e5, 1e6, 1.05e6]) == ["900 kB", "950 kB", "1.00 MB", "1.05 MB"]
    assert tick_labels([130_100, 130_120, 130_140]) == ["130.10 kB", "130.12 kB", "130.14 kB"]
    assert tick_labels([5_000_000, 5_000_001]) == ["5.000000 MB", "5.000001 MB"]
    assert (parse_bytes("10MB"), parse_bytes("2.5 kB"), parse_bytes("1e6")) == (1e7, 2500.0, 1e6)
    with pytest.raises(ValueError, match="not a byte count"):
        parse_bytes("10 mb")


BYTE_LABEL = re.compile(r"^\d+(\.\d+)? (B|kB|MB|GB)$")


def _tick_boxes(fig, axis):
    """The drawn tick labels of an axis with their text extents (display pixels)."""
    fig.canvas.draw()
    labels = [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
    return [t.get_text() for t in labels], [t.get_window_extent() for t in labels]


def _assert_readable(texts, boxes, which="x"):
    assert len(texts) >= 2, texts
    assert all(BYTE_LABEL.match(t) for t in texts), texts
    assert len(set(texts)) == len(texts), texts
    for a, b in zip(boxes, boxes[1:], strict=False):
        if which == "x":
            assert a.x1 < b.x0, (texts, a, b)  # left to right, none over its neighbour
        else:
            assert a.y1 < b.y0, (texts, a, b)


@pytest.mark.parametrize("lo, hi", [(130_100, 130_150), (10_380_000, 20_690_000), (900, 1_100), (1, 1e12)])
def test_byte_axes_have_a_few_non_overlapping_human_labels_for_any_range(lo, hi):
    import matplotlib.pyplot as plt

    from fedcomp.reports.axes import byte_axis

    fig, (ax, ay) = plt.subplots(1, 2, figsize=(11, 4.8), layout="constrained")  # the report's panel size
    ax.plot([lo, hi], [0, 1], "o")
    ax.set_xscale("log")
    byte_axis(ax)
    ay.plot([0, 1], [lo, hi], "o")
    ay.set_yscale("log")
    byte_axis(ay, "y")
    for axis, which in ((ax.xaxis, "x"), (ay.yaxis, "y")):
        texts, boxes = _tick_boxes(fig, axis)
        _assert_readable(texts, boxes, which)
        assert len(texts) <= 7
    plt.close(fig)


def test_the_frontier_of_the_sweep_reads_in_human_units(report, sweep):
    """The issue's case: total bytes span less than a factor of ten (a dense downlink for both methods)."""
    import matplotlib.pyplot as plt

    from fedcomp.reports import figures

    totals = [sum(r["uplink_bytes"] + r["downlink_bytes"] for r in _rows(sweep.sweep_dir / r.dir)) for r in sweep.runs]
    assert max(totals) / min(totals) < 10
    fig = figures.frontier(report.table)
    total_ax, uplink_ax = fig.axes[:2]
    for ax in (total_ax, uplink_ax):
        texts, boxes = _tick_boxes(fig, ax.xaxis)
        _assert_readable(texts, boxes)
        assert not [t for t in ax.xaxis.get_minorticklabels() if t.get_text()]  # no 1.3015×10⁵ in between
        assert ax.get_legend() is not None
    assert total_ax.get_xlim()[0] <= min(totals) and max(totals) <= total_ax.get_xlim()[1]
    plt.close(fig)


BROWSERS = ("chromium", "chromium-browser", "google-chrome")

# Appended to a copy of report.html: measures the page as laid out and writes it into the DOM.
PROBE = """
window.addEventListener("load", () => {
  const box = el => { const r = el.getBoundingClientRect();
    return {top: r.top + scrollY, bottom: r.bottom + scrollY, left: r.left, right: r.right}; };
  const lines = td => { const r = document.createRange(); r.selectNodeContents(td); return r.getClientRects().length; };
  const table = document.querySelector("#results");
  const column = i => [...table.tBodies[0].rows].map(tr => tr.cells[i].dataset.v);
  const heads = [...table.tHead.rows[0].cells];
  const out = {
    viewport: document.documentElement.clientWidth,
    images: [...document.images].map(img => ({id: img.id, natural: [img.naturalWidth, img.naturalHeight], box: box(img)})),
    table: box(table), headline: box(document.querySelector("#headline")),
    heads: heads.map(th => th.textContent),
    cells: [...table.tBodies[0].rows].map(tr => [...tr.cells].map(td => td.textContent)),
    lines: [...table.querySelectorAll("td, th")].filter(c => c.textContent.trim()).map(lines),
    sorted: {},
  };
  // Click each of these headers twice: the column's sort values, ascending then descending.
  for (const name of ["total bytes", "sim. time to"]) {
    const th = heads.find(c => c.textContent.startsWith(name));
    if (!th) continue;
    th.click(); const up = column(th.cellIndex);
    th.click(); out.sorted[name] = [up, column(th.cellIndex)];
  }
  const pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
"""


def lay_out_in_chromium(report, tmp_path):
    """The report's page as headless Chromium lays it out (:data:`PROBE`'s measurements); skips without one."""
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        pytest.skip("no chromium, chromium-browser or google-chrome on PATH (Debian: apt-get install chromium)")
    page = tmp_path / "report.html"
    page.write_text(report.html.read_text().replace("</body>", f"<script>{PROBE}</script></body>"))
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    cmd += ["--window-size=1280,1000", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return json.loads(html.unescape(found.group(1)))


def assert_laid_out(report, seen):
    """Every figure decoded and within the window, one below the other; the answer first; the table within the
    window's width, every cell on one line, and sorted by total bytes when its header is clicked."""
    assert [i["id"] for i in seen["images"]] == list(report.figures)
    for img in seen["images"]:
        assert img["natural"][0] > 400 and img["natural"][1] > 200, img
        assert 0 <= img["box"]["left"] and img["box"]["right"] <= seen["viewport"], img
    for a, b in zip(seen["images"], seen["images"][1:], strict=False):
        assert a["box"]["bottom"] <= b["box"]["top"]
    assert seen["headline"]["bottom"] <= seen["table"]["top"] < seen["images"][0]["box"]["top"]
    assert seen["table"]["right"] <= seen["viewport"] and set(seen["lines"]) == {1}
    groups = json.loads(report.json.read_text())["groups"]
    totals = sorted(g["metrics"]["total_bytes"]["mean"] for g in groups)
    ascending, descending = seen["sorted"]["total bytes"]
    assert [float(v) for v in ascending] == totals  # clicking a header sorts by it
    assert [float(v) for v in descending] == totals[::-1]


def test_report_html_lays_out_in_headless_chromium(report, tmp_path):
    seen = lay_out_in_chromium(report, tmp_path)
    assert_laid_out(report, seen)
    # No [network] model: no simulated-time column and no accuracy-against-time figure.
    assert not any("time" in h for h in seen["heads"]) and "sim. time to" not in seen["sorted"]
    assert "accuracy_vs_time" not in [i["id"] for i in seen["images"]]


def test_the_table_has_the_downlink_ratio_and_for_model_compression_the_shipped_bytes_and_dense_accuracy():
    from fedcomp.reports.cells import table_cells
    from fedcomp.reports.runs import RunGroup, RunRecord
    from fedcomp.reports.table import build_table

    def run(name, server, rows, summary, uplink="surp"):
        config = {"uplink": {"name": uplink}, "server_compression": {"name": server}, "federation": {"rounds": 2}}
        return RunGroup(name, [RunRecord(Path(name), config, {"status": "complete", **summary}, rows)])

    def row(r, acc, sent, up=100, **server_metrics):
        return {"round": r, "sampled_clients": len(sent), "clients": [0, 1], "failed_clients": 0,
                "uplink_bytes": 2 * up, "uplink_bytes_per_client": [up, up],
                "downlink_bytes": sum(sent) + 50,  # + a dense evaluation
                "downlink_bytes_sent_per_client": sent, "test_accuracy": acc, "server_metrics": server_metrics}  # fmt: skip

    # The identity run measures the uncompressed payload: 1,000 B per client per round.
    dense = run("dense", "identity", [row(1, 0.5, [1000, 1000], 1000), row(2, 0.7, [1000, 1000], 1000)], {}, "identity")

    change = run("change", "identity", [row(1, 0.5, [10, 30]), row(2, 0.6, [20, 20])], {})
    udfc = run("udfc", "udfc", [row(1, 0.7, [1000, 1000]), row(2, 0.65, [1000, 1000], global_test_accuracy=0.8)],
               {"final_model_bytes": 321})  # fmt: skip
    table = build_table([dense, change, udfc])
    assert table.identity_bytes == 1000.0
    by_label = {r.label: r.metrics for r in table.rows}
    assert by_label["change"]["downlink_ratio"].mean == 1000 / 20  # train payloads (80 B over 4) only
    assert by_label["udfc"]["downlink_ratio"].mean == 1.0
    assert by_label["udfc"]["final_model_bytes"].mean == 321 and by_label["change"]["final_model_bytes"].mean is None
    assert by_label["udfc"]["dense_accuracy"].mean == 0.8 and by_label["udfc"]["final_accuracy"].mean == 0.65
    assert by_label["change"]["dense_accuracy"].mean == 0.6  # the evaluated model was the dense one
    # Best accuracy is of the shipped model: round 1 evaluated the uncompressed global model (0.7), never sent.
    assert by_label["udfc"]["best_accuracy"].mean == 0.65 and by_label["change"]["best_accuracy"].mean == 0.6
    from fedcomp.reports.curves import accuracy_within, first_reach

    (udfc_run,) = udfc.runs
    assert accuracy_within(udfc_run, 10**9) == 0.65 and first_reach(udfc_run, 0.7) is None
    assert first_reach(udfc_run, 0.6).round == 2
    cols, body = table_cells(table)
    assert {"↓ ratio", "final model", "dense accuracy"} <= set(cols)
    cells = {row[0].text: dict(zip(cols, (c.text for c in row), strict=True)) for row in body}
    assert cells["change"]["↓ ratio"] == "50.0×" and cells["udfc"]["final model"] == "321 B"
    assert cells["udfc"]["dense accuracy"] == "0.800" and cells["change"]["final model"] == "—"
    plain_cols, _ = table_cells(build_table([dense, change]))
    assert "↓ ratio" in plain_cols and "final model" not in plain_cols  # no model compression: no model columns
