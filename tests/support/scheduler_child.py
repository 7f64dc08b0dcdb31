"""A second web process of the same deployment, for the scheduler tests: ``python scheduler_child.py
CONFIG_JSON``. Prints ``holder`` or ``standby`` at start, ``started`` when it runs the scheduler (at once
or after taking over), ``paused`` when it lost the lock, then stays up until killed."""
import json
import sys
import time

from mdm import create_app
from mdm.scheduler import start_scheduler


def tick(app):
    pass


def main():
    config = json.loads(sys.argv[1])
    instance_path = config.pop("instance_path")
    app = create_app({"SCHEDULER_ENABLED": False, **config}, instance_path=instance_path)
    scheduler = start_scheduler(app, jobs=[(tick, "interval", {"hours": 1})])
    print("holder" if scheduler else "standby", flush=True)
    from apscheduler.schedulers.base import STATE_PAUSED
    announced = paused = False
    while True:
        running = app.extensions.get("mdm_scheduler")
        if running and not announced:
            print("started", flush=True)
            announced = True
        if running and running.state == STATE_PAUSED and not paused:
            print("paused", flush=True)
            paused = True
        time.sleep(0.05)


if __name__ == "__main__":
    main()
