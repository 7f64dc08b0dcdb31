import subprocess
import sys
import textwrap

from mdm.scheduler import start_scheduler


def test_second_process_does_not_start_a_scheduler(app):
    scheduler = start_scheduler(app)
    assert scheduler is not None
    try:
        # A separate OS process on the same instance folder must refuse to start its own.
        code = textwrap.dedent(f"""
            from mdm import create_app
            from mdm.scheduler import start_scheduler
            app = create_app({{"SCHEDULER_ENABLED": False, "CERTS_DIR": {app.config['CERTS_DIR']!r},
                              "DATABASE_URL": {app.config['DATABASE_URL']!r}}},
                             instance_path={app.instance_path!r})
            print("started" if start_scheduler(app) else "refused")
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.stdout.strip().endswith("refused"), out.stderr
    finally:
        scheduler.shutdown(wait=False)


def test_scheduler_runs_every_rooms_jobs(app):
    scheduler = start_scheduler(app)
    try:
        ids = {job.id for job in scheduler.get_jobs()}
        assert {"mdm.push.process_due_pushes", "mdm.ddm.jobs.refresh_catalog", "mdm.ddm.jobs.recompute_all",
                "mdm.enroll.scep.purge_stale_challenges"} <= ids
    finally:
        scheduler.shutdown(wait=False)
