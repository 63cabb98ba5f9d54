"""Write docs/settings.md from the Settings class, so the reference never drifts.

uv run python scripts/gen_settings_doc.py          # rewrite the file
uv run python scripts/gen_settings_doc.py --check  # exit 1 if it is stale (tests do this)
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import SecretStr

from app.config import GROUPS, PROJECT_ROOT, Settings

TARGET = PROJECT_ROOT / "docs" / "settings.md"

HEADER = """# Settings reference

Every environment variable pgfirst reads, generated from the settings groups in
`app/config/` by `scripts/gen_settings_doc.py` (a test fails when this file is stale).
Names are case-insensitive; defaults are safe for development. Flags are read once at
startup.
"""

TABLE_HEAD = """
| variable | default | description |
|---|---|---|
"""


def _default(name: str) -> str:
    field = Settings.model_fields[name]
    if field.default_factory is not None:
        value: object = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    if isinstance(value, SecretStr):
        return "(development value)"
    if isinstance(value, Path):
        try:
            return f"`{value.relative_to(PROJECT_ROOT)}`"
        except ValueError:
            return f"`{value}`"
    if value is None:
        return "unset"
    if isinstance(value, list):
        return "empty" if not value else f"`{','.join(map(str, value))}`"
    return f"`{value}`"


def render() -> str:
    parts = [HEADER]
    for group in GROUPS:
        title, _, detail = (group.__doc__ or group.__name__).partition(": ")
        rows = []
        for name in group.__annotations__:
            description = (Settings.model_fields[name].description or "").replace("|", "\\|")
            rows.append(f"| `{name.upper()}` | {_default(name)} | {description} |")
        detail = detail[:1].upper() + detail[1:]
        parts.append(f"\n## {title}\n\n{detail}\n{TABLE_HEAD}" + "\n".join(rows) + "\n")
    return "".join(parts)


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is stale: run scripts/gen_settings_doc.py", file=sys.stderr)
            return 1
        return 0
    TARGET.parent.mkdir(exist_ok=True)
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
