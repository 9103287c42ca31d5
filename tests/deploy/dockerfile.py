"""Read Dockerfiles and .dockerignore without a Docker engine (none runs here).

Enough of the syntax for our files: instructions with `\\` continuations, comments,
stages (`FROM ... AS name`), build-time `ARG` defaults in `FROM`, exec-form (JSON)
ENTRYPOINT and CMD. .dockerignore follows Docker's rules for the patterns we use:
the last matching pattern wins, `!` re-includes, a directory's pattern covers what
is inside it, and `**/` matches at any depth.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def exec_form(self, keyword: str) -> list[str] | None:
        """ENTRYPOINT or CMD as a list; shell form is refused (signals would go to sh)."""
        text = self.last(keyword)
        if text is None:
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"{keyword} {text!r} is not exec form (a JSON list)") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{keyword} {text!r} is not a JSON list of strings")
        return value


def instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        found.append((keyword.upper(), args.strip()))
    return found


def stages(path: Path) -> list[Stage]:
    """The build stages of a Dockerfile, the final one last."""
    args: dict[str, str] = {}
    result: list[Stage] = []
    for keyword, rest in instructions(path.read_text()):
        if keyword == "ARG" and not result:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], ""), parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            result.append(Stage(base=base, name=name))
        elif result:
            result[-1].instructions.append((keyword, rest))
        else:
            raise ValueError(f"{path}: {keyword} before the first FROM")
    if not result:
        raise ValueError(f"{path}: no FROM")
    return result


def copy_sources(stage: Stage) -> list[str]:
    """Paths a stage copies from the build context (not --from another stage)."""
    sources = []
    for args in stage.all("COPY"):
        words = args.split()
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


def ignored(path: str, dockerignore: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the context) out of the context."""
    path = path.strip("/")
    candidates = [path] + [str(p) for p in Path(path).parents if str(p) != "."]
    excluded = False
    for line in dockerignore.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        patterns = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(c, p) for c in candidates for p in patterns):
            excluded = not negate
    return excluded
