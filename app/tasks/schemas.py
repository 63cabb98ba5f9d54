"""Bodies of /api/projects and /api/tasks. Limits: name 100, title 200, body 20,000 chars."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

COLOR = r"^#[0-9a-f]{6}$"


class ProjectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    color: str = Field("#6b7280", pattern=COLOR)


class ProjectPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=100)
    color: str | None = Field(None, pattern=COLOR)


class ProjectOut(BaseModel):
    id: int
    name: str
    color: str
    created_at: datetime


class ProjectPage(BaseModel):
    items: list[ProjectOut]
    next_cursor: str | None


class TaskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(min_length=1, max_length=200)
    body: str = Field("", max_length=20_000)
    project_id: int | None = Field(None, ge=1, le=2**63 - 1)
    due_at: datetime | None = None


class TaskPatch(BaseModel):
    """Only the fields sent change; ``project_id: null`` detaches, ``completed`` toggles."""

    model_config = ConfigDict(extra="forbid")
    title: str | None = Field(None, min_length=1, max_length=200)
    body: str | None = Field(None, max_length=20_000)
    project_id: int | None = Field(None, ge=1, le=2**63 - 1)
    due_at: datetime | None = None
    completed: bool | None = None


class TaskOut(BaseModel):
    id: int
    title: str
    body: str
    project_id: int | None
    project_name: str | None
    project_color: str | None
    completed: bool
    completed_at: datetime | None
    due_at: datetime | None
    created_at: datetime
    updated_at: datetime


class TaskPage(BaseModel):
    items: list[TaskOut]
    next_cursor: str | None
