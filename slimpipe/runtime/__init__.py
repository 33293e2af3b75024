"""A small runtime for slimpipe's jobs: a workspace of intermediates on any storage, steps run as Ray
tasks by one executor (resume, memory requests, retries, cleanup), and a bounded shuffle.

* :mod:`slimpipe.runtime.workspace` — where a job's intermediates live (``OUT/_work`` or ``--scratch``),
  array/table I/O through :mod:`slimpipe.storage`, and each step's committed manifest.
* :mod:`slimpipe.runtime.executor` — the step protocol and the one executor: the only place in slimpipe
  that submits and awaits Ray tasks (steps with a workspace; plain ordered tasks for mix, propose and
  the scan, with an in-flight window, early stop, cached results, per-call resources and shared inputs).
* :mod:`slimpipe.runtime.shuffle` — one file per map task holding all its partitions.
"""

from slimpipe.runtime.executor import Executor, Step, TaskContext
from slimpipe.runtime.shuffle import (
           ShuffleInputMissing,
           read_partition,
           read_table_partition,
           write_partitioned,
)
from slimpipe.runtime.workspace import Workspace

__all__ = ["Executor", "ShuffleInputMissing", "Step", "TaskContext", "Workspace", "read_partition",
           "read_table_partition", "write_partitioned"]
