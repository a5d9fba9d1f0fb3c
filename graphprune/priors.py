"""Model inputs without data: where OBSPA's statistics come from when nobody gives it samples.

White noise and independent-channel priors give the wrong H (activations of real inputs are spatially
and cross-channel correlated), so the data-free default draws *image-like* inputs from a small generic
family and lets the model choose:

* **families** (values in [0, 1] before the range map): smooth Gaussian fields with power spectrum
  1/f^p (p = 2, 3, 4; p = 2 is the natural-image slope), and thresholded low-resolution random blobs
  (bright on dark, dark on bright) — a dead-leaves-like model of objects on a background;
* **value ranges**: standardised per channel (most exporters leave normalisation outside the model),
  [0, 1], [-1, 1], [0, 255];
* **selection by the dense model itself**: for a classifier output, the (range, family) whose samples
  get confident *and* diverse predictions wins (mean max-probability times the normalised effective
  number of predicted classes); then a larger pool of its samples is drawn and the most confident
  ones per predicted class are kept (class-balanced).  Without a classifier output the standardised
  mixture of all families is used.

Nothing here is tuned to one data set: the same few families are tried on every model, and the model's
own predictions pick among them.  Token-id models (an integer input indexing an embedding table) get
synthetic sentences instead (:func:`token_feeds`); other inputs that are not float images (feature
vectors) fall back to :func:`graphprune.inputs.random_inputs`.

Statistics that need no input at all (``--stats bn-prior``) live in :mod:`graphprune.norm_priors`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from graphprune.errors import GraphpruneError
from graphprune.graph import GraphView
from graphprune.inputs import input_specs, random_inputs

log = logging.getLogger(__name__)

FAMILIES = ("smooth2", "smooth3", "smooth4", "blobs", "blobs-inv")
RANGES = ("standard", "unit", "signed", "byte")
BATCH = 32

Runner = Callable[[dict[str, np.ndarray], list[str]], list[np.ndarray]]  # (feed, fetch) -> values


# families ----------------------------------------------------------------------------------------
def _smooth(rng: np.random.Generator, shape: tuple[int, ...], p: float) -> np.ndarray:
    """Standardised Gaussian fields with power spectrum ~ 1/f^p over the last two axes."""
    h, w = shape[-2:]
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy**2 + fx**2)
    f[0, 0] = np.inf
    amp = f ** (-p / 2.0)
    z = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape)) * amp, s=(h, w))
    z -= z.mean(axis=(-2, -1), keepdims=True)
    return z / (z.std(axis=(-2, -1), keepdims=True) + 1e-12)


def _interp_matrix(n: int, r: int) -> np.ndarray:
    """[n, r] bilinear interpolation weights from an r-point grid spanning the image."""
    pos = np.linspace(0.0, r - 1.0, n)
    lo = np.clip(np.floor(pos).astype(int), 0, r - 1)
    hi = np.minimum(lo + 1, r - 1)
    t = pos - lo
    m = np.zeros((n, r))
    m[np.arange(n), lo] += 1.0 - t
    m[np.arange(n), hi] += t
    return m


def _blobs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Thresholded low-resolution random fields: soft-edged blobs covering 10-35% of the image."""
    n = shape[0]
    h, w = shape[-2:]
    out = np.empty(shape)
    res = rng.integers(3, 8, size=n)
    for r in np.unique(res):
        idx = np.flatnonzero(res == r)
        grid = rng.standard_normal((len(idx), *shape[1:-2], int(r), int(r)))
        z = _interp_matrix(h, int(r)) @ grid @ _interp_matrix(w, int(r)).T
        flat = z.reshape(len(idx), -1)
        q = rng.uniform(0.65, 0.9, size=len(idx))
        t = np.array([np.quantile(row, qi) for row, qi in zip(flat, q, strict=True)])
        scale = 0.1 * flat.std(axis=1) + 1e-12
        shp = (len(idx),) + (1,) * (len(shape) - 1)
        out[idx] = 1.0 / (1.0 + np.exp(-(z - t.reshape(shp)) / scale.reshape(shp)))
    return out


