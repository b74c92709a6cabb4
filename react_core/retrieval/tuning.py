"""Measuring an index against exact search: recall on the queries that will be run, the search
breadth that reaches a target recall, and speed ratios that noise cannot reverse.

Recall: exact neighbours of the tuning queries are the ground truth; a setting is kept when the
mean of its per-query recall@k less two standard errors (`recall_lower_bound`) reaches the
target, so that other queries of the same distribution reach it too (a setting chosen on the bare
mean reaches it on other queries about half the time).

Breadth (`sweep`): the knobs that trade speed for recall (nprobe, efSearch, FAISS's refine factor
`k_factor_rf`) are stepped up from the cheapest value; a sweep stops at the first setting whose
lower bound reaches the target, and gives up as soon as a setting runs slower than the best
found so far (every wider one is slower still). One search of the tuning queries measures both
recall and time.

Speed (`compare_speed`): one timing is not a decision (the same index measured 1.21x and 0.85x
exact search on one machine, at two loads). Exact search and the index are timed in interleaved
pairs, alternating which goes first, by the wall clock and by the process's CPU time; after each
pair from the second on, a one-sided 95% interval of the mean log ratio (Student's t) is computed
for each clock. The index is called faster only when, by both clocks, the interval's lower end is
above 1 and the median ratio is at least `MIN_SPEEDUP` (1.3x). Why both: the ratio itself moves
with the machine's load, which the spread of one run cannot show. Exact search is a matrix
product whose threads wait for each other, so other processes slow its wall time far more than
the scattered reads of an index: at a load of 19 on two cores an inverted file scanning every list
(0.7-0.8x exact's speed on a quiet machine) passed the wall-clock test in one run of three. CPU
time does not see that load, and the wall clock sees what CPU time misses (reads from disk). And
a margin under 1.3x is one that the next load may reverse. Timing stops as soon as the answer is
settled (faster by both; or an upper end below 1.3x), at most `MAX_PAIRS` pairs; undecided counts
as not faster. So only as many pairs are timed as the decision needs. A search shorter than
`MIN_TIMED_SECONDS` is repeated until it lasts that long, and timed per search: one preemption by
another process would otherwise outlast a millisecond's search, and reverse the ratio.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from react_core.retrieval.ann import RefinedIndex, ivf_of, refine_of
from react_core.retrieval.embed import EmbeddingFolder

RECALL_MARGIN = 2.0  # standard errors: a setting is kept when mean - 2 SE of its per-query recall reaches the target
NPROBE_MAX = 1 << 16
EF_SEARCH_MAX = 4096
K_FACTORS = (2, 4, 8, 16)
FIRST_QUERIES = 64
MIN_PAIRS = 2
MAX_PAIRS = 9
MIN_SPEEDUP = 1.3
MIN_TIMED_SECONDS = 0.02  # several of the scheduler's time slices
# One-sided 95% quantiles of Student's t, by degrees of freedom (pairs - 1).
T95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833, 10: 1.812}


def exact_neighbours(folder: EmbeddingFolder, kind: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k over the whole folder, shard by shard (scores, rows)."""
    import faiss
    from faiss.contrib.exhaustive_search import knn_ground_truth

    blocks = (block for _, block in folder.iter_arrays(kind))
    return knn_ground_truth(np.ascontiguousarray(queries, dtype=np.float32), blocks, k, metric_type=faiss.METRIC_INNER_PRODUCT)


