"""The builtin engine: one environment operation in a child process of the agent.

Run as ``python -m services.executor.builtin_worker --result RESULT_PATH`` with a JSON
request on stdin. It runs in a process of its own so that the agent can cancel it by
killing its process group, and so that a crash in the native rattler code cannot take the
agent down. Progress goes to stdout line by line as it happens (the agent streams it to
users); warnings and errors go to stderr. The outcome is written to RESULT_PATH as
``{"success": bool, "error": str}``; a missing result file means the worker was killed.

On-disk protocol (see ``workspace.py``): a create writes ``pixi.toml`` last, so a workspace
without it is an incomplete create. Install and remove mark the prefix ``.darb/dirty``
before touching it, stage the next manifest and lock in ``.darb/txn/`` and commit them by
creating ``.darb/txn/COMMIT``; ``restore`` rolls a committed transaction forward and
rebuilds a dirty prefix from ``pixi.lock``.
"""