def _channels(rng: np.random.Generator, n: int, c: int, h: int, w: int, make: Callable[..., np.ndarray]) -> np.ndarray:
    """Channels share most of their structure (luminance) with some independent variation."""
    base = make(rng, (n, 1, h, w))
    if c == 1:
        return base
    own = make(rng, (n, c, h, w))
    return 0.8 * base + 0.2 * own


def family_samples(rng: np.random.Generator, family: str, n: int, c: int, h: int, w: int) -> np.ndarray:
    """``n`` raw samples in [0, 1] from one family (``mix``: equal parts of all)."""
    if family == "mix":
        parts = np.array_split(np.arange(n), len(FAMILIES))
        x = np.concatenate([family_samples(rng, f, len(p), c, h, w) for f, p in zip(FAMILIES, parts, strict=True)])
        return x[rng.permutation(n)]
    if family.startswith("smooth"):
        z = _channels(rng, n, c, h, w, lambda r, s: _smooth(r, s, float(family[6:])))
        return 0.5 * (1.0 + np.tanh(z / math.sqrt(2.0)))  # ~ Gaussian CDF: uniform-like marginals
    u = _channels(rng, n, c, h, w, _blobs)
    return 1.0 - u if family == "blobs-inv" else u


def to_range(u: np.ndarray, value_range: str) -> np.ndarray:
    if value_range == "standard":
        axes = tuple(i for i in range(u.ndim) if i != 1)
        return (u - u.mean(axis=axes, keepdims=True)) / (u.std(axis=axes, keepdims=True) + 1e-6)
    if value_range == "unit":
        return u
    if value_range == "signed":
        return 2.0 * u - 1.0
    if value_range == "byte":
        return 255.0 * u
    raise ValueError(value_range)


