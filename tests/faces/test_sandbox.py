"""The sandbox network and its simulated audiences, on real tweets and real embeddings."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from crowdtune.embeddings import texts_embedded
from faces.audience import AudienceConfig, FittedRidge, cache_path, fitted_ridge, likes_training_data, load_audience
from faces.sandbox import SandboxConfig, SandboxFace

T0 = datetime(2026, 11, 1, 12, 0, 0)
HOUR = timedelta(hours=1)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session", autouse=True)
def embedding_cache_folder(tmp_path_factory):
    """The shared embedding cache (under <data_dir>/artifacts) in a temp folder, never in ./data."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CROWDTUNE_DATA_DIR", str(tmp_path_factory.mktemp("data")))
        patch.delenv("CROWDTUNE_ARTIFACTS_URL", raising=False)
        yield


def audience_cache(request):
    """pytest's cache folder keeps audience fits between sessions; a temp folder when it is off."""
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return request.getfixturevalue("tmp_path_factory").mktemp("crowdtune-audiences")
    return cache.mkdir("crowdtune-audiences")


@pytest.fixture(scope="session")
def likes_config(request) -> AudienceConfig:
    # Fitting embeds 1,500 tweets (~20 s); pytest's cache folder keeps the fit between sessions.
    cache_dir = audience_cache(request)
    config = AudienceConfig(kind="likes", cache_dir=cache_dir, fit_max_posts=1500)
    load_audience(config)
    return config


def sandbox(tmp_path, audience: AudienceConfig, clock_at: datetime = T0, **settings) -> SandboxFace:
    config = SandboxConfig(state_url=str(tmp_path / "sandbox"), audience=audience, **settings)
    return SandboxFace(config, clock=lambda: clock_at)


def shuffle_words(text: str, rng: random.Random) -> str:
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def test_likes_audience_fit_is_cached_and_predicts_held_out_likes(likes_config):
    path = cache_path(likes_config)
    assert path.is_file()
    started = time.monotonic()
    ridge = fitted_ridge(likes_config)
    assert time.monotonic() - started < 0.5  # loaded, not refitted
    assert isinstance(ridge, FittedRidge) and ridge.coef.shape == (384,)
    assert ridge.n_train + ridge.n_holdout == 1500
    assert ridge.holdout_spearman > 0.45, ridge.holdout_spearman


def test_likes_audience_prefers_real_tweets_to_word_shuffled_controls(likes_config):
    texts, _ = likes_training_data(likes_config)
    real = [t for t in random.Random(1).sample(texts, 400) if len(t.split()) >= 6][:150]
    rng = random.Random(2)
    controls = [shuffle_words(t, rng) for t in real]
    audience = load_audience(likes_config)
    real_appeal = audience.log_appeal(real)
    control_appeal = audience.log_appeal(controls)
    assert real_appeal.mean() > control_appeal.mean() + 0.03
    assert (real_appeal > control_appeal).mean() > 0.6
    # Reproducible: the same texts get the same appeal again (up to float rounding: batches pad differently).
    assert np.allclose(audience.log_appeal(real[:10]), real_appeal[:10], atol=1e-5)


def test_sandbox_counts_more_likes_for_real_posts_than_controls_reproducibly(tmp_path, likes_config):
    texts, _ = likes_training_data(likes_config)
    real = [t for t in random.Random(3).sample(texts, 200) if len(t.split()) >= 6][:40]
    controls = [shuffle_words(t, random.Random(4)) for t in real]

    def total_likes(folder: str, posts: list[str], seed: int) -> list[int]:
        publisher = sandbox(tmp_path / folder, likes_config, seed=seed)
        ids = [publisher.publish(text, intent_id=f"{folder}-{i}").platform_id for i, text in enumerate(posts)]
        reader = sandbox(tmp_path / folder, likes_config, clock_at=T0 + 24 * HOUR, seed=seed)
        return [reader.reactions(platform_id).counts["likes"] for platform_id in ids]

    real_likes = total_likes("real", real, seed=7)
    control_likes = total_likes("control", controls, seed=7)
    assert sum(real_likes) > sum(control_likes)
    assert total_likes("real-again", real, seed=7) == real_likes


