"""Best-of-N publishing: sample a slot's candidates in one batch, guard them, choose one by exploring.

    guard_indexes(training_texts, published_texts, threshold) -> GuardIndexes   what a copy is measured against
    load_reward_model(record) -> SlotRewardModel          the face's newest reward model, or why there is none
    choose(count, rule, seed, members) -> Choice          which candidate to publish, and every one's probability
    draft_slot(model, tokenizer, cfg, ids, ...) -> SlotDraft   the rows of one slot, nothing written yet

What is built. At each publishing slot jobs/online.publish_post samples `OnlineConfig.candidates`
posts from the active policy in one batched generate call (a seed derived from the intent id and
the attempt, so a re-run samples the same posts). Each sample passes the guards or is rejected with
its reason: `empty`, `copy` (of one of the face's training posts), `offensive`, `repeat` (of one of
the face's own earlier published posts, by the same n-gram/embedding test as copies), `duplicate`
(the same words as an earlier sample of the batch) and `stale` (the diversity floor on what is
published: fewer than `OnlineConfig.min_novelty` of its word bigrams are new against the face's last
`novelty_window` posts; the most novel sample of a batch is always kept, so the floor never skips a
slot). A window of published posts has a distinct-2 at least `min_novelty` whenever the floor held
for each of them (distinct-2 is the length-weighted mean of each text's novelty against the texts
before it): a reward model that likes one phrase can pick it, but not post by post. The kept
samples are the slot's candidates. One of them is chosen; it becomes the slot's post (status
`publishing`, then `published`) and every other kept one a `candidate` row pointing at it (`candidate_of`). Each row
carries the reward model's prediction (`predicted_reward`, `predicted_reward_std`, `reward_model_id`)
and `selection_probability`, the chance that the rule picks it. If every sample of a batch is
rejected, another batch is drawn, up to `max_generation_attempts`.

How the choice works (`OnlineConfig.selection`), on the members of the face's reward model (a
bootstrap ensemble, crowdtune.training.rl.predictor) evaluated on the candidates ((members, n)):

- `thompson` (default): Thompson sampling over the ensemble. One member is drawn (seeded from the
  intent id), and its best candidate is published. A member is one plausible reward function given
  the channel's data, so a candidate that only some members like still gets published now and then:
  the rule explores where the model is unsure, and exploits where its members agree. The selection
  probability of candidate i is exact: the share of members whose argmax is i.
- `greedy`: the candidate with the best mean prediction (probability 1; never explores).
- `uniform`: any kept candidate, each with probability 1/kept. This is also what `thompson` and
  `greedy` do while the face has no reward model yet, or when it cannot be loaded or applied (an
  alert says why); then predictions stay empty.

What the update does with them: the `guided` algorithm (crowdtune.training.rl.guided) trains on each
published post together with its candidates, re-encoded from their stored token ids, as one RLOO group
with a doubly-robust reward estimate (the stored predictions, plus the published one's real-reward
correction divided by its selection probability) and importance weights against the stored
log-probabilities; its docstring says under which assumptions that is unbiased. The other algorithms
learn from the published post alone, as if it had been sampled alone.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np

from crowdtune.states import PostStatus
from crowdtune.training.generation import (
    GenerationConfig,
    Sample,
    filter_samples,
    sample,
    trim_unfinished_sentence,
)
from crowdtune.training.guards import CopyIndex, bigram_set, novelty, words

log = logging.getLogger(__name__)

def derived_seed(*parts) -> int:
    """A 32-bit seed from the parts (the same parts give the same seed on every machine; with one
    candidate, (seed, intent id, attempt) samples the very post single-sample publishing did)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "little")


# --------------------------------------------------------------------------------------------
# Guards


@dataclass
class GuardIndexes:
    """What a sample must not copy: the face's training posts and its own earlier published posts;
    `recent`: the word bigrams of its last published posts (the diversity floor's reference)."""

    training: CopyIndex | None
    published: CopyIndex | None
    recent: set[tuple[str, ...]] = field(default_factory=set)


def guard_indexes(training_texts: list[str], published_texts: list[str],
                  embedding_threshold: float | None, novelty_window: int = 0) -> GuardIndexes:
    """Copy indexes over both sets of texts (None for an empty set), and the bigrams of the last
    `novelty_window` published texts (`published_texts` oldest first)."""
    def index(texts):
        return CopyIndex(texts, embedding_threshold=embedding_threshold) if texts else None

    recent = bigram_set(published_texts[-novelty_window:]) if novelty_window > 0 else set()
    return GuardIndexes(index(training_texts), index(published_texts), recent)


