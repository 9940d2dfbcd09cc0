"""Every lifetime, lock and Redis key name Crowdtune uses, in one place (as RQ's rq/defaults.py).

Redis holds only queues, schedules, locks and flags; everything that must survive lives in the
store. Each lifetime below is as long as its reader needs and no longer, so a lost process never
leaves a key behind for good.
"""

KEY_PREFIX = "crowdtune:"

# --- RQ job lifetimes (seconds; crowdtune.runtime.queues.job_lifetimes picks them by JobKind) ---------
# The lifetimes of work jobs and of store writes are settings (result_ttl_seconds, failure_ttl_seconds,
# store_result_ttl_seconds), since what a user wants to look back at varies; these have no reason to.
CONTROL_RESULT_TTL = 600             # ticks, reaction reads, reconciles: read only by a test or `rq info`, soon
STORE_READ_FAILURE_TTL = 3600        # a failed store read: its job already reported why; kept to be looked at
STORE_READ_RESULT_TTL = 60           # a store read's answer (rows): its job takes it within a second and deletes it
JOB_TIMEOUT = 1800                   # a publishing or other online job that runs longer is stuck
TICK_TIMEOUT = 600                   # a controller tick (reads the store, enqueues, schedules)
COLLECT_TIMEOUT = 600                # one reaction snapshot of one post
IMPORT_TIMEOUT = 6 * 3600            # a face's whole history
HEALTH_CHECK_TIMEOUT = 300           # a face's Check connection: a few requests, each with its retries
GENERATE_TIMEOUT = 3600              # a Playground batch of samples
EXPORT_TIMEOUT = 3600                # a version exported (merging loads the base model) and pushed
UPDATE_TIMEOUT = 24 * 3600           # one RL update on the train queue
EMBED_CHUNK_TIMEOUT = 1800           # one chunk of a face's post embeddings (~10 s on a free core)
REWARD_FIT_TIMEOUT = 3 * 3600        # a face's reward model: the first fit embeds its history (~20 ms a post)
TRAINING_TIMEOUT = 30 * 24 * 3600    # an offline run: long runs on CPU are normal, stop flags end them

# --- Keys, their lifetimes and locks -------------------------------------------------------------
STOP_KEY = KEY_PREFIX + "stop:{run_id}"             # a run's stop request (read between steps)
STOP_TTL = 7 * 24 * 3600                            # a run stopped while queued still sees it for a week
TICK_KEY = KEY_PREFIX + "tick:{face_id}"            # the face's next scheduled tick: job id and time
TICK_KEY_TTL = 7 * 24 * 3600                        # longer than any controller sleeps
TICK_LOCK_KEY = KEY_PREFIX + "tick-lock:{face_id}"  # one tick per face at a time
TICK_LOCK_SECONDS = 300                             # a killed tick's lock frees itself after this
INTENT_LOCK_KEY = KEY_PREFIX + "intent:{intent_id}"  # one attempt at a publishing intent at a time
INTENT_LOCK_SECONDS = 900                           # longer than a publish attempt, shorter than its retry
RECONCILE_KEY = KEY_PREFIX + "reconcile"            # several reconcile requests within this window make one
RECONCILE_DEBOUNCE_SECONDS = 10
STORE_LEASE_KEY = KEY_PREFIX + "store-writer"       # held by the single store writer, renewed every third
STORE_LEASE_SECONDS = 30
STORE_CHANGES_KEY = KEY_PREFIX + "store-changes"    # bumped once per applied batch: pages read again only then
STORE_TABLE_CHANGES_KEY = KEY_PREFIX + "store-changes:tables"  # hash: table -> batches that touched it
RATE_LIMIT_PREFIX = KEY_PREFIX + "rate:"            # token buckets of the networks' limits (faces.limits)
STORE_HELD_KEY = KEY_PREFIX + "store-held"          # "held since": a write waits on a file another program holds
STORE_HELD_TTL = 60                                 # refreshed every few s while it waits: a killed writer's note ends
STORE_HELD_AFTER_SECONDS = 3.0                      # a shorter wait is readers taking turns, not a held file
# A worker's own figures, written into its RQ worker hash with each heartbeat (the System page reads them)
WORKER_CPU_FIELD = "crowdtune_cpu_percent"        # the worker and its job processes, % of one core since the last beat
WORKER_MEMORY_FIELD = "crowdtune_rss_bytes"       # their resident memory
