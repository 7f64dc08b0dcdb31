"""Exactly one scheduler per deployment, and jobs that catch up once after downtime."""
import datetime as dt
import subprocess
import sys
import textwrap
import threading
import time

from mdm.extensions import db
from mdm.models import SchedulerJobRun
from mdm.scheduler import _first_run, job_id, start_scheduler, stop_scheduler
from scheduler_kit import Child

def test_second_process_does_not_start_a_scheduler(app):
    scheduler = start_scheduler(app, jobs=[])
    assert scheduler is not None
    try:
        # A separate OS process on the same deployment must refuse to start its own.
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
        stop_scheduler(app)


def test_scheduler_runs_every_rooms_jobs(app):
    scheduler = start_scheduler(app)
    try:
        ids = {job.id for job in scheduler.get_jobs()}
        assert {"mdm.push.apns.process_due_pushes", "mdm.ddm.jobs.refresh_catalog", "mdm.ddm.jobs.recompute_all",
                "mdm.enroll.scep.purge_stale_challenges"} <= ids
        # The scheduler's own log lines name the job ("Running job mdm.ddm.jobs.refresh_catalog ..."),
        # not the wrapper that runs it in the app context.
        assert all(job.name == job.id for job in scheduler.get_jobs())
    finally:
        stop_scheduler(app)


def test_a_standby_process_takes_over_when_the_holder_dies(app, children):
    holder = Child(app)
    children.append(holder)
    assert holder.next_line() == "holder"
    assert holder.next_line() == "started"
    standby = Child(app)
    children.append(standby)
    assert standby.next_line() == "standby"
    # The lock is held by a live process: this process cannot take it either.
    assert start_scheduler(app, jobs=[], standby=False) is None
    holder.kill()           # SIGKILL: no clean-up, the lock goes with the process
    assert standby.next_line() == "started"


# ---------------------------------------------------------------- catching up after downtime

runs = []
ran = threading.Event()


def hourly_job(app):
    runs.append(dt.datetime.now(dt.timezone.utc))
    ran.set()


HOURLY = [(hourly_job, "interval", {"hours": 1})]


def _set_last_run(app, last_run):
    with app.app_context():
        db.session.add(SchedulerJobRun(job_id=job_id(hourly_job), last_run_at=last_run))
        db.session.commit()


def _recorded_run(app):
    with app.app_context():
        try:
            return db.session.get(SchedulerJobRun, job_id(hourly_job)).last_run_at
        finally:
            db.session.remove()


def _wait_for(value, timeout=60):
    deadline = time.monotonic() + timeout
    while (result := value()) is None:
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)
    return result


def _utcnow():
    return dt.datetime.now(dt.timezone.utc)


def test_an_overdue_job_runs_once_at_start_then_keeps_its_interval(app):
    runs.clear()
    ran.clear()
    _set_last_run(app, _utcnow().replace(tzinfo=None) - dt.timedelta(hours=5, minutes=10))   # 5 ticks missed
    before = _utcnow()
    scheduler = start_scheduler(app, jobs=HOURLY)
    try:
        assert ran.wait(60), "the overdue job did not run at start"
        job = scheduler.get_job(job_id(hourly_job))
        # One catch-up run, not five: the next run is a whole interval after it.
        assert job.next_run_time >= before + dt.timedelta(minutes=59)
        assert len(runs) == 1
        # The run is recorded right after the job returns (the catch-up is not repeated after a restart).
        recorded = _wait_for(lambda: _recorded_run(app) if _recorded_run(app) >= before.replace(tzinfo=None) else None)
        assert recorded <= runs[0].replace(tzinfo=None)
    finally:
        stop_scheduler(app)
    assert len(runs) == 1


def test_a_job_that_is_not_due_keeps_its_rhythm_across_a_restart(app):
    runs.clear()
    last_run = _utcnow().replace(tzinfo=None, microsecond=0) - dt.timedelta(minutes=20)
    _set_last_run(app, last_run)
    scheduler = start_scheduler(app, jobs=HOURLY)
    try:
        job = scheduler.get_job(job_id(hourly_job))
        assert job.next_run_time == (last_run + dt.timedelta(hours=1)).replace(tzinfo=dt.timezone.utc)
        assert runs == []
    finally:
        stop_scheduler(app)


def test_first_run_rules():
    now = dt.datetime(2026, 1, 10, 12, 0, tzinfo=dt.timezone.utc)
    hour = dt.timedelta(hours=1)
    # Never ran: one interval from now, or earlier when the room asks for an early first run.
    assert _first_run(now, hour, None, None) == now + hour
    assert _first_run(now, hour, None, now + dt.timedelta(seconds=30)) == now + dt.timedelta(seconds=30)
    # Ran 20 minutes ago: 40 minutes from now. Ran a day ago: now, once.
    assert _first_run(now, hour, (now - dt.timedelta(minutes=20)).replace(tzinfo=None), None) == now + 40 * dt.timedelta(minutes=1)
    assert _first_run(now, hour, (now - dt.timedelta(days=1)).replace(tzinfo=None), None) == now
    # A requested first run in the past never runs the job before now.
    assert _first_run(now, hour, None, now - hour) == now