def test_reactions_grow_with_age_never_decrease_and_repeat_exactly(tmp_path):
    audience = AudienceConfig(kind="sentiment")
    publisher = sandbox(tmp_path, audience, audience_size=5000, growth_tau_hours=3.0)
    post = publisher.publish("What a wonderful, happy day with great friends!", intent_id="grow")
    ages = [0, 0.5, 1, 2, 3, 6, 12, 24, 48]
    series = [sandbox(tmp_path, audience, clock_at=T0 + a * HOUR, audience_size=5000).reactions(post.platform_id)
              for a in ages]
    likes = [snapshot.counts["likes"] for snapshot in series]
    assert likes[0] == 0 and likes[-1] > 100
    assert all(a <= b for a, b in zip(likes, likes[1:], strict=False))
    for kind in ("reposts", "replies"):
        counts = [snapshot.counts[kind] for snapshot in series]
        assert all(a <= b for a, b in zip(counts, counts[1:], strict=False))
    # The growth curve: after one tau about 63% of the final count has arrived.
    assert 0.55 < likes[ages.index(3)] / likes[-1] < 0.7
    again = sandbox(tmp_path, audience, clock_at=T0 + 6 * HOUR, audience_size=5000).reactions(post.platform_id)
    assert again.counts == series[ages.index(6)].counts and again.post_age_seconds == 6 * 3600


def test_time_acceleration_makes_a_real_second_an_audience_hour(tmp_path):
    audience = AudienceConfig(kind="sentiment")
    publisher = sandbox(tmp_path, audience, time_acceleration=3600)
    post = publisher.publish("Good news everyone", intent_id="fast")
    slow = sandbox(tmp_path, audience, clock_at=T0 + timedelta(seconds=3), time_acceleration=1)
    fast = sandbox(tmp_path, audience, clock_at=T0 + timedelta(seconds=3), time_acceleration=3600)
    assert fast.reactions(post.platform_id).post_age_seconds == 3 * 3600
    assert slow.reactions(post.platform_id).counts["likes"] < fast.reactions(post.platform_id).counts["likes"]


def test_sentiment_audience_likes_cheerful_posts_more(tmp_path):
    face = sandbox(tmp_path, AudienceConfig(kind="sentiment"), audience_size=10000)
    cheerful = face.publish("I love this! Fantastic, wonderful news, thank you all!", intent_id="a")
    gloomy = face.publish("This is terrible, awful and sad. I hate it.", intent_id="b")
    later = sandbox(tmp_path, AudienceConfig(kind="sentiment"), clock_at=T0 + 24 * HOUR, audience_size=10000)
    cheerful_likes = later.reactions(cheerful.platform_id).counts["likes"]
    gloomy_likes = later.reactions(gloomy.platform_id).counts["likes"]
    assert cheerful_likes > 2 * gloomy_likes


def test_rules_audience_prefers_its_length_questions_and_topics_and_dislikes_links():
    from faces.audience import RulesAudience

    preferred = "What does the future hold for the workers and families of our town, and how can we help them grow?"
    long_shout = ("THIS is a VERY long post that goes on and on about nothing in particular, with many words and "
                  "no point at all, written in a hurry, and still going on and on and on for even more words "
                  "than before! https://t.co/x #news")
    thanks = "Thank you to all the farmers who came out today, a great crowd and a great day for our state!"
    appeal = load_audience(AudienceConfig(kind="rules")).log_appeal([preferred, long_shout, thanks])
    assert appeal[0] > appeal[2] > appeal[1]
    # Nonlinear in length: a bell around the preferred length, not "longer is better" or "shorter is better".
    by_length = RulesAudience().log_appeal([" ".join(["word"] * n) for n in (4, 18, 60)])
    assert by_length[1] > by_length[0] and by_length[1] > by_length[2]


def test_history_posts_are_real_posts_with_reactions_from_the_faces_own_audience(tmp_path):
    face = sandbox(tmp_path, AudienceConfig(kind="rules"), history_posts=300)
    face.publish("A post of the face itself", intent_id="own")
    posts = list(face.fetch_history())
    assert len(posts) == 301 and posts[0].platform_id.startswith("sbx-")
    history = posts[1:]
    assert all(p.platform_id.startswith("hist-") for p in history)
    assert [p.created_at for p in history] == sorted((p.created_at for p in history), reverse=True)
    assert history[0].created_at.year == 2018  # the newest bundled tweets
    # The likes follow the face's audience (up to its per-post noise), not the tweets' real likes.
    appeal = load_audience(AudienceConfig(kind="rules")).log_appeal([p.text for p in history])
    likes = np.asarray([p.reactions["likes"] for p in history])
    from scipy.stats import spearmanr

    assert spearmanr(appeal, likes).statistic > 0.8
    assert list(face.fetch_history(limit=1))[0].platform_id.startswith("sbx-")


