"""The house rules, checked on the source: no import circles, one door between app and workers.

Every `import` counts, also those inside functions (a circle hidden in a function-local import is
still a circle: it only fails later, at run time).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("crowdtune", "jobs", "faces", "pages")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    found = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    found["app"] = ROOT / "app.py"
    return found


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports anywhere in its body (resolved to modules, not names)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                # `from crowdtune.runtime import defaults` names a module; `from x import y` a name of x
                full = f"{node.module}.{alias.name}"
                names.add(full if full in modules else node.module)
    return {name for name in names if name in modules}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_circle_hidden_behind_others():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_module_of_the_project_imports_itself_through_a_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_nothing_under_crowdtune_imports_the_jobs_package():
    offenders = {name: sorted(i for i in deps if i == "jobs" or i.startswith("jobs."))
                 for name, deps in import_graph().items() if name.startswith("crowdtune")}
    offenders = {name: deps for name, deps in offenders.items() if deps and name != "crowdtune.runtime.workers"}
    # The worker's preload walks the jobs package by name (pkgutil), which is not an import of a job module.
    assert offenders == {}


def test_the_dashboard_helpers_are_used_only_by_the_app_and_its_pages():
    users = {name for name, deps in import_graph().items()
             if any(d == "crowdtune.dashboard" or d.startswith("crowdtune.dashboard.") for d in deps)}
    assert {u for u in users
            if not (u == "app" or u.startswith("pages.") or u.startswith("crowdtune.dashboard"))} == set()


def test_faces_know_nothing_of_the_store_the_queues_or_training():
    graph = import_graph()
    forbidden = ("crowdtune.store", "crowdtune.runtime", "crowdtune.online", "crowdtune.training", "jobs")
    offenders = {name: sorted(d for d in deps if d.startswith(forbidden))
                 for name, deps in graph.items() if name.startswith("faces.")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_test_harness_is_imported_by_tests_and_benchmarks_only():
    users = {name for name, deps in import_graph().items()
             if any(d == "crowdtune.testing" or d.startswith("crowdtune.testing.") for d in deps)}
    assert {u for u in users if not u.startswith("crowdtune.testing")} == set()


def test_benchmarks_never_import_tests_nor_patch_sys_modules():
    offenders = {}
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        bad = sorted(n for n in names if n == "tests" or n.startswith("tests."))
        if "sys.modules" in ast.unparse(tree):
            bad.append("sys.modules")
        if bad:
            offenders[path.name] = bad
    assert offenders == {}


def test_the_top_of_crowdtune_holds_at_most_ten_modules_and_the_online_jobs_stay_thin():
    top = [p.name for p in (ROOT / "crowdtune").glob("*.py")]
    assert len(top) <= 10, sorted(top)
    assert len((ROOT / "jobs" / "online.py").read_text().splitlines()) < 400



def test_a_failed_jobs_error_is_read_with_its_problem_never_as_the_tracebacks_last_line():
    # A CrowdtuneError prints as problem, newline, "Fix: ...": the last line alone is a fix without its problem.
    # crowdtune.errors.traceback_message keeps both; the worker's audit keeps the traceback's whole tail.
    allowed = {"crowdtune.errors", "crowdtune.runtime.workers"}
    offenders = [f"{name}:{number}" for name, path in project_modules().items() if name not in allowed
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if "exc_string" in line and "traceback_message(" not in line]
    assert offenders == []

# Every function name a queued job of an earlier version may carry: they must keep resolving.
QUEUED_BY_EARLIER_VERSIONS = [
    "jobs.online.tick", "jobs.online.publish_post", "jobs.online.collect_reactions", "jobs.online.rl_update",
    "jobs.online.reconcile", "jobs.offline.train_offline", "jobs.imports.import_history",
    "jobs.generate.sample_posts", "jobs.store.apply_write", "jobs.store.read_named",
    "jobs.system.probe_worker", "jobs.system.random_draws", "jobs.online.fit_reward_model",
    "jobs.embeddings.embed_posts", "jobs.system.prepare_face",
]


@pytest.mark.parametrize("func_name", QUEUED_BY_EARLIER_VERSIONS)
def test_job_names_queued_by_earlier_versions_still_resolve_to_functions(redis_conn, func_name):
    job = Job.create(func_name, connection=redis_conn, serializer=JSONSerializer)
    assert callable(job.func) and f"{job.func.__module__}.{job.func.__name__}" == func_name


def test_a_job_enqueued_by_its_name_alone_runs_on_the_workers(settings, redis_conn, workers):
    from rq import Queue

    from crowdtune.store.writer import initialise
    from crowdtune.testing.processes import wait_for

    initialise(settings.store_path)
    workers.start_together(("--store",), ("--queues", "control,default"), conn=redis_conn)
    # As an earlier version (or another client) would: plain RQ, the function only by its name.
    probe = Queue("default", connection=redis_conn, serializer=JSONSerializer).enqueue("jobs.system.probe_worker")
    reconcile = Queue("store", connection=redis_conn, serializer=JSONSerializer).enqueue("jobs.online.reconcile")
    for job in (probe, reconcile):
        wait_for(lambda job=job: job.get_status(refresh=True) in ("finished", "failed"), timeout=60,
                 message=job.func_name)
    assert probe.get_status() == "finished" and probe.latest_result().return_value["torch"].startswith("2.")
    assert reconcile.get_status() == "finished" and reconcile.latest_result().return_value == []


def test_every_page_starts_with_the_check_that_app_py_ran_first():
    # A page served without app.py would skip the login gate (see page_setup.through_app).
    for path in sorted((ROOT / "pages").glob("*.py")):
        body = [node for node in ast.parse(path.read_text()).body
                if not isinstance(node, (ast.Import, ast.ImportFrom))
                and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]  # docstring
        first = body[0]
        assert (isinstance(first, ast.Expr) and isinstance(first.value, ast.Call)
                and getattr(first.value.func, "id", None) == "through_app"), path.name