# model signals -----------------------------------------------------------------------------------
def _probabilities(out: np.ndarray) -> np.ndarray:
    o = np.asarray(out, dtype=np.float64).reshape(out.shape[0], -1)
    if np.all(o >= 0) and np.allclose(o.sum(axis=1), 1.0, atol=1e-3):
        return o
    e = np.exp(o - o.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def signal(probs: np.ndarray) -> float:
    """Confident and diverse: mean max-probability x effective number of predicted classes / K."""
    k = probs.shape[1]
    mean = probs.mean(axis=0)
    entropy = -float(np.sum(mean * np.log(np.maximum(mean, 1e-12))))
    return float(probs.max(axis=1).mean()) * math.exp(entropy) / k


@dataclass
class Judge:
    """What the dense model says about candidate inputs, without data: where BatchNormalization
    survives, how far the batch statistics of its inputs are from its running statistics (KL of the
    per-channel Gaussians, averaged); otherwise how confident and diverse its class predictions are."""

    run: Runner
    classifier: str | None
    bn: list[tuple[str, np.ndarray, np.ndarray]]  # (BN input, running mean, running var)

    @property
    def usable(self) -> bool:
        return bool(self.bn) or self.classifier is not None

    @property
    def kind(self) -> str:
        return "BN statistics" if self.bn else "classifier confidence x diversity"

    def score(self, feeds: list[dict[str, np.ndarray]]) -> float:
        if not self.bn:
            return signal(self.probs(feeds))
        names = [t for t, _, _ in self.bn]
        s1: list[np.ndarray] = [np.zeros(len(m)) for _, m, _ in self.bn]
        s2: list[np.ndarray] = [np.zeros(len(m)) for _, m, _ in self.bn]
        count = [0] * len(self.bn)
        for f in feeds:
            for k, v in enumerate(self.run(f, names)):
                a = np.moveaxis(np.asarray(v, np.float64), 1, 0).reshape(v.shape[1], -1)
                s1[k] += a.sum(axis=1)
                s2[k] += np.square(a).sum(axis=1)
                count[k] += a.shape[1]
        kl = []
        for k, (_, mu, var) in enumerate(self.bn):
            m = s1[k] / max(count[k], 1)
            v = np.maximum(s2[k] / max(count[k], 1) - m**2, 1e-12)
            sv = np.maximum(var, 1e-12)
            kl.append(float(np.clip(0.5 * (np.log(sv / v) + (v + (m - mu) ** 2) / sv - 1.0), 0, 100).mean()))
        return -float(np.mean(kl))

    def probs(self, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
        assert self.classifier is not None
        return np.concatenate([_probabilities(self.run(f, [self.classifier])[0]) for f in feeds])


def bn_statistics(view: GraphView) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(input, running mean, running var) of every inference BatchNormalization on an activation."""
    out = []
    for n in view.nodes:
        if n.op_type != "BatchNormalization" or len(n.output) != 1 or view.is_constant(n.input[0]):
            continue
        mean, var = view.constant_value(n.input[3]), view.constant_value(n.input[4])
        if mean is not None and var is not None:
            out.append((n.input[0], np.asarray(mean, np.float64).ravel(), np.asarray(var, np.float64).ravel()))
    return out


def classifier_output(view: GraphView) -> str | None:
    """The first graph output shaped [N, K] with a static K >= 2 (class scores), if any."""
    for name in view.graph_outputs:
        shape = view.shape(name)
        if shape is not None and len(shape) == 2 and isinstance(shape[1], int) and shape[1] >= 2:
            return name
    return None


@dataclass
class PriorChoice:
    """What the data-free prior picked, and why (for the report)."""

    family: str
    value_range: str
    scores: dict[str, float] = field(default_factory=dict)
    kept: int = 0
    pool: int = 0
    note: str = ""

    def describe(self) -> str:
        head = f"{self.family} / {self.value_range}"
        if self.pool:
            head += f", {self.kept} most confident per class of {self.pool}"
        return head + (f" ({self.note})" if self.note else "")


def image_input(view: GraphView, like: dict[str, np.ndarray] | None = None
                ) -> tuple[str, int, int, int, np.dtype] | None:
    """(name, C, H, W, dtype) when the model has exactly one float [N, C, H, W] input with static C, H, W
    (dynamic ones taken from the example feed ``like`` when given)."""
    specs = input_specs(view)
    if len(specs) != 1:
        return None
    name, (shape, dtype) = next(iter(specs.items()))
    if not np.issubdtype(dtype, np.floating):
        return None
    dims = list(shape or ())
    if like is not None and name in like and like[name].ndim == 4:
        dims = [None, *like[name].shape[1:]]
    if len(dims) != 4:
        return None
    c, h, w = (d if isinstance(d, int) else 0 for d in dims[1:])
    if c <= 0 or min(h, w) < 4:
        return None
    return name, c, h, w, dtype


def _batches(x: np.ndarray, name: str, dtype: np.dtype) -> list[dict[str, np.ndarray]]:
    return [{name: x[i:i + BATCH].astype(dtype)} for i in range(0, len(x), BATCH)]


def natural_feeds(
    view: GraphView,
    n: int,
    seed: int,
    judge: Judge | None,
    *,
    trial: int = 16,
    pool_factor: int = 4,
    like: dict[str, np.ndarray] | None = None,
) -> tuple[list[dict[str, np.ndarray]], PriorChoice]:
    """``n`` image-like samples chosen by the dense model (see the module docstring), in batches.

    ``judge`` scores candidates (None or unusable: use the standardised mixture);
    ``trial`` samples score each candidate, the kept ``n`` come from ``pool_factor * n`` candidates;
    ``like`` (an example feed) gives the sizes of dynamic input axes.
    """
    spec = image_input(view, like)
    if spec is None and token_table(view) is not None:
        return token_feeds(view, n, seed, like)
    if spec is None:
        feeds = [random_inputs(view, batch=min(BATCH, n - i), seed=seed + i) for i in range(0, n, BATCH)]
        return feeds, PriorChoice("gaussian", "input spec", note="inputs are not one float image: random inputs")
    name, c, h, w, dtype = spec
    rng = np.random.default_rng([seed, 7])
    if judge is None or not judge.usable:
        x = to_range(family_samples(rng, "mix", n, c, h, w), "standard")
        return _batches(x, name, dtype), PriorChoice("mix", "standard", note="no BN or classifier output to choose with")
    choice = PriorChoice("mix", "standard", note=f"chosen by {judge.kind}")
    best = -math.inf
    for value_range in RANGES:  # stage 1: the value range, on the mixture
        s = judge.score(_batches(to_range(family_samples(rng, "mix", trial, c, h, w), value_range), name, dtype))
        choice.scores[f"mix/{value_range}"] = round(s, 4)
        if s > best + 1e-9:
            best, choice.value_range = s, value_range
    for family in FAMILIES:  # stage 2: the family, in that range
        x = to_range(family_samples(rng, family, trial, c, h, w), choice.value_range)
        s = judge.score(_batches(x, name, dtype))
        choice.scores[f"{family}/{choice.value_range}"] = round(s, 4)
        if s > best + 1e-9:
            best, choice.family = s, family
    if judge.classifier is None or pool_factor <= 1:
        x = to_range(family_samples(rng, choice.family, n, c, h, w), choice.value_range)
        return _batches(x, name, dtype), choice
    pool = pool_factor * n
    x = to_range(family_samples(rng, choice.family, pool, c, h, w), choice.value_range)
    keep = balanced_confident(judge.probs(_batches(x, name, dtype)), n)
    choice.kept, choice.pool = len(keep), pool
    return _batches(x[keep], name, dtype), choice


TOKEN_LENGTHS = (8, 32)  # sentence-like lengths of synthetic token sequences, without the two markers
SMALL_TABLE = 16  # an integer input indexing a table this small is a type/segment id: all zeros


def _gather_table(view: GraphView, name: str) -> int | None:
    """Rows of the constant table an integer input indexes through Gather, if any."""
    for ci in view.consumers.get(name, []):
        node = view.nodes[ci]
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name:
            axis = view.attr(ci, "axis", 0)
            d = view.static_dim(node.input[0], int(axis) if isinstance(axis, int | float) else 0)
            if d:
                return int(d)
    return None


def token_table(view: GraphView) -> tuple[str, int] | None:
    """(input, vocabulary size) when an integer input indexes an embedding table larger than
    ``SMALL_TABLE`` rows: a token-id model."""
    best: tuple[str, int] | None = None
    try:
        specs = input_specs(view)
    except GraphpruneError:  # an input that is no numeric tensor: not a token model we can feed
        return None
    for name, (shape, dtype) in specs.items():
        if not np.issubdtype(dtype, np.integer) or shape is None or len(shape) != 2:
            continue
        v = _gather_table(view, name)
        if v is not None and v > SMALL_TABLE and (best is None or v > best[1]):
            best = (name, v)
    return best


BERT_VOCABS = {30522, 28996, 119547, 21128}  # uncased, cased, multilingual, Chinese: [CLS]=101, [SEP]=102


def _frame(ids_name: str, vocab: int, like: dict[str, np.ndarray] | None) -> tuple[tuple[int, int] | None, str]:
    """The ids that open and close every sequence: from the example inputs when given (first and last
    non-padding id of each row, if all rows agree), else BERT's [CLS]/[SEP] for BERT-sized vocabularies."""
    ex = None if like is None else like.get(ids_name)
    if ex is not None and np.ndim(ex) == 2 and np.size(ex):
        rows = np.asarray(ex, np.int64)
        lengths = np.maximum((rows != 0).cumsum(axis=1).argmax(axis=1) + 1, 1)
        first = set(rows[:, 0].tolist())
        last = {int(r[k - 1]) for r, k in zip(rows, lengths, strict=True)}
        if len(first) == 1 and len(last) == 1 and 0 <= min(first | last) and max(first | last) < vocab:
            a, b = first.pop(), last.pop()
            return (int(a), int(b)), f"framed {a} ... {b} as in the example inputs"
        return None, "unframed (the example rows do not share their first and last ids)"
    if vocab in BERT_VOCABS:
        return (101, 102), "framed 101 ... 102 (a BERT vocabulary's [CLS]/[SEP])"
    return None, "unframed (give --inputs with a tokenized example to frame sequences like it)"


def token_feeds(view: GraphView, n: int, seed: int, like: dict[str, np.ndarray] | None = None
                ) -> tuple[list[dict[str, np.ndarray]], PriorChoice]:
    """``n`` synthetic token sequences for a token-id model, in batches of one length each (no padding).

    Ids are log-uniform over the upper 15/16 of the vocabulary (WordPiece/BPE vocabularies put special,
    unused and single-character entries first and order the rest roughly by frequency, so a log-uniform
    draw is a Zipf-like word distribution).  Each sequence is framed by the ids that open and close
    the rows of ``like`` (a tokenized example), or by BERT's [CLS]/[SEP] (101/102) when the table has
    a BERT vocabulary's size, else not at all.  Lengths are uniform in ``TOKEN_LENGTHS``.  Other integer
    inputs: masks (not indexing a table) are all ones, type/segment ids (small tables) all zeros; float
    inputs are Gaussian.
    """
    found = token_table(view)
    assert found is not None
    ids_name, vocab = found
    rng = np.random.default_rng([seed, 11])
    lo = max(vocab // 16, 1)
    frame, how = _frame(ids_name, vocab, like)
    feeds = []
    for i in range(0, n, BATCH):
        b = min(BATCH, n - i)
        body = rng.integers(TOKEN_LENGTHS[0], TOKEN_LENGTHS[1] + 1, size=b)
        seq = int(body.max()) + (2 if frame else 0)
        ids = np.zeros((b, seq), np.int64)
        mask = np.zeros((b, seq), np.int64)
        for r, length in enumerate(body):
            t = np.exp(rng.uniform(math.log(lo), math.log(vocab), size=int(length))).astype(np.int64)
            t = np.clip(t, lo, vocab - 1)
            if frame:
                t = np.concatenate([[frame[0]], t, [frame[1]]])
            ids[r, :len(t)] = t
            mask[r, :len(t)] = 1
        feed = random_inputs(view, batch=b, seq=seq, seed=seed + i)
        for name, (_, dtype) in input_specs(view).items():
            if name == ids_name:
                feed[name] = ids.astype(dtype)
            elif np.issubdtype(dtype, np.integer) or dtype == np.bool_:
                table = _gather_table(view, name)
                feed[name] = (np.zeros_like(ids) if table is not None else mask).astype(dtype)
        feeds.append(feed)
    note = f"{n} sequences of {TOKEN_LENGTHS[0]}-{TOKEN_LENGTHS[1]} ids log-uniform in [{lo}, {vocab}), {how}"
    return feeds, PriorChoice("tokens", "log-uniform ids", note=note)


def balanced_confident(probs: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` samples: round-robin over predicted classes, most confident first."""
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    queues = [list(np.flatnonzero(pred == k)[np.argsort(-conf[pred == k], kind="stable")]) for k in range(probs.shape[1])]
    queues = [q for q in queues if q]
    out: list[int] = []
    while len(out) < min(n, len(probs)):
        for q in queues:
            if q and len(out) < n:
                out.append(int(q.pop(0)))
        queues = [q for q in queues if q]
    return np.sort(np.asarray(out, dtype=np.int64))


def noise_feeds(view: GraphView, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``n`` random inputs from the input spec (standard normal floats), in batches."""
    return [random_inputs(view, batch=min(BATCH, n - i), seed=seed + i) for i in range(0, n, BATCH)]


def split_feeds(feed: dict[str, np.ndarray], batch: int = BATCH) -> Sequence[dict[str, np.ndarray]]:
    """One loaded .npz feed cut into batches along axis 0."""
    n = min(v.shape[0] for v in feed.values()) if feed else 0
    return [{k: v[i:i + batch] for k, v in feed.items()} for i in range(0, n, batch)] or [feed]
