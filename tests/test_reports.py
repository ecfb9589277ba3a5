"""Sweeps and reports on real small runs: a real 2 compressors × 2 seeds sweep, then its report."""

from __future__ import annotations

import base64
import csv
import html
import json
import re
import shutil
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
    assert [g["label"] for g in table["groups"]] == ["identity", "surp density=0.01"]
    assert all(g["seeds"] == [0, 1] and g["status"] == "complete" for g in table["groups"])
    with report.csv.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows] == ["identity", "surp density=0.01"]


def test_report_figures_match_the_run_files(report, sweep):
    groups = {g["label"]: g for g in json.loads(report.json.read_text())["groups"]}
    runs = {(r.overrides["uplink"]["name"], r.seed): _rows(sweep.sweep_dir / r.dir) for r in sweep.runs}
    for label, name in (("identity", "identity"), ("surp density=0.01", "surp")):
        m = groups[label]["metrics"]
        totals = [sum(r["uplink_bytes"] for r in runs[(name, s)]) for s in (0, 1)]
        assert m["uplink_bytes"]["values"] == totals
        assert m["uplink_bytes"]["mean"] == pytest.approx(sum(totals) / 2)
        finals = [runs[(name, s)][-1]["test_accuracy"] for s in (0, 1)]
        assert m["final_accuracy"]["values"] == finals
        assert m["final_accuracy"]["std"] == pytest.approx(abs(finals[0] - finals[1]) / 2**0.5)
    identity_pcr = (_per_client_round(runs[("identity", 0)]) + _per_client_round(runs[("identity", 1)])) / 2
    ratios = groups["surp density=0.01"]["metrics"]["compression_ratio"]["values"]
    assert ratios == [pytest.approx(identity_pcr / _per_client_round(runs[("surp", s)])) for s in (0, 1)]
    assert min(ratios) > 20  # 1% of the coordinates, each costing well under 5 floats
    # Bytes to target: the default target is 99% of identity's final accuracy (mean over seeds).
    target = json.loads(report.json.read_text())["target_accuracy"]
    id_finals = [runs[("identity", s)][-1]["test_accuracy"] for s in (0, 1)]
    assert target == pytest.approx(0.99 * sum(id_finals) / 2)
    for s in (0, 1):
        cum, expected = 0, None
        for r in runs[("identity", s)]:
            cum += r["uplink_bytes"]
            if r["test_accuracy"] >= target:
                expected = (r["round"], cum)
                break
        got = groups["identity"]["metrics"]
        assert (got["rounds_to_target"]["values"][s], got["uplink_bytes_to_target"]["values"][s]) == (
            (expected[0], expected[1]) if expected else (None, None)
        )


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.tables = {}, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images[a["id"]] = a["src"]
        self.tables += tag == "table"


def test_every_figure_is_written_and_embedded_in_html_that_parses(report):
    parser = _Images()
    parser.feed(report.html.read_text())
    parser.close()
    assert parser.tables == 1
    assert (
        set(parser.images)
        == set(report.figures)
        == {
            "accuracy_vs_uplink",
            "accuracy_vs_rounds",
            "bytes_per_round",
            "frontier",
        }
    )
    for name, path in report.figures.items():
        png = path.read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000
        prefix = "data:image/png;base64,"
        assert parser.images[name].startswith(prefix) and base64.b64decode(parser.images[name][len(prefix) :]) == png
        assert f"figures/{name}.png" in report.markdown.read_text()
    text = report.markdown.read_text()
    assert "mnist5k" in text and "lenet5_caffe" in text and "Flower version" in text


def test_a_sweep_started_again_skips_the_runs_already_complete(sweep, tmp_path):
    cfg = sweep_config(tmp_path)
    again = run_sweep(cfg, GRID, seeds=2, sweep_dir=sweep.sweep_dir, progress=False)
    assert [r.status for r in again.runs] == ["skipped"] * 4


def test_partial_runs_are_reported_as_partial(sweep, tmp_path):
    crashed = tmp_path / "crashed"
    shutil.copytree(sweep.sweep_dir / sweep.runs[1].dir, crashed)
    lines = (crashed / "rounds.jsonl").read_text().splitlines()
    (crashed / "rounds.jsonl").write_text(lines[0] + "\n" + lines[1][:20])  # round 2 torn mid-write
    summary = json.loads((crashed / "summary.json").read_text())
    (crashed / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    rep = make_report([crashed], tmp_path / "out")
    (group,) = json.loads(rep.json.read_text())["groups"]
    assert group["status"] == "partial: 1 of 1 runs (1/2 rounds)"
    assert group["metrics"]["uplink_bytes"]["values"] == [_rows(crashed)[0]["uplink_bytes"]]


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


def test_group_labels_name_the_server_compression_and_shorten_long_values():
    from fedcomp.reports.runs import _label

    groups = "[{'layers': ['features.*'], 'forms': [{'form': 'quantize', 'k': 4}]}]"
    flat = {"uplink.name": "surp", "server_compression.name": "lc", "server_compression.groups": groups}
    label = _label(flat, ["server_compression.groups", "server_compression.name"])
    assert label.startswith("surp ↓lc groups=") and label.endswith("…") and len(label) < 60
    assert _label({"uplink.name": "topk"}, []) == "topk"  # no server compression: nothing added


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
    assert group["status"] == "partial: 1 of 1 runs (0/2 rounds)" and group["warnings"]

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
    assert "rounds w/o update" in rep.markdown.read_text() and not rep.warnings


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
    assert cli_main(["report", str(run_dir), "-o", str(tmp_path / "out"), "--target", str(target)]) == 0
    (group,) = json.loads((tmp_path / "out" / "table.json").read_text())["groups"]
    assert group["metrics"]["rounds_to_target"]["values"] == [1.0]
    assert group["metrics"]["uplink_bytes_to_target"]["values"] == [float(rows[0]["uplink_bytes"])]
    unreachable = max(r["test_accuracy"] for r in rows) + 0.01
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
