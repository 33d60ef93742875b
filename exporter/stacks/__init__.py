"""Stacks of stuck workers, read from outside with py-spy (opt-in: --collector.stacks).

* `pyspy.py`: py-spy's `dump --json` output to frames (pure), the innermost frame
  outside gunicorn and the standard library, the outcome of a failed run;
* `reader.py`: one run of py-spy as a subprocess bounded in time and output, and the
  CPU it used (its rusage);
* `schedule.py`: which workers are stuck, which are due for a capture (at most one per
  worker per --stacks.interval, --stacks.max-concurrent at once, --stacks.max-cpu of a
  core), and which were killed at their timeout (pure, clock passed in);
* `store.py`: the last captures and postmortems per app, bounded, as JSON and as text
  (GET /debug/stacks).

The collector that drives them is exporter/collectors/stacks.py; docs/security.md says
what a stack reader can see and why local variables are never read.
"""