def guard_samples(samples: list[Sample], tokenizer, gen: GenerationConfig, guards: GuardIndexes,
                  min_novelty: float = 0.0) -> list[Sample]:
    """The generation filters (trim, empty, copy of a training post, offensive), then three best-of-N ones:
    a repeat of the face's own published posts, a duplicate of an earlier sample of the batch, and the
    diversity floor (`stale`: novelty against `guards.recent` below `min_novelty`, but never all).

    Out: the (trimmed) samples in batch order, each with `rejected` None (kept) or its reason."""
    if gen.trim_unfinished:
        samples = [trim_unfinished_sentence(s, tokenizer) for s in samples]
    # filter_samples marks the very objects it is given, so `samples` keeps the batch order
    kept = filter_samples(samples, tokenizer, gen.model_copy(update={"trim_unfinished": False}),
                          copy_index=guards.training).kept
    if gen.drop_copies and guards.published is not None and kept:
        for s, repeated in zip(kept, guards.published.copy_flags([s.text for s in kept]), strict=True):
            if repeated:
                s.rejected = "repeat"
    seen: set[tuple[str, ...]] = set()
    for s in samples:
        if s.rejected is None:
            key = tuple(words(s.text))
            if key in seen:
                s.rejected = "duplicate"
            seen.add(key)
    kept = [s for s in samples if s.rejected is None]
    if min_novelty > 0 and guards.recent and kept:
        scores = [novelty(s.text, guards.recent) for s in kept]
        most_novel = kept[int(np.argmax(scores))]  # the floor gives way rather than skip the slot
        for s, score in zip(kept, scores, strict=True):
            if score < min_novelty and s is not most_novel:
                s.rejected = "stale"
    return samples


# --------------------------------------------------------------------------------------------
# The reward model and the choice


@dataclass
class SlotRewardModel:
    """The face's newest reward model, loaded (`predictor`), or None with the reason in `problem`
    (None too before the face's first fit: that is no problem)."""

    predictor: object | None = None
    model_id: str | None = None
    problem: str | None = None

    def members(self, texts: list[str], hour: float | None) -> np.ndarray | None:
        """(members, len(texts)) each ensemble member's predicted reward, or None when there is no model
        or it cannot be applied (then `problem` says why)."""
        if self.predictor is None or not texts:
            return None
        from crowdtune.embeddings import cached_embed

        try:
            vectors = cached_embed(texts, keep=False)  # samples: seen once, not kept in the shared cache
            return np.asarray(self.predictor.member_predictions(vectors, texts, [hour] * len(texts)))
        except Exception as exc:  # noqa: BLE001 - a broken model must not stop publishing
            self.problem = f"reward model {self.model_id} could not predict: {type(exc).__name__}: {exc}"
            log.warning(self.problem)
            self.predictor = None
            return None


def load_reward_model(record: dict | None) -> SlotRewardModel:
    """Load the model of a `reward_models` row (reads.latest_reward_model); never raises."""
    if not record:
        return SlotRewardModel()
    from crowdtune.training.rl.predictor import load_predictor

    try:
        return SlotRewardModel(load_predictor(record["artifact_url"]), record["model_id"])
    except Exception as exc:  # noqa: BLE001 - a missing or corrupt artifact: choose uniformly instead
        problem = f"reward model {record.get('model_id')} did not load from {record.get('artifact_url')}: " \
                  f"{type(exc).__name__}: {exc}"
        log.warning(problem)
        return SlotRewardModel(None, None, problem)


@dataclass
class Choice:
    """index: the candidate to publish; probabilities: (count,) the chance the rule picks each, summing
    to 1; rule: the rule applied (`uniform` when there were no predictions)."""

    index: int
    probabilities: np.ndarray
    rule: str


def choose(count: int, rule: str, seed: int, members: np.ndarray | None = None) -> Choice:
    """Choose one of `count` candidates by `rule` (module docstring) on `members` ((members, count)
    predicted rewards, or None: uniform). Deterministic given the seed."""
    rng = np.random.default_rng(seed)
    if members is None or rule == "uniform":
        return Choice(int(rng.integers(count)), np.full(count, 1.0 / count), "uniform")
    if rule == "greedy":
        best = int(np.argmax(members.mean(axis=0)))
        return Choice(best, np.eye(count)[best], "greedy")
    winners = members.argmax(axis=1)                                 # (members,) each member's favourite
    probabilities = np.bincount(winners, minlength=count) / len(winners)
    return Choice(int(winners[rng.integers(len(winners))]), probabilities, "thompson")