def per_query_recall(found: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """|found ∩ exact| / k of each query (ids < 0 never count)."""
    k = exact.shape[1]
    return np.array([len(set(a[a >= 0].tolist()) & set(b[b >= 0].tolist())) / k for a, b in zip(found, exact)])


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean |found ∩ exact| / k over queries (ids < 0 never count)."""
    recalls = per_query_recall(found, exact)
    return float(recalls.mean()) if len(recalls) else 1.0


def recall_lower_bound(recalls: np.ndarray) -> float:
    """Mean per-query recall less RECALL_MARGIN standard errors of that mean: what other queries
    from the same distribution reach with about 98% confidence. Tuned to the bare mean, the
    fastest setting that just reaches the target on the tuning queries misses it on others as often
    as not (HNSW at 20000 concepts: 0.956 on the tuning queries, 0.948 on held-out ones)."""
    if len(recalls) < 2:
        return float(recalls.mean()) if len(recalls) else 1.0
    return float(recalls.mean() - RECALL_MARGIN * recalls.std(ddof=1) / math.sqrt(len(recalls)))


# --------------------------------------------------------------------------------------------
# Search breadth


@dataclass
class Setting:
    """One measured search setting: FAISS parameter string, disk re-rank factor (1: none),
    mean recall@k, its lower bound, seconds per query, and the position of its breadth value."""

    parameters: str
    refine_factor: int
    recall: float
    recall_lower_bound: float
    seconds_per_query: float
    position: int = 0

    def meets(self, target: float) -> bool:
        return self.recall_lower_bound >= target


@dataclass
class Sweep:
    """What tuning one index found: the chosen setting (the fastest meeting the target, else the
    one of highest lower bound), every setting measured, and why it stopped."""

    best: Setting
    tried: list[Setting] = field(default_factory=list)
    stopped: str = ""
    pruned: bool = False  # a setting ran slower than the best so far: the index cannot win


def breadth_knobs(index) -> dict[str, list[int]]:
    """The knobs of `index` that widen its search, each with its values in increasing order:
    nprobe (powers of two up to nlist), efSearch of a graph (16 up to EF_SEARCH_MAX), and
    `k_factor_rf` of a FAISS `Refine` (re-ranked candidates per hit)."""
    import faiss

    knobs: dict[str, list[int]] = {}
    ivf = ivf_of(index)
    if ivf is not None:
        knobs["nprobe"] = [1 << i for i in range(int(math.log2(min(ivf.nlist, NPROBE_MAX))) + 1)]
    else:
        graph = faiss.downcast_index(refine_of(index).base_index if refine_of(index) is not None else index)
        if isinstance(graph, faiss.IndexHNSW):
            knobs["efSearch"] = [1 << i for i in range(4, int(math.log2(EF_SEARCH_MAX)) + 1)]
    if refine_of(index) is not None:
        knobs["k_factor_rf"] = list(K_FACTORS)
    return knobs


def apply_parameters(index, parameters: str) -> None:
    """Set a FAISS parameter string (`nprobe=8,k_factor_rf=4`); with an HNSW coarse quantizer its
    efSearch follows nprobe (at least 2 nprobe, so that the probed lists are the nearest ones)."""
    import faiss

    if not parameters:
        return
    values = dict(part.split("=") for part in parameters.split(","))
    if "nprobe" in values and "quantizer_efSearch" not in values:
        ivf = ivf_of(index)
        if ivf is not None and isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW):
            parameters += f",quantizer_efSearch={max(64, 2 * int(values['nprobe']))}"
    faiss.ParameterSpace().set_index_parameters(index, parameters)


def _measure(search: Callable, queries: np.ndarray, exact: np.ndarray, parameters: str, factor: int,
             position: int, target: float) -> Setting:
    """Recall and speed of one setting: on the first `FIRST_QUERIES` queries, and on the rest only
    when those leave the target within reach (mean plus RECALL_MARGIN standard errors), since most
    settings of a sweep miss it by far."""
    k = exact.shape[1]
    started = time.perf_counter()
    _, found = search(queries[:FIRST_QUERIES], k)
    recalls = per_query_recall(found, exact[:FIRST_QUERIES])
    if len(queries) > FIRST_QUERIES and 2 * recalls.mean() - recall_lower_bound(recalls) >= target:
        _, rest = search(queries[FIRST_QUERIES:], k)
        recalls = np.concatenate([recalls, per_query_recall(rest, exact[FIRST_QUERIES:])])
    seconds = (time.perf_counter() - started) / len(recalls)
    return Setting(parameters, factor, float(recalls.mean()), recall_lower_bound(recalls), seconds, position)


PRUNED = "ran slower than the best so far"


def _sweep_values(measure: Callable[[int], Setting], count: int, position: int, target: float,
                  beat: float) -> tuple[Setting | None, str]:
    """The cheapest of `count` breadth values meeting `target`: from `position` down while the
    target holds, else up until it is met, a value runs slower than `beat`, or the values run out."""
    setting = measure(position)
    if setting.meets(target):
        found = setting
        while position > 0:
            position -= 1
            lower = measure(position)
            if not lower.meets(target):
                break
            found = lower
        return found, ""
    while setting.seconds_per_query < beat:
        position += 1
        if position == count:
            return None, f"{setting.parameters} is the widest search and misses the target"
        setting = measure(position)
        if setting.meets(target):
            return setting, ""
    return None, f"{setting.parameters} {PRUNED} without reaching the target"


def sweep(index, queries: np.ndarray, exact: np.ndarray, target: float, *, beat: float = math.inf,
          start: dict[str, int] | None = None, search: Callable | None = None, folder: EmbeddingFolder | None = None,
          kind: str = "image", disk_factors: tuple[int, ...] = ()) -> Sweep:
    """Fastest setting of `index`'s breadth knobs whose recall lower bound reaches `target`.

    Args:
        index: a FAISS index (left at the chosen setting).
        queries: tuning queries; exact: their exact top-k rows (k = exact.shape[1]).
        target: recall@k to reach.
        beat: seconds per query of the best alternative so far; a setting slower than it that
            misses the target ends the sweep (wider ones are slower still).
        start: a first value per knob (e.g. nprobe scaled from a sample); the sweep goes down from
            it while the target holds, else up; with a re-rank factor, only that one is swept unless
            it misses the target.
        search: `(queries, k) -> (scores, ids)` to measure instead of `index.search` (e.g. one
            that maps sample positions to corpus rows); the knobs are still set on `index`.
        folder, kind, disk_factors: when no setting of the index alone meets the target, re-rank
            `factor * k` candidates from the embeddings on disk (`RefinedIndex`), each factor in turn.

    Returns:
        A `Sweep`: the fastest setting meeting the target, else the one of highest lower bound.
    """
    k = exact.shape[1]
    knobs = breadth_knobs(index)
    primary = next((name for name in ("nprobe", "efSearch") if name in knobs), None)
    values: list = [None]
    if primary:  # a graph returns max(efSearch, k) candidates: smaller efSearch values are all alike
        values = [v for v in knobs[primary] if primary != "efSearch" or v >= k] or knobs[primary][-1:]
    first = int(min(np.searchsorted(values, start[primary]), len(values) - 1)) if start and primary in start else 0
    # (extra parameter, disk re-rank factor) of each pass; a wider re-rank needs no wider search
    factors = knobs.get("k_factor_rf", [])
    if start and start.get("k_factor_rf") in factors:  # a re-rank factor found before is tried first, alone if it meets
        factors = [start["k_factor_rf"]] + [f for f in factors if f > start["k_factor_rf"]]
    passes = [(f"k_factor_rf={f}", 1) for f in factors] or [("", 1)]
    tried: list[Setting] = []
    found: list[Setting] = []
    stopped = ""

    def run(passes: list[tuple[str, int]], position: int) -> None:
        nonlocal stopped
        for extra, factor in passes:
            searching = RefinedIndex(index, folder, kind, factor).search if factor > 1 else (search or index.search)

            def measure(at: int) -> Setting:
                parameters = ",".join(p for p in (f"{primary}={values[at]}" if primary else "", extra) if p)
                apply_parameters(index, parameters)
                tried.append(_measure(searching, queries, exact, parameters, factor, at, target))
                return tried[-1]

            fastest = min((s.seconds_per_query for s in found), default=math.inf)
            setting, why = _sweep_values(measure, len(values), position, target, min(beat, fastest))
            stopped = why or stopped
            # the next, wider re-rank reaches the target at this breadth or a narrower one, and is
            # slower than this one wherever this one was too slow: it starts just below
            position = setting.position if setting is not None else max(0, tried[-1].position - 1)
            if setting is not None:
                found.append(setting)
                if start and "k_factor_rf" in start:
                    return

    run(passes, first)
    if not found and disk_factors and folder is not None and passes == [("", 1)]:
        run([("", factor) for factor in disk_factors], 0)
    best = min(found, key=lambda s: s.seconds_per_query) if found else max(tried, key=lambda s: s.recall_lower_bound)
    apply_parameters(index, best.parameters)
    return Sweep(best, tried, stopped, pruned=PRUNED in stopped)


# --------------------------------------------------------------------------------------------
# Speed against exact search


@dataclass
class SpeedRatio:
    """Exact search's seconds over the index's, from interleaved pairs of timings, by the wall
    clock (what a user waits) and by the process's CPU time (what the machine's load does not
    change)."""

    median: float
    lower_bound: float
    upper_bound: float
    cpu_median: float
    cpu_lower_bound: float
    cpu_upper_bound: float
    pairs: int
    queries: int
    exact_seconds_per_query: float
    index_seconds_per_query: float

    @property
    def faster(self) -> bool:
        return min(self.lower_bound, self.cpu_lower_bound) > 1.0 and min(self.median, self.cpu_median) >= MIN_SPEEDUP


def ratio_interval(ratios: list[float]) -> tuple[float, float]:
    """One-sided 95% bounds of the mean log ratio (Student's t), as ratios (lower, upper)."""
    logs = np.log(np.asarray(ratios, dtype=np.float64))
    if len(logs) < 2:
        return 0.0, math.inf
    half = T95.get(len(logs) - 1, 1.645) * logs.std(ddof=1) / math.sqrt(len(logs))
    return float(math.exp(logs.mean() - half)), float(math.exp(logs.mean() + half))


def _settled(ratios: list[float]) -> tuple[bool, bool]:
    """(surely faster, surely not faster) by one clock's ratios."""
    low, high = ratio_interval(ratios)
    return low > 1.0 and statistics.median(ratios) >= MIN_SPEEDUP, high < MIN_SPEEDUP


def compare_speed(index_search: Callable, exact_search: Callable, queries: np.ndarray, k: int,
                  min_pairs: int = MIN_PAIRS, max_pairs: int = MAX_PAIRS,
                  clocks: tuple[Callable[[], float], Callable[[], float]] = (time.perf_counter, time.process_time)) -> SpeedRatio:
    """Time `exact_search` and `index_search` on `queries` in interleaved pairs (which goes first
    alternates) by the wall clock and the CPU clock, until the decision is settled (see the module
    docstring), or `max_pairs`.

    Args:
        index_search, exact_search: `(queries, k) -> results` callables.
        queries: the queries to time, searched in one batch each time.
        k: hits per query.
        clocks: (wall, CPU) clocks.

    Returns:
        A `SpeedRatio`; `faster` is true only when, by both clocks, the lower bound is above 1 and
        the median at least `MIN_SPEEDUP`.
    """
    times = {name: {"exact": [], "index": []} for name in ("wall", "cpu")}
    wall, cpu = clocks
    for pair in range(max_pairs):
        order = (("exact", exact_search), ("index", index_search))
        for name, search in order if pair % 2 == 0 else order[::-1]:
            started_wall, started_cpu, searches = wall(), cpu(), 0
            while not searches or wall() - started_wall < MIN_TIMED_SECONDS:
                search(queries, k)
                searches += 1
            times["wall"][name].append(max(wall() - started_wall, 1e-9) / searches)
            times["cpu"][name].append(max(cpu() - started_cpu, 1e-9) / searches)
        ratios = {clock: [e / i for e, i in zip(t["exact"], t["index"])] for clock, t in times.items()}
        if pair + 1 >= min_pairs:
            verdicts = [_settled(r) for r in ratios.values()]
            if all(faster for faster, _ in verdicts) or any(slower for _, slower in verdicts):
                break
    (low, high), (cpu_low, cpu_high) = ratio_interval(ratios["wall"]), ratio_interval(ratios["cpu"])
    return SpeedRatio(statistics.median(ratios["wall"]), low, high, statistics.median(ratios["cpu"]), cpu_low, cpu_high,
                      len(ratios["wall"]), len(queries), statistics.median(times["wall"]["exact"]) / len(queries),
                      statistics.median(times["wall"]["index"]) / len(queries))
