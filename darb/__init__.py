"""darb: the Python SDK and CLI for the darb service.

with darb.Client("127.0.0.1:50051") as client:
    client.login("admin", password)
    environment, job = client.environments.create("demo", packages=["python"])
    client.jobs.wait(job.id)
"""

from darb import errors
from darb.client import Client
from darb.errors import DarbError
from darb.models import (
    Environment,
    EnvironmentStatus,
    EnvironmentVersion,
    Export,
    Group,
    Job,
    JobPhase,
    JobStatus,
    JobType,
    LogLine,
    LogStream,
    Package,
    PackageChange,
    Policy,
    Progress,
    RequestedSpec,
    RequestedSpecChange,
    Role,
    User,
    VersionDiff,
)

__all__ = [
    "Client",
    "DarbError",
    "Environment",
    "EnvironmentStatus",
    "EnvironmentVersion",
    "Export",
    "Group",
    "Job",
    "JobPhase",
    "JobStatus",
    "JobType",
    "LogLine",
    "LogStream",
    "Package",
    "PackageChange",
    "Policy",
    "Progress",
    "RequestedSpec",
    "RequestedSpecChange",
    "Role",
    "User",
    "VersionDiff",
    "errors",
]