# --------------------------------------------------------------------------------------------
# One slot


@dataclass(frozen=True)
class SlotIds:
    """Who a slot's rows belong to: intent_id `<run_id>:<slot>`, post_id `<run_id>:p<slot>`."""

    face_id: str
    run_id: str
    slot: int

    @property
    def intent_id(self) -> str:
        return f"{self.run_id}:{self.slot}"

    @property
    def post_id(self) -> str:
        return f"{self.run_id}:p{self.slot}"


@dataclass
class SlotDraft:
    """A slot's rows before anything is written.

    rejected: posts rows of the rejected samples (status `rejected`, with the reason)
    chosen: the slot's post (status `publishing`, with its intent id), None if every sample was rejected
    candidates: the other kept samples (status `candidate`, candidate_of = chosen's post_id)
    rule: the selection rule applied; reward_model_problem: why the reward model was not used, if it failed
    """

    rejected: list[dict] = field(default_factory=list)
    chosen: dict | None = None
    candidates: list[dict] = field(default_factory=list)
    rule: str | None = None
    reward_model_problem: str | None = None


def draft_slot(model, tokenizer, cfg, ids: SlotIds, *, guards: GuardIndexes, reward_model: SlotRewardModel,
               version_id: str | None, hour: float | None) -> SlotDraft:
    """Sample, guard and choose the slot's post (module docstring); pure apart from the model calls.

    In: the policy (model, tokenizer), the run's OnlineConfig `cfg`, the slot's ids, the copy guards,
    the face's reward model, the policy's version id (None: the base model) and the hour of day (UTC)
    the post goes out at (a reward-model feature). Out: the rows to record (SlotDraft).
    """
    sampling = cfg.sampling()
    prompt = cfg.prompts[ids.slot % len(cfg.prompts)] if cfg.prompts else ""
    common = {"face_id": ids.face_id, "origin": "generated", "run_id": ids.run_id, "publish_slot": ids.slot,
              "prompt": prompt, "model_version_id": version_id}
    draft = SlotDraft()
    for attempt in range(cfg.max_generation_attempts):
        gen = GenerationConfig(**{**sampling, "num_samples": cfg.candidates,
                                  "seed": derived_seed(cfg.seed, ids.intent_id, attempt)})
        # 1) one batched sampling call for all candidates, then the guards
        drawn = sample(model, tokenizer, gen, prompts=[prompt] * cfg.candidates if prompt else None)
        guarded = guard_samples(drawn, tokenizer, gen, guards, cfg.min_novelty)
        rows = [{**common, "text": s.text, "sampling": gen.model_dump(mode="json"), "token_ids": s.token_ids,
                 "token_logprobs": s.logprobs, "logprob": float(sum(s.logprobs))} for s in guarded]
        draft.rejected += [{**row, "post_id": f"{ids.post_id}r{attempt}s{i}", "status": PostStatus.REJECTED,
                            "reject_reason": s.rejected}
                           for i, (s, row) in enumerate(zip(guarded, rows, strict=True)) if s.rejected]
        kept = [i for i, s in enumerate(guarded) if s.rejected is None]
        if not kept:
            continue
        # 2) predictions of every kept candidate, and the exploring choice among them
        members = reward_model.members([guarded[i].text for i in kept], hour)
        choice = choose(len(kept), cfg.selection, derived_seed(cfg.seed, ids.intent_id, attempt, "choice"), members)
        mean, std = (members.mean(axis=0), members.std(axis=0)) if members is not None else (None, None)
        # 3) the rows: the chosen one is the slot's post, the others point at it
        for k, i in enumerate(kept):
            row = {**rows[i], "predicted_reward": None if mean is None else float(mean[k]),
                   "predicted_reward_std": None if std is None else float(std[k]),
                   "selection_probability": float(choice.probabilities[k]),
                   "reward_model_id": reward_model.model_id if members is not None else None}
            if k == choice.index:
                draft.chosen = {**row, "post_id": ids.post_id, "status": PostStatus.PUBLISHING,
                                "intent_id": ids.intent_id}
            else:
                draft.candidates.append({**row, "post_id": f"{ids.post_id}c{i}", "status": PostStatus.CANDIDATE,
                                         "candidate_of": ids.post_id})
        draft.rule = choice.rule
        break
    draft.reward_model_problem = reward_model.problem
    return draft
