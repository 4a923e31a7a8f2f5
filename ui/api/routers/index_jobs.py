"""``POST /index/jobs`` (start), ``GET /index/jobs[/{id}]`` (progress), ``DELETE /index/jobs/{id}`` (cancel)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from ..deps import ReadAccess, RuntimeDep, WriteAccess
from ..errors import responses
from ..jobs import Job
from ..schemas import IndexJobOut, IndexJobRequest

router = APIRouter(prefix="/index/jobs", tags=["index"])

JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="job id")]


def _out(job: Job) -> IndexJobOut:
    return IndexJobOut(**job.to_dict())


@router.post("", response_model=IndexJobOut, status_code=202, dependencies=[WriteAccess],
             responses=responses(400, 401, 403, 409, 422))
def start_job(body: IndexJobRequest, runtime: RuntimeDep) -> IndexJobOut:
    """Index folders under the library roots in the background; 409 while another writer runs."""
    return _out(runtime.jobs.start(body.paths, retry_errors=body.retry_errors))


@router.get("", response_model=list[IndexJobOut], dependencies=[ReadAccess], responses=responses(401, 403))
def list_jobs(runtime: RuntimeDep) -> list[IndexJobOut]:
    """This server process's jobs, newest first."""
    return [_out(j) for j in runtime.jobs.list()]


@router.get("/{job_id}", response_model=IndexJobOut, dependencies=[ReadAccess], responses=responses(401, 403, 404, 422))
def get_job(job_id: JobId, runtime: RuntimeDep) -> IndexJobOut:
    """A job's status and progress (phase, done, total)."""
    return _out(runtime.jobs.get(job_id))


@router.delete("/{job_id}", response_model=IndexJobOut, status_code=202, dependencies=[WriteAccess],
               responses=responses(401, 403, 404, 409, 422))
def cancel_job(job_id: JobId, runtime: RuntimeDep) -> IndexJobOut:
    """Ask a running job to stop at its next progress report (what it committed is kept)."""
    return _out(runtime.jobs.cancel(job_id))