def test_an_audience_from_a_file_reacts_in_place_of_the_configured_one(tmp_path):
    from faces.audience import load_audience_file

    source = tmp_path / "crowd.py"
    source.write_text("import numpy as np\n\nclass LovesCats:\n"
                      "    def log_appeal(self, texts):\n"
                      "        return np.array([2.0 if 'cat' in t else -2.0 for t in texts])\n")
    audience = load_audience_file(f"{source}:LovesCats")
    face = SandboxFace(SandboxConfig(state_url=str(tmp_path / "sandbox")), clock=lambda: T0, audience=audience)
    cat, dog = face.publish("my cat", intent_id="c"), face.publish("my dog", intent_id="d")
    later = SandboxFace(SandboxConfig(state_url=str(tmp_path / "sandbox")), clock=lambda: T0 + 24 * HOUR)
    assert later.reactions(cat.platform_id).counts["likes"] > 10 * later.reactions(dog.platform_id).counts["likes"]
    with pytest.raises(ValueError, match="no 'Missing'"):
        load_audience_file(f"{source}:Missing")


def test_human_audience_learns_the_hutto_ratings(request):
    config = AudienceConfig(kind="human", cache_dir=audience_cache(request), fit_max_posts=800)
    ridge = fitted_ridge(config)
    assert ridge.holdout_spearman > 0.5, ridge.holdout_spearman
    appeal = load_audience(config).log_appeal(["I am so happy and grateful today!",
                                               "Worst day ever, everything is broken."])
    assert appeal[0] > appeal[1]


def test_publish_is_one_json_file_per_post_and_idempotent_per_intent(tmp_path):
    face = sandbox(tmp_path, AudienceConfig(kind="sentiment"))
    first = face.publish("hello", intent_id="intent-1")
    again = face.publish("hello", intent_id="intent-1")
    other = face.publish("hello again", intent_id="intent-2")
    files = sorted((tmp_path / "sandbox").glob("*.json"))
    assert first == again and other.platform_id != first.platform_id and len(files) == 2
    stored = json.loads((tmp_path / "sandbox" / f"{first.platform_id}.json").read_text())
    assert stored["text"] == "hello" and stored["published_at"] == T0.isoformat()
    assert face.find_published("intent-1", "hello", since=T0 - HOUR) == first
    assert face.find_published("intent-3", "hello", since=T0 - HOUR) is None
    assert [p.text for p in face.fetch_history()] and {p.text for p in face.fetch_history()} == {"hello", "hello again"}


def test_the_health_check_writes_to_the_state_folder_and_names_the_simulated_audience(tmp_path):
    health = sandbox(tmp_path, AudienceConfig(kind="sentiment"), audience_size=750).health()
    assert health.ok and health.account == f"the simulated network at {tmp_path / 'sandbox'}"
    assert (health.audience, health.audience_label) == (750, "simulated followers")
    (tmp_path / "file").write_text("not a folder")
    broken = SandboxFace(SandboxConfig(state_url=str(tmp_path / "file" / "sandbox"))).health()
    assert not broken.ok and "fix state_url" in broken.message


def test_another_process_reads_the_same_reactions(tmp_path):
    face = sandbox(tmp_path, AudienceConfig(kind="sentiment"))
    post = face.publish("Shared across workers, lovely", intent_id="shared")
    here = sandbox(tmp_path, AudienceConfig(kind="sentiment"), clock_at=T0 + 5 * HOUR).reactions(post.platform_id)
    script = (
        "import json, datetime\n"
        "from faces.audience import AudienceConfig\n"
        "from faces.sandbox import SandboxConfig, SandboxFace\n"
        f"config = SandboxConfig(state_url={str(tmp_path / 'sandbox')!r}, audience=AudienceConfig(kind='sentiment'))\n"
        f"face = SandboxFace(config, clock=lambda: datetime.datetime.fromisoformat({(T0 + 5 * HOUR).isoformat()!r}))\n"
        f"print(json.dumps(face.reactions({post.platform_id!r}).counts))\n"
    )
    output = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert json.loads(output) == here.counts


def test_audience_is_fitted_at_set_up_with_progress_and_publishing_embeds_only_the_post(tmp_path, monkeypatch):
    monkeypatch.setenv("CROWDTUNE_DATA_DIR", str(tmp_path / "data"))  # an empty embedding cache
    config = AudienceConfig(kind="likes", cache_dir=tmp_path / "fits", fit_max_posts=200)
    face = sandbox(tmp_path, config)
    progress: list[tuple[int, int]] = []
    before = texts_embedded()
    face.prepare(lambda done, total: progress.append((done, total)))
    assert texts_embedded() - before == 200 and progress[-1] == (200, 200)
    # another fit of the same posts (other settings, or another machine) reuses their embeddings
    before = texts_embedded()
    refit = fitted_ridge(config.model_copy(update={"ridge_alpha": 1.0}))
    assert texts_embedded() == before and refit.n_train + refit.n_holdout == 200
    # publishing judges the new post only: nothing is fitted inside the publish job
    before = texts_embedded()
    face.publish("Great rally tonight in Ohio, thank you all!", intent_id="intent-1")
    assert texts_embedded() - before == 1
