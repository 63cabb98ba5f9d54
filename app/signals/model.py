"""What a signal is, how a value is graded against its thresholds, and the report's shape.

The report's JSON is a public contract (docs/signals.md): ``GET /ops/signals`` and
``app signals --json`` print exactly ``Report.document()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

Status = Literal["ok", "warn", "critical", "unknown"]
FIRED: frozenset[str] = frozenset({"warn", "critical"})
SEVERITY: dict[str, int] = {"critical": 0, "warn": 1, "unknown": 2, "ok": 3}


@dataclass(frozen=True, slots=True)
class Signal:
    key: str
    status: Status
    value: float | None
    unit: str
    warn: float
    critical: float
    window_seconds: float
    recommendation: str
    flag: str | None = None
    details: list[str] = field(default_factory=list)

    @property
    def fired(self) -> bool:
        return self.status in FIRED

    def with_advice(self, recommendation: str, flag: str | None) -> Signal:
        return replace(self, recommendation=recommendation, flag=flag)

    def document(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "status": self.status,
            "value": self.value,
            "unit": self.unit,
            "warn": self.warn,
            "critical": self.critical,
            "window_seconds": self.window_seconds,
            "recommendation": self.recommendation,
            "flag": self.flag,
            "details": self.details,
        }


def format_number(value: float) -> str:
    """Short and exact enough to read: 1.5G, 100M, 12,500, 0.9997."""
    for scale, suffix in ((1e9, "G"), (1e6, "M")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def grade(
    value: float | None, warn: float, critical: float, *, lower_is_worse: bool = False
) -> Status:
    """ok, warn or critical: a value at or past a threshold has crossed it."""
    if value is None:
        return "unknown"
    if lower_is_worse:
        return "critical" if value <= critical else "warn" if value <= warn else "ok"
    return "critical" if value >= critical else "warn" if value >= warn else "ok"


def signal(
    key: str,
    value: float | None,
    unit: str,
    warn: float,
    critical: float,
    window_seconds: float,
    *,
    fired: str,
    ok: str,
    flag: str | None = None,
    lower_is_worse: bool = False,
    details: list[str] | None = None,
    unknown: str = "not measurable here",
) -> Signal:
    """A graded signal: ``fired`` is the recommendation when it fires, ``ok`` otherwise.

    ``flag`` is what the signal would recommend flipping; the advisor keeps it only once the
    signal held for SIGNAL_HYSTERESIS_SAMPLES samples.
    """
    status = grade(value, warn, critical, lower_is_worse=lower_is_worse)
    text = fired if status in FIRED else unknown if status == "unknown" else ok
    return Signal(
        key,
        status,
        value,
        unit,
        warn,
        critical,
        window_seconds,
        text,
        flag if status in FIRED else None,
        details or [],
    )


def unknown_signal(
    key: str, unit: str, warn: float, critical: float, window_seconds: float, why: str
) -> Signal:
    return Signal(key, "unknown", None, unit, warn, critical, window_seconds, why)


@dataclass(frozen=True, slots=True)
class Stage:
    number: int
    name: str
    reasons: list[str]


@dataclass(frozen=True, slots=True)
class Report:
    stage: Stage
    signals: list[Signal]
    flags: dict[str, str]
    advice: list[str]
    sampled_at: datetime

    def document(self) -> dict[str, Any]:
        return {
            "stage": {
                "number": self.stage.number,
                "name": self.stage.name,
                "reasons": self.stage.reasons,
            },
            "signals": [item.document() for item in self.signals],
            "flags": self.flags,
            "advice": self.advice,
            "sampled_at": self.sampled_at.isoformat(),
        }
