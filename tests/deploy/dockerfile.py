"""A small reader for our Dockerfile and .dockerignore, so tests can check what the images install and run.

It understands the subset of the Dockerfile syntax that the project's Dockerfile uses (global ARGs, stages,
line continuations, exec-form ENTRYPOINT/CMD, `KEY=value` ENV and LABEL lists) and the .dockerignore rules
of Docker's builder (last matching pattern wins, `!` re-includes, a pattern matching a folder covers what
is inside it). hadolint, run by the tests as well, checks the rest of the syntax.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

_VARIABLE = re.compile(r"\$\{(\w+)(?::[-+][^}]*)?\}|\$(\w+)")


@dataclass
class Instruction:
    """One instruction: its keyword (upper case), its argument text and the line it starts on."""

    keyword: str
    text: str
    line: int


@dataclass
class Stage:
    """One build stage: the image or stage it starts from (global ARGs substituted), its name, instructions."""

    base: str
    name: str | None
    raw_base: str = ""
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        """Returns the stage's instructions with this keyword, in order."""
        return [i for i in self.instructions if i.keyword == keyword]

    def last_exec_form(self, keyword: str) -> list[str] | None:
        """Returns the JSON list of the stage's last ENTRYPOINT or CMD, or None when it has none."""
        found = self.all(keyword)
        return json.loads(found[-1].text) if found else None

    def key_values(self, keyword: str) -> dict[str, str]:
        """Returns every `KEY=value` pair of the stage's ENV or LABEL instructions, later ones winning."""
        pairs: dict[str, str] = {}
        for instruction in self.all(keyword):
            for token in shlex.split(instruction.text):
                key, _, value = token.partition("=")
                pairs[key] = value
        return pairs

    def run_text(self) -> str:
        """Returns all RUN commands of the stage joined by newlines."""
        return "\n".join(i.text for i in self.all("RUN"))


@dataclass
class Dockerfile:
    """The global ARG defaults and the stages of a Dockerfile."""

    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        """Returns the stage called `name`; raises KeyError naming the stages that exist."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r}; stages: {[s.name for s in self.stages]}")

    def chain(self, name: str, args: dict[str, str] | None = None) -> list[Stage]:
        """Returns the stage `name` and the stages it builds on, target first, for these build args.

        A base of the form `stage-${ARG}` is resolved with the build args over the global defaults.
        """
        values = {**self.global_args, **(args or {})}
        stages = [self.stage(name)]
        names = {s.name for s in self.stages}
        while True:
            base = substitute(stages[-1].raw_base, values)
            if base not in names:
                return stages
            stages.append(self.stage(base))

    def base_image(self, name: str, args: dict[str, str] | None = None) -> str:
        """Returns the external image that stage `name` finally starts from, for these build args."""
        values = {**self.global_args, **(args or {})}
        return substitute(self.chain(name, args)[-1].raw_base, values)

    def copied_from(self, stage: Stage) -> list[str]:
        """Returns the stages that `stage` copies files from (COPY --from=...)."""
        sources = []
        for instruction in stage.all("COPY"):
            match = re.search(r"--from=(\S+)", instruction.text)
            if match:
                sources.append(match.group(1))
        return sources

    def external_images(self) -> list[str]:
        """Returns the image references (not stage names) that stages start from, ARG defaults applied."""
        names = {s.name for s in self.stages}
        return [s.base for s in self.stages if s.base not in names]


def substitute(text: str, values: dict[str, str]) -> str:
    """Returns `text` with ${NAME} and $NAME replaced from `values` (unknown names become empty)."""
    return _VARIABLE.sub(lambda m: values.get(m.group(1) or m.group(2), ""), text)


def logical_lines(source: str) -> list[tuple[int, str]]:
    """Returns the Dockerfile's instructions as (first line number, text) with continuations joined.

    Comment lines (and hadolint pragmas) are dropped, including those inside a continued instruction.
    """
    lines: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    for number, raw in enumerate(source.splitlines(), start=1):
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if not current:
            start = number
        if stripped.endswith("\\"):
            current.append(stripped[:-1].strip())
            continue
        current.append(stripped)
        lines.append((start, " ".join(part for part in current if part)))
        current = []
    if current:
        lines.append((start, " ".join(current)))
    return lines


def parse_dockerfile(path: Path) -> Dockerfile:
    """Reads a Dockerfile. Raises ValueError for an instruction before the first FROM other than ARG."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, text in logical_lines(path.read_text()):
        keyword, _, rest = text.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=substitute(words[0], global_args), name=name, raw_base=words[0]))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"{path}:{line}: {keyword} before the first FROM")
            key, _, value = rest.partition("=")
            global_args[key] = value.strip('"')
        else:
            stages[-1].instructions.append(Instruction(keyword, rest, line))
    return Dockerfile(global_args, stages)


# --- .dockerignore --------------------------------------------------------------------------------------------


def _pattern_to_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
            continue
        else:
            out += re.escape(char)
        i += 1
    return re.compile(f"^{out}$")


@dataclass
class DockerIgnore:
    """The rules of a .dockerignore file: (excluded?, pattern) in file order."""

    rules: list[tuple[bool, re.Pattern[str], str]]

    @classmethod
    def read(cls, path: Path) -> DockerIgnore:
        """Reads a .dockerignore file (comments and blank lines skipped)."""
        rules = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = line[1:] if include else line
            pattern = pattern.strip().strip("/") or "."
            rules.append((not include, _pattern_to_regex(pattern), line))
        return cls(rules)

    def excluded(self, relative_path: str) -> bool:
        """True when the build context leaves this path (relative to the context root) out."""
        parts = relative_path.strip("/").split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for exclude, regex, _ in self.rules:
            if any(regex.match(prefix) for prefix in prefixes):
                result = exclude
        return result

    def context_files(self, root: Path) -> list[str]:
        """Returns the files under `root` (relative paths) that the build context would hold.

        Skips walking an excluded folder that no `!` rule reaches into (the checkout's caches are large).
        """
        reincluded = [source.lstrip("!").strip("/") for exclude, _, source in self.rules if not exclude]
        files = []
        for folder, subfolders, names in os.walk(root):
            relative_folder = Path(folder).relative_to(root).as_posix()
            prefix = "" if relative_folder == "." else f"{relative_folder}/"
            subfolders[:] = [
                sub
                for sub in sorted(subfolders)
                if not self.excluded(prefix + sub)
                or any(rule.startswith(f"{prefix}{sub}/") or "**" in rule for rule in reincluded)
            ]
            files += [prefix + n for n in sorted(names) if not self.excluded(prefix + n)]
        return sorted(files)
