"""SuRP's sequential loops, compiled: the encoder's iterations, the decoder's λ schedule, the shared order.

SuRP is sequential by nature (each threshold depends on every earlier
choice), so its inner loop runs one step per iteration. In Python that is
~35 µs a step; compiled with numba it is well under a microsecond, which is
what makes SuRP usable on ResNet-sized updates. Everything around the loop
(normalization, selection of the largest magnitudes, the shared order, bit
coding) stays whole-array numpy in ``surp.py``.

Data structures, per *side* (one side for Algorithm 2: magnitudes; two for
Algorithm 1: positive and negative coordinates):

- ``rev``: the side's largest magnitudes, sorted decreasing (revealed by the
  caller); a pointer admits them as the threshold falls below them.
- a min-heap of candidates keyed by ``pass·n + position``, where position is
  the coordinate's place in the shared order and pass the sweep of the
  cursor in which it will be reached: popping it gives "the first candidate
  at or after the cursor, wrapping around".
- a heap of touched coordinates that are below the threshold, keyed by
  minus the residual (one min-heap code serves both heaps), re-admitted
  when the threshold falls below them.

Every coordinate is in exactly one place (unrevealed, candidate, touched),
so each heap needs at most as many slots as the side has revealed
coordinates. Cost: O(log R) per iteration and O(β log β) per refresh.

Thresholds are float64 and computed by the same multiplications in the same
order here and in :func:`replay_taus` / :func:`replay_chunk`, so encoder and
decoder agree bit for bit (no fastmath).

The decoder's kernels take input an untrusted client wrote and hold the
GIL while they run, so each is bounded by its input: :func:`replay_chunk`
does one step per symbol of its chunk and at most 63 squarings per
refresh (:func:`pow_by_squaring` refuses negative exponents instead of
looping), :func:`mark_first` one per pick, :func:`feistel_order` an
expected O(1) per position (at most ``MAX_WALK`` walk steps).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

OK, NEED_MORE_REVEALED, NEED_MORE_CAPACITY = 0, 1, 2


@njit(cache=True)
def pow_by_squaring(base: float, exponent: int) -> float:
    """base**exponent with float64 multiplications only (bit-identical everywhere).

    At most 63 squarings for any int64 exponent. A negative exponent is no
    step count: it gives NaN rather than looping (an arithmetic shift of a
    negative number never reaches 0, and this code holds the GIL).
    """
    if exponent < 0:
        return np.nan
    result, b, e = 1.0, base, exponent
    while e > 0:
        if e & 1:
            result *= b
        b *= b
        e >>= 1
    return result


@njit(cache=True)
def refresh_steps(lam: float, factor: float, logf: float, vref: float) -> int:
    """Smallest s ≥ 1 with logf / (λ·factor^s) < vref: the refresh that restores candidates."""
    s = max(1, int(math.ceil(math.log((logf / lam) / vref) / math.log(factor))))
    while not logf / (lam * pow_by_squaring(factor, s)) < vref:
        s += 1
    while s > 1 and logf / (lam * pow_by_squaring(factor, s - 1)) < vref:
        s -= 1
    return s


# ----------------------------------------------------------------------------- the shared order

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
MAX_WALK = 10_000


@njit(cache=True)
def _round_fn(x, key, mask):
    z = (x + key) * _M1
    z ^= z >> np.uint64(31)
    z *= _M2
    z ^= z >> np.uint64(29)
    return z & mask


@njit(cache=True)
def feistel_order(positions, n, keys, half, inverse, out):
    """π (or π⁻¹) of each position in [0, n): a 4-round Feistel bijection of 2·half bits, cycle-walked into [0, n).

    One pass, O(1) expected per position (each walk step lands in [0, n)
    with p ≥ 1/4); uint64 arithmetic wraps exactly as numpy's does, so
    every platform computes the same order. Returns 1 if a walk exceeds
    MAX_WALK steps (probability (3/4)^10000), else 0.
    """
    h = np.uint64(half)
    mask = (np.uint64(1) << h) - np.uint64(1)
    limit = np.uint64(n)
    for i in range(positions.size):
        x = np.uint64(positions[i])
        done = False
        for _ in range(MAX_WALK):
            left, right = x >> h, x & mask
            if not inverse:
                for r in range(4):
                    left, right = right, left ^ _round_fn(right, keys[r], mask)
            else:
                for r in range(3, -1, -1):
                    left, right = right ^ _round_fn(left, keys[r], mask), left
            x = (left << h) | right
            if x < limit:
                done = True
                break
        if not done:
            return 1
        out[i] = np.int64(x)
    return 0


# ----------------------------------------------------------------------------- heaps on arrays


@njit(cache=True)
def _min_push(key, a, b, size, k, va, vb):
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if key[parent] <= k:
            break
        key[i], a[i], b[i] = key[parent], a[parent], b[parent]
        i = parent
    key[i], a[i], b[i] = k, va, vb
    return size + 1


@njit(cache=True)
def _min_pop(key, a, b, size):
    """Remove the root; returns the new size (the root must be read before)."""
    size -= 1
    k, va, vb = key[size], a[size], b[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and key[child + 1] < key[child]:
            child += 1
        if key[child] >= k:
            break
        key[i], a[i], b[i] = key[child], a[child], b[child]
        i = child
    if size > 0:
        key[i], a[i], b[i] = k, va, vb
    return size


@njit(cache=True)
def _kth_largest(untouched, neg_touched, t_size, m):
    """m-th largest of a decreasing array and a min-heap of negated values (the last one if fewer exist; 0 if none).

    The heap's m largest are found by a best-first walk of its tree with a
    small frontier heap: O(m log m), independent of the heap's size.
    """
    top = np.empty(m, np.float64)
    count = 0
    f_key = np.empty(2 * m + 2, np.float64)
    f_idx = np.empty(2 * m + 2, np.int64)
    f_dummy = np.empty(2 * m + 2, np.int64)
    f_size = 0
    if t_size > 0:
        f_size = _min_push(f_key, f_idx, f_dummy, f_size, neg_touched[0], 0, 0)
    while f_size > 0 and count < m:
        v, i = f_key[0], f_idx[0]
        f_size = _min_pop(f_key, f_idx, f_dummy, f_size)
        top[count] = -v
        count += 1
        for child in (2 * i + 1, 2 * i + 2):
            if child < t_size:
                f_size = _min_push(f_key, f_idx, f_dummy, f_size, neg_touched[child], child, 0)
    # Merge the two decreasing lists up to the m-th element.
    i = j = 0
    last = 0.0
    for _ in range(m):
        if i < untouched.size and (j >= count or untouched[i] >= top[j]):
            last = untouched[i]
            i += 1
        elif j < count:
            last = top[j]
            j += 1
        else:
            break
    return last


# ----------------------------------------------------------------------------- the encoder loop


@njit(cache=True)
def encode_loop(
    mag,  # float64[n]: normalized magnitudes (residuals start here)
    rev,  # int64[sides, R]: each side's revealed coordinates, decreasing magnitude (-1 padding)
    rev_pos,  # int64[sides, R]: their positions in the shared order
    rev_len,  # int64[sides]: how many are revealed per side
    side_total,  # int64[sides]: how many nonzero coordinates each side has in all
    logf,
    lam0,
    factor,
    m_ref,  # refresh target: about this many candidates per side
    target,  # stop once this many distinct coordinates are nonzero
    max_iter,
    out_sym,  # int64[cap]: skip + 1 per pick, 0 per refresh
    out_steps,  # int64[cap]: s of each refresh
    out_coord,  # int64[cap]: coordinate of each pick
    out_tau,  # float64[cap]: threshold of each pick
):
    """Algorithm 2 (one side) or Algorithm 1 (two sides) with the refresh and cursor design of ``surp.py``.

    Returns (status, symbols, refreshes, picks, iterations). ``status`` asks
    the caller to reveal more coordinates or give more room, then call again
    (the loop is deterministic, so a rerun gives the same stream).
    """
    n = mag.size
    sides, width = rev.shape
    cap = out_sym.size
    residual = mag.copy()
    seen = np.zeros(n, np.bool_)
    c_key = np.empty((sides, width), np.int64)
    c_coord = np.empty((sides, width), np.int64)
    c_pos = np.empty((sides, width), np.int64)
    c_size = np.zeros(sides, np.int64)
    t_neg = np.empty((sides, width), np.float64)  # minus the residual: the largest residual on top
    t_coord = np.empty((sides, width), np.int64)
    t_pos = np.empty((sides, width), np.int64)
    t_size = np.zeros(sides, np.int64)
    ptr = np.zeros(sides, np.int64)
    cur_pass = np.zeros(sides, np.int64)
    cur_pos = np.zeros(sides, np.int64)

    lam = lam0
    n_sym = n_steps = n_pick = iterations = distinct = 0
    while distinct < target and iterations < max_iter:
        tau = logf / lam
        refresh = False
        for s in range(sides):
            # Admit untouched coordinates above τ, then touched ones that τ has passed.
            while ptr[s] < rev_len[s] and mag[rev[s, ptr[s]]] > tau:
                coord, pos = rev[s, ptr[s]], rev_pos[s, ptr[s]]
                key = cur_pass[s] * n + pos if pos >= cur_pos[s] else (cur_pass[s] + 1) * n + pos
                c_size[s] = _min_push(c_key[s], c_coord[s], c_pos[s], c_size[s], key, coord, pos)
                ptr[s] += 1
            if ptr[s] == rev_len[s] and rev_len[s] < side_total[s]:
                return NEED_MORE_REVEALED, n_sym, n_steps, n_pick, iterations
            while t_size[s] > 0 and -t_neg[s, 0] > tau:
                coord, pos = t_coord[s, 0], t_pos[s, 0]
                t_size[s] = _min_pop(t_neg[s], t_coord[s], t_pos[s], t_size[s])
                key = cur_pass[s] * n + pos if pos >= cur_pos[s] else (cur_pass[s] + 1) * n + pos
                c_size[s] = _min_push(c_key[s], c_coord[s], c_pos[s], c_size[s], key, coord, pos)
            if c_size[s] == 0:
                refresh = True
        if n_sym + sides + 1 > cap:
            return NEED_MORE_CAPACITY, n_sym, n_steps, n_pick, iterations
        if refresh:
            # Lower τ until about m_ref residuals exceed it on every side.
            vref = np.inf
            for s in range(sides):
                if ptr[s] + m_ref > rev_len[s] and rev_len[s] < side_total[s]:
                    return NEED_MORE_REVEALED, n_sym, n_steps, n_pick, iterations
                hi = min(ptr[s] + m_ref, rev_len[s])
                untouched = mag[rev[s, ptr[s] : hi]]
                vref = min(vref, _kth_largest(untouched, t_neg[s], t_size[s], m_ref))
            if not vref > 0.0:
                break  # a side has nothing left to send
            steps = refresh_steps(lam, factor, logf, vref)
            lam *= pow_by_squaring(factor, steps)
            out_sym[n_sym] = 0
            n_sym += 1
            out_steps[n_steps] = steps
            n_steps += 1
            continue
        for s in range(sides):
            key, coord, pos = c_key[s, 0], c_coord[s, 0], c_pos[s, 0]
            c_size[s] = _min_pop(c_key[s], c_coord[s], c_pos[s], c_size[s])
            key_pass = key // n
            skip = pos - cur_pos[s] if key_pass == cur_pass[s] else pos + n - cur_pos[s]
            out_sym[n_sym] = skip + 1
            n_sym += 1
            out_coord[n_pick] = coord
            out_tau[n_pick] = tau
            n_pick += 1
            if not seen[coord]:
                seen[coord] = True
                distinct += 1
            residual[coord] -= tau
            t_size[s] = _min_push(t_neg[s], t_coord[s], t_pos[s], t_size[s], -residual[coord], coord, pos)
            if pos + 1 < n:
                cur_pass[s], cur_pos[s] = key_pass, pos + 1
            else:
                cur_pass[s], cur_pos[s] = key_pass + 1, 0
        lam *= factor
        iterations += 1
    return OK, n_sym, n_steps, n_pick, iterations


# ----------------------------------------------------------------------------- the decoder's schedule


REPLAY_OK, REPLAY_SPLIT, REPLAY_BAD_STEP, REPLAY_STEPS_SHORT = 0, 1, 3, 4


@njit(cache=True)
def replay_chunk(symbols, steps, j, sides, logf, lam, factor, in_group, taus):
    """:func:`replay_taus` over one chunk of the symbols, carrying the schedule from the chunk before.

    ``j`` is the next refresh's index in ``steps``, ``lam`` and ``in_group``
    the state after the previous chunk; τ of each pick goes to ``taus``
    (room for every pick of the chunk). Returns (picks, j, lam, in_group,
    status): REPLAY_SPLIT when a refresh splits a group of ``sides`` picks,
    REPLAY_BAD_STEP for a negative step, REPLAY_STEPS_SHORT when the
    refreshes outnumber the steps.
    """
    k = 0
    for sym in symbols:
        if sym == 0:
            if in_group:
                return k, j, lam, in_group, REPLAY_SPLIT
            if j >= steps.size:
                return k, j, lam, in_group, REPLAY_STEPS_SHORT
            if steps[j] < 0:
                return k, j, lam, in_group, REPLAY_BAD_STEP
            lam *= pow_by_squaring(factor, steps[j])
            j += 1
            continue
        taus[k] = logf / lam
        k += 1
        in_group += 1
        if in_group == sides:
            in_group = 0
            lam *= factor
    return k, j, lam, in_group, REPLAY_OK


@njit(cache=True)
def replay_taus(symbols, steps, sides, logf, lam0, factor):
    """τ of every pick, from the symbol stream: bit-identical to :func:`encode_loop` (one :func:`replay_chunk`).

    Returns (taus, status): status 0, or 1 when a refresh symbol splits an
    iteration's group of ``sides`` picks, or 2 when the stream ends inside one,
    or 3 when a refresh has a negative step count, or 4 when the refreshes
    outnumber the steps.
    """
    picks = 0
    for sym in symbols:
        if sym != 0:
            picks += 1
    taus = np.empty(picks, np.float64)
    k, j, lam, in_group, status = replay_chunk(symbols, steps, 0, sides, logf, lam0, factor, 0, taus)
    if status == REPLAY_OK and in_group:
        status = 2
    return taus, status


@njit(cache=True)
def mark_first(coords, seen, order, count):
    """Append to ``order`` the entries of ``coords`` not ``seen`` before (marking them); returns the new count.

    :func:`first_chosen` across chunks: ``seen`` (n flags) and ``order``
    (room for n) persist from chunk to chunk.
    """
    for c in coords:
        if not seen[c]:
            seen[c] = True
            order[count] = c
            count += 1
    return count


@njit(cache=True)
def first_chosen(coords, n):
    """The distinct entries of ``coords`` in the order they first appear (O(len + n), no sort)."""
    seen = np.zeros(n, np.bool_)
    out = np.empty(coords.size, np.int64)
    count = 0
    for c in coords:
        if not seen[c]:
            seen[c] = True
            out[count] = c
            count += 1
    return out[:count]
