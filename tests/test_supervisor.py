"""`crowdtune up` (what `make run` starts): everything comes up, and Ctrl-C leaves no process behind."""

import signal
import subprocess
import sys
import urllib.request

import psutil
from rq import Worker

from crowdtune.runtime.queues import connect
from crowdtune.testing.processes import free_port, wait_for


def health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as r:
            return r.read() == b"ok"
    except OSError:
        return False


def test_up_serves_the_app_with_live_workers_and_ctrl_c_stops_everything(settings, tmp_path):
    port = free_port()
    out = open(tmp_path / "up.log", "w+")
    up = subprocess.Popen([sys.executable, "-m", "crowdtune.cli", "up", "--port", str(port)],
                          stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: health(port), timeout=120, message="the app's health check")
        conn = connect(settings)
        wait_for(lambda: len(Worker.all(connection=conn)) == 1 + len(settings.worker_queues), timeout=120,
                 message="all workers to register")
        from crowdtune.store.reads import StoreReader

        faces = StoreReader(settings.store_path).rows("SELECT face_id, kind FROM faces ORDER BY face_id")
        assert faces == [("sandbox", "sandbox"), ("tweets", "dataset")]  # a working default to start from
        out.seek(0)
        printed = out.read()
        assert f"Crowdtune is up: http://localhost:{port}" in printed
        # The same next steps as the Overview's checklist, with their commands.
        assert "1. Import the bundled posts: crowdtune import --face tweets" in printed
        assert "5. Start the sandbox online loop: crowdtune train online --face sandbox" in printed
        family = [psutil.Process(up.pid), *psutil.Process(up.pid).children(recursive=True)]
        assert len(family) >= 5  # supervisor, redis, store worker, workers, app
        # Each process logs its events as JSON lines to its own file (`crowdtune logs` reads them).
        from crowdtune.runtime.logs import read_events

        events = read_events(settings.log_dir)
        started = {e.get("child") for e in events if e["process"] == "supervisor" and e["event"].startswith("started")}
        assert {"store-worker", "worker-1", "app"} <= started
        wait_for(lambda: any(e["process"] == "store-worker" and e["event"].startswith("job finished")
                             for e in read_events(settings.log_dir)), timeout=60, message="a store job's event")
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
    gone, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, [p.pid for p in alive]
    assert not health(port)


def test_up_starts_the_app_without_a_file_watcher_or_deploy_button(settings):
    from crowdtune.runtime.supervisor import Supervisor

    app = next(child for child in Supervisor(settings).plan() if child.name == "app")
    flags = dict(zip(app.args[5::2], app.args[6::2], strict=True))  # after `python -m streamlit run app.py`
    # An idle tab cost about a core with the watcher on (it re-adds watches over .venv and data/).
    assert flags["--server.fileWatcherType"] == "none"
    assert flags["--client.toolbarMode"] == "viewer"
    assert flags["--server.port"] == str(settings.app_port)
