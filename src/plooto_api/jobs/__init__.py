"""Jobs: the functions that sync, keep sessions alive and (later) write and deliver webhooks,
and the engine that runs them. The default engine is in-process (`InProcessEngine`); a distributed
engine on PostgreSQL runs the same registered functions when the gateway scales out."""

from plooto_api.jobs.context import JobContext
from plooto_api.jobs.inprocess import InProcessEngine
from plooto_api.jobs.registry import JOBS, get_job, job

__all__ = ["JOBS", "InProcessEngine", "JobContext", "get_job", "job"]
