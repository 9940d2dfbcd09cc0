"""What the System page and the Overview say about a failed job."""

import traceback

from crowdtune.errors import traceback_message
from faces.base import FaceConfigError


def test_a_failed_jobs_error_keeps_its_problem_sentence_not_only_the_fix():
    try:
        raise FaceConfigError("The Mastodon face has no access token.", "Save it on the Settings page.")
    except FaceConfigError as error:
        text = "".join(traceback.format_exception(error))
    shown = traceback_message(text)
    assert shown == ("faces.base.FaceConfigError: The Mastodon face has no access token. "
                     "Fix: Save it on the Settings page.")
    assert traceback_message("ValueError: plain") == "ValueError: plain"
    assert traceback_message(None) == "(no error text)"


def test_each_heartbeat_reports_the_cpu_and_memory_of_the_worker_and_its_job_processes(settings, redis_conn):
    import subprocess
    import sys
    import time

    from crowdtune.runtime.queues import queue
    from crowdtune.runtime.status import system_status
    from crowdtune.runtime.workers import StoreWorker

    worker = StoreWorker([queue("store", redis_conn)], connection=redis_conn)
    worker.register_birth()
    try:
        worker.heartbeat()
        [before] = [w for w in system_status(settings).workers if w.name == worker.name]
        assert before.memory_mb > 20 and before.cpu_percent >= 0.0
        # a job process of this worker: 100 MB held, and one core kept busy for a few seconds
        job = subprocess.Popen([sys.executable, "-c", "import time\nheld = b'x' * 100_000_000\nprint('ready', "
                                "flush=True)\nend = time.time() + 5\nwhile time.time() < end: pass"],
                               stdout=subprocess.PIPE, text=True)
        try:
            assert job.stdout.readline().strip() == "ready"
            worker.heartbeat()  # CPU is measured between two beats
            time.sleep(1.0)
            worker.heartbeat()
            [busy] = [w for w in system_status(settings).workers if w.name == worker.name]
        finally:
            job.kill()
            job.wait()
        assert busy.memory_mb - before.memory_mb > 90
        assert busy.cpu_percent > 5.0
    finally:
        worker.register_death()


    assert traceback_message("ValueError: plain") == "ValueError: plain"
    assert traceback_message(None) == "(no error text)"
