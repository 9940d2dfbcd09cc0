"""Will this Redis keep what Crowdtune gives it? Checked when `crowdtune up` and each worker start.

Until the store worker applies them, store writes exist only in Redis, and so does the online
loop's schedule. So Redis must persist (an append-only file: `appendonly yes`) and must never
delete a key to make room (`maxmemory-policy noeviction`: with any other policy, a full server
evicts keys, queued writes among them). The embedded server is started that way; a server named by
REDIS_URL is asked, through INFO (which most managed services allow), else CONFIG GET (which many
disable). What cannot be read is said plainly: Crowdtune goes on, the operator checks by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis


@dataclass(frozen=True)
class RedisWarning:
    """One reason this Redis may lose Crowdtune's data, and what to do about it."""

    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.problem}\n  Fix: {self.fix}"


def _from_info(conn: redis.Redis) -> dict[str, str]:
    """appendonly and maxmemory-policy as INFO reports them ({} if INFO is refused)."""
    found: dict[str, str] = {}
    try:
        persistence = conn.info("persistence")
        memory = conn.info("memory")
    except redis.ResponseError:  # ERR unknown command (renamed away) or NOPERM (an ACL): try CONFIG
        return found
    if "aof_enabled" in persistence:
        found["appendonly"] = "yes" if str(persistence["aof_enabled"]) == "1" else "no"
    if "maxmemory_policy" in memory:
        found["maxmemory-policy"] = str(memory["maxmemory_policy"])
    if "maxmemory" in memory:
        found["maxmemory"] = str(memory["maxmemory"])
    return found


def _from_config(conn: redis.Redis, names: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in names:
        try:
            found.update({k: str(v) for k, v in conn.config_get(name).items() if k == name})
        except redis.ResponseError:
            pass
    return found


def durability_warnings(conn: redis.Redis, where: str) -> list[RedisWarning]:
    """What may make the Redis behind `conn` (shown as `where`, password masked) lose queued work:
    no append-only file, an evicting memory policy, or settings it would not tell. [] when it is safe."""
    wanted = ["appendonly", "maxmemory-policy"]
    found = _from_info(conn)
    missing = [name for name in wanted if name not in found]
    if missing:
        found.update(_from_config(conn, missing + ["maxmemory"]))
    warnings = []
    if found.get("appendonly") == "no":
        warnings.append(RedisWarning(
            f"Redis at {where} does not persist its data (appendonly no): a restart loses the store writes "
            "waiting in it and the online schedule.",
            "Turn on the append-only file: `CONFIG SET appendonly yes` and `appendonly yes` in redis.conf "
            "(on a managed service, enable AOF persistence in its console), or unset REDIS_URL to use the "
            "embedded server, which persists."))
    policy = found.get("maxmemory-policy")
    if policy is not None and policy != "noeviction":
        limit = found.get("maxmemory")
        when = " once it reaches maxmemory" if limit not in (None, "0") else " if a maxmemory limit is set"
        warnings.append(RedisWarning(
            f"Redis at {where} may delete keys to make room (maxmemory-policy {policy}){when}: queued store "
            "writes and scheduled jobs would vanish.",
            "Set `CONFIG SET maxmemory-policy noeviction` and `maxmemory-policy noeviction` in redis.conf "
            "(on a managed service, in its parameter group or settings); a full Redis then refuses new work "
            "instead of losing old work."))
    unknown = [name for name in wanted if name not in found]
    if unknown:
        warnings.append(RedisWarning(
            f"Could not check whether Redis at {where} persists and never evicts: it refused INFO and CONFIG "
            f"for {', '.join(unknown)} (managed services often disable CONFIG).",
            "Check in your provider's console that the server has appendonly yes (AOF persistence) and "
            "maxmemory-policy noeviction; Crowdtune goes on either way."))
    return warnings
