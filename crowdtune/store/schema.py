"""The store's schema as versioned migrations. docs/SCHEMA.md documents every table for ad-hoc queries.

Migration N is applied once, in order, by the single writer; `schema_version` records it. A file
with a version above `SCHEMA_VERSION` was written by a newer Crowdtune and is refused, not touched.
All timestamps are UTC without a time zone.
"""

from crowdtune.store import latest_reactions, rollup

MIGRATIONS: list[str] = [
    # 1: the foundation
    """
    CREATE TABLE schema_version (
        version INTEGER PRIMARY KEY,
        applied_at TIMESTAMP NOT NULL DEFAULT (now()::TIMESTAMP)
    );
    CREATE TABLE applied_writes (
        write_id VARCHAR PRIMARY KEY,
        applied_at TIMESTAMP NOT NULL DEFAULT (now()::TIMESTAMP),
        row_count INTEGER
    );
    CREATE TABLE faces (
        face_id VARCHAR PRIMARY KEY,
        kind VARCHAR NOT NULL,
        config JSON,
        active_version_id VARCHAR,
        created_at TIMESTAMP DEFAULT (now()::TIMESTAMP),
        updated_at TIMESTAMP DEFAULT (now()::TIMESTAMP)
    );
    CREATE TABLE posts (
        post_id VARCHAR PRIMARY KEY,
        face_id VARCHAR NOT NULL,
        origin VARCHAR NOT NULL,
        status VARCHAR NOT NULL,
        platform_id VARCHAR,
        text VARCHAR NOT NULL,
        url VARCHAR,
        author VARCHAR,
        created_at TIMESTAMP,
        published_at TIMESTAMP,
        audience_size BIGINT,
        model_version_id VARCHAR,
        run_id VARCHAR,
        prompt VARCHAR,
        sampling JSON,
        token_ids INTEGER[],
        token_logprobs DOUBLE[],
        logprob DOUBLE,
        reject_reason VARCHAR,
        score DOUBLE,
        scored_at TIMESTAMP,
        inserted_at TIMESTAMP DEFAULT (now()::TIMESTAMP),
        updated_at TIMESTAMP DEFAULT (now()::TIMESTAMP)
    );
    CREATE TABLE reaction_snapshots (
        post_id VARCHAR NOT NULL,
        observed_at TIMESTAMP NOT NULL,
        kind VARCHAR NOT NULL,
        count BIGINT NOT NULL,
        age_seconds DOUBLE,
        audience_size BIGINT,
        PRIMARY KEY (post_id, observed_at, kind)
    );
    CREATE TABLE runs (
        run_id VARCHAR PRIMARY KEY,
        kind VARCHAR NOT NULL,
        face_id VARCHAR,
        status VARCHAR NOT NULL,
        config JSON,
        base_model VARCHAR,
        parent_version_id VARCHAR,
        job_id VARCHAR,
        started_at TIMESTAMP,
        ended_at TIMESTAMP,
        error VARCHAR,
        updated_at TIMESTAMP DEFAULT (now()::TIMESTAMP)
    );
    CREATE TABLE metrics (
        run_id VARCHAR NOT NULL,
        name VARCHAR NOT NULL,
        step BIGINT NOT NULL,
        value DOUBLE,
        recorded_at TIMESTAMP NOT NULL DEFAULT (now()::TIMESTAMP),
        PRIMARY KEY (run_id, name, step)
    );
    CREATE TABLE model_versions (
        version_id VARCHAR PRIMARY KEY,
        run_id VARCHAR,
        parent_version_id VARCHAR,
        base_model VARCHAR NOT NULL,
        artifact_url VARCHAR NOT NULL,
        step BIGINT,
        metrics JSON,
        note VARCHAR,
        created_at TIMESTAMP DEFAULT (now()::TIMESTAMP)
    );
    CREATE TABLE jobs (
        job_id VARCHAR PRIMARY KEY,
        func VARCHAR,
        queue VARCHAR,
        status VARCHAR,
        description VARCHAR,
        worker VARCHAR,
        enqueued_at TIMESTAMP,
        started_at TIMESTAMP,
        ended_at TIMESTAMP,
        error VARCHAR,
        result JSON
    );
    CREATE TABLE alerts (
        alert_id VARCHAR PRIMARY KEY,
        level VARCHAR NOT NULL,
        source VARCHAR NOT NULL,
        message VARCHAR NOT NULL,
        created_at TIMESTAMP DEFAULT (now()::TIMESTAMP),
        resolved_at TIMESTAMP
    );
    CREATE TABLE state (
        key VARCHAR PRIMARY KEY,
        value JSON,
        updated_at TIMESTAMP DEFAULT (now()::TIMESTAMP)
    );
    """,
    # 2: a scorer per face (how its reactions become a score; see crowdtune.scoring.ScorerConfig)
    """
    ALTER TABLE faces ADD COLUMN scorer JSON;
    """,
    # 3: the online loop: its controller per face, publishing intents, RL updates (see crowdtune.online.controller)
    """
    ALTER TABLE posts ADD COLUMN intent_id VARCHAR;
    ALTER TABLE posts ADD COLUMN publish_slot INTEGER;
    ALTER TABLE posts ADD COLUMN update_id VARCHAR;
    CREATE TABLE controllers (
        face_id VARCHAR PRIMARY KEY,
        state VARCHAR NOT NULL,
        run_id VARCHAR,
        config JSON,
        started_at TIMESTAMP,
        publish_slot INTEGER DEFAULT 0,
        resolved_slot INTEGER DEFAULT -1,
        last_resolved_at TIMESTAMP,
        offline_run_id VARCHAR,
        updates_at_offline INTEGER DEFAULT 0,
        paused_reason VARCHAR,
        updated_at TIMESTAMP DEFAULT (now()::TIMESTAMP)
    );
    CREATE TABLE online_updates (
        update_id VARCHAR PRIMARY KEY,
        run_id VARCHAR NOT NULL,
        face_id VARCHAR NOT NULL,
        step INTEGER NOT NULL,
        status VARCHAR NOT NULL,
        post_ids JSON,
        parent_version_id VARCHAR,
        version_id VARCHAR,
        metrics JSON,
        paused BOOLEAN DEFAULT false,
        error VARCHAR,
        created_at TIMESTAMP DEFAULT (now()::TIMESTAMP),
        started_at TIMESTAMP,
        ended_at TIMESTAMP,
        updated_at TIMESTAMP DEFAULT (now()::TIMESTAMP)
    );
    """,
    # 4: the dashboard's fast paths, kept by the writer and backfilled here: metric series' summaries
    # and rollup (crowdtune.store.rollup), each post's latest reactions (crowdtune.store.latest_reactions);
    # and a lookup of a post's reaction snapshots by post
    rollup.TABLES_SQL + rollup.BACKFILL_SQL + latest_reactions.BACKFILL_SQL + """
    CREATE INDEX reaction_snapshots_post ON reaction_snapshots (post_id);
    """,
    # 5: learning from every reaction: the reward model fitted per face on its history and its scored
    # posts (crowdtune.training.rl.predictor), and the candidates of a best-of-N slot with what the
    # reward model predicted for each and how likely the exploring rule was to pick it
    """
    ALTER TABLE posts ADD COLUMN predicted_reward DOUBLE;
    ALTER TABLE posts ADD COLUMN predicted_reward_std DOUBLE;
    ALTER TABLE posts ADD COLUMN selection_probability DOUBLE;
    ALTER TABLE posts ADD COLUMN candidate_of VARCHAR;
    ALTER TABLE posts ADD COLUMN reward_model_id VARCHAR;
    CREATE TABLE reward_models (
        model_id VARCHAR PRIMARY KEY,
        face_id VARCHAR NOT NULL,
        fitted_at TIMESTAMP,
        artifact_url VARCHAR,
        history_posts INTEGER,
        generated_posts INTEGER,
        validation_spearman DOUBLE,
        validation_posts INTEGER,
        figures JSON,
        config JSON,
        updated_at TIMESTAMP DEFAULT (now()::TIMESTAMP)
    );
    """,
    # 6: review before posting (crowdtune.online.review): one decision per publishing intent, and on each
    # post the decision that let it out (an `edit` is never an on-policy RL sample)
    """
    ALTER TABLE posts ADD COLUMN review VARCHAR;
    CREATE TABLE review_decisions (
        decision_id VARCHAR PRIMARY KEY,
        face_id VARCHAR NOT NULL,
        run_id VARCHAR,
        publish_slot INTEGER,
        post_id VARCHAR NOT NULL,
        candidate_id VARCHAR,
        action VARCHAR NOT NULL,
        decided_by VARCHAR NOT NULL,
        decided_at TIMESTAMP NOT NULL,
        original_text VARCHAR,
        text VARCHAR,
        slot_drafted_at TIMESTAMP
    );
    """,
    # 7: the posts an offline run sampled at each evaluation (its guards measured them), for the Models
    # page's gallery of a version's posts over time
    """
    CREATE TABLE evaluation_samples (
        run_id VARCHAR NOT NULL,
        step BIGINT NOT NULL,
        sample INTEGER NOT NULL,
        text VARCHAR NOT NULL,
        recorded_at TIMESTAMP NOT NULL DEFAULT (now()::TIMESTAMP),
        PRIMARY KEY (run_id, step, sample)
    );
    """,
    # 8: an operator dismissed an alert as it read then (crowdtune.actions.dismiss_alerts): hidden until it is
    # raised with another message. Failed jobs are dismissed the same way, as alert `job:<job_id>`.
    """
    CREATE TABLE alert_dismissals (
        alert_id VARCHAR NOT NULL,
        message VARCHAR NOT NULL,
        dismissed_by VARCHAR NOT NULL,
        dismissed_at TIMESTAMP NOT NULL,
        PRIMARY KEY (alert_id, message)
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)

# Primary keys of the tables producers may write, for upserts and for checking writes early.
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "faces": ("face_id",),
    "posts": ("post_id",),
    "reaction_snapshots": ("post_id", "observed_at", "kind"),
    "runs": ("run_id",),
    "metrics": ("run_id", "name", "step"),
    "model_versions": ("version_id",),
    "jobs": ("job_id",),
    "alerts": ("alert_id",),
    "state": ("key",),
    "controllers": ("face_id",),
    "online_updates": ("update_id",),
    "reward_models": ("model_id",),
    "review_decisions": ("decision_id",),
    "evaluation_samples": ("run_id", "step", "sample"),
    "alert_dismissals": ("alert_id", "message"),
}
