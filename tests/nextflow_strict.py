"""A static check of Nextflow scripts and configs against the rules of Nextflow's strict syntax.

Nextflow's strict parser (the default from Nextflow 26.04, and what `nextflow lint` uses in every version)
accepts only part of the Groovy that the legacy parser, reftrace and groovyc accept. Nextflow cannot run
where spotmap is developed, so this module implements the rules that can be checked statically, as the
"Preparing for strict syntax" page of Nextflow's documentation (docs/strict-syntax.mdx) lists them and as
its parser (modules/nf-lang: ScriptAstBuilder, ConfigAstBuilder, VariableScopeVisitor, VariableScopeChecker)
reports them. Each finding names the rule, the file and the line.

It reads the source as a small lexer does (comments, '...', "...", '''...''', \"\"\"...\"\"\", slashy and
dollar-slashy strings, ${...} interpolation), then checks the code with the string contents blanked out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Finding:
    rule: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: [{self.rule}] {self.message}"


@dataclass
class StringToken:
    kind: str            # sq, dq, tsq, tdq, slashy, dollar_slashy
    start: int
    end: int             # exclusive
    text: str            # the literal's body
    interpolations: list[str] = field(default_factory=list)


@dataclass
class Source:
    text: str
    code: str            # text with comments and string bodies blanked (quotes kept), same length and lines
    strings: list[StringToken]

    def line(self, pos: int) -> int:
        return self.text.count("\n", 0, pos) + 1


# --------------------------------------------------------------------------------------------------
# Lexer
# --------------------------------------------------------------------------------------------------

_DIVISION_BEFORE = re.compile(r"[\w)\]}'\"]$")


def _blank(s: str) -> str:
    return re.sub(r"[^\n]", " ", s)


def _interpolation_end(text: str, i: int) -> int:
    """Index just after the `}` closing the `${` at text[i-2:i] (nested braces and strings skipped)."""
    depth = 1
    while i < len(text):
        c = text[i]
        if c in "'\"":
            q = text[i:i + 3] if text.startswith(c * 3, i) else c
            j = i + len(q)
            while j < len(text) and not text.startswith(q, j):
                j += 2 if text[j] == "\\" else 1
            i = j + len(q)
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unclosed ${ in a string")


def lex(text: str) -> Source:
    code, strings, i, n = [], [], 0, len(text)
    if text.startswith("#!"):
        end = text.index("\n") if "\n" in text else n
        code.append(_blank(text[:end]))
        i = end
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            code.append(_blank(text[i:end]))
            i = end
        elif text.startswith("/*", i):
            end = text.index("*/", i) + 2
            code.append(_blank(text[i:end]))
            i = end
        elif text.startswith("$/", i):
            end = text.index("/$", i + 2) + 2
            strings.append(StringToken("dollar_slashy", i, end, text[i + 2:end - 2]))
            code.append(_blank(text[i:end]))
            i = end
        elif c in "'\"":
            triple = text.startswith(c * 3, i)
            q = c * 3 if triple else c
            j, interps = i + len(q), []
            while not text.startswith(q, j):
                if j >= n:
                    raise ValueError(f"unclosed string at offset {i}")
                if text[j] == "\\":
                    j += 2
                elif c == '"' and text.startswith("${", j):
                    k = _interpolation_end(text, j + 2)
                    interps.append(text[j + 2:k - 1])
                    j = k
                elif c == '"' and text[j] == "$" and j + 1 < n and (text[j + 1].isalpha() or text[j + 1] == "_"):
                    m = re.match(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*", text[j + 1:])
                    interps.append(m.group(0))
                    j += 1 + m.end()
                else:
                    j += 1
            end = j + len(q)
            kind = ("t" if triple else "") + ("dq" if c == '"' else "sq")
            strings.append(StringToken(kind, i, end, text[i + len(q):j], interps))
            code.append(q + _blank(text[i + len(q):j]) + q)
            i = end
        elif c == "/" and not _DIVISION_BEFORE.search("".join(code[-1:]).rstrip() or "(") \
                and not text.startswith("/=", i):
            # a slashy string: a '/' where an operand starts (after an operator, '(' or ',')
            j = i + 1
            while text[j] != "/":
                j += 2 if text[j] == "\\" else 1
            body = text[i + 1:j]
            strings.append(StringToken("slashy", i, j + 1, body,
                                       [a or b for a, b in re.findall(r"\$\{([^}]*)\}|\$([A-Za-z_]\w*)", body)]))
            code.append("/" + _blank(body) + "/")
            i = j + 1
        else:
            code.append(c)
            i += 1
    joined = "".join(code)
    assert len(joined) == n, "lexer lost characters"
    return Source(text, joined, strings)


# --------------------------------------------------------------------------------------------------
# Helpers on the blanked code
# --------------------------------------------------------------------------------------------------

def matching(code: str, pos: int) -> int:
    """Index of the bracket closing the one at ``pos`` ( ``(``, ``[`` or ``{`` ) in blanked code."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack = [pairs[code[pos]]]
    for i in range(pos + 1, len(code)):
        c = code[i]
        if c in pairs:
            stack.append(pairs[c])
        elif c in ")]}":
            if c != stack.pop():
                raise ValueError(f"unbalanced {c!r} at offset {i}")
            if not stack:
                return i
    raise ValueError(f"unclosed {code[pos]!r} at offset {pos}")


def statement_starts(code: str, start: int, end: int) -> list[int]:
    """Positions where statements begin in code[start:end] (one level: nested brackets are skipped).
    A line continues the previous statement when that one left a bracket open, ended with an operator,
    or the line starts with '.', '?', ':' or an operator."""
    starts, i, prev_end_char = [], start, "\n"
    cont_start = re.compile(r"\s*(\.|\?|:|&&|\|\||\+|-(?!-)|\*|/|==|!=|<|>|\bas\b|\bin\b|\binstanceof\b)")
    while i < end:
        m = re.compile(r"[ \t\r\n;]*").match(code, i)
        i = m.end()
        if i >= end:
            break
        if prev_end_char not in "=,(+-*/&|?:[" and not cont_start.match(code, i):
            starts.append(i)
        # advance to the end of this line at this level
        while i < end and code[i] != "\n":
            if code[i] in "([{":
                i = matching(code, i) + 1
                continue
            i += 1
        prev_end_char = code[:i].rstrip()[-1:] or "\n"
    return starts


IDENT = r"[A-Za-z_]\w*"


def _closure_params(code: str, brace: int) -> list[str] | None:
    """Parameter names of the closure whose '{' is at ``brace`` (None when it declares none)."""
    m = re.compile(rf"\s*((?:{IDENT}(?:\s*:\s*[\w<>.,\s]+?)?(?:\s*=\s*[^,\->{{}}]+)?\s*,\s*)*"
                   rf"{IDENT}(?:\s*:\s*[\w<>.]+)?(?:\s*=\s*[^,\->{{}}]+)?)\s*->").match(code, brace + 1)
    if not m:
        return None
    return [re.match(rf"\s*({IDENT})", p).group(1) for p in m.group(1).split(",")]


# --------------------------------------------------------------------------------------------------
# Rules shared by scripts and configs
# --------------------------------------------------------------------------------------------------

TYPES = r"(?:String|Integer|int|long|Long|Double|double|float|Float|boolean|Boolean|Map|List|Set|Object|Path|File|" \
        r"BigDecimal|Closure|Collection|def\s+[A-Z]\w*)"


def common_rules(src: Source, findings: list[Finding]) -> None:
    code = src.code

    def add(rule, pos, msg):
        findings.append(Finding(rule, src.line(pos), msg))

    for m in re.finditer(r"^[ \t]*import\s+[\w.*]+", code, re.M):
        add("import", m.start(), "Groovy `import` declarations are not supported -- use the fully-qualified name")
    for m in re.finditer(r"^[ \t]*(?:(?:abstract|final|static)\s+)*class\s+" + IDENT, code, re.M):
        add("class", m.start(), "class declarations are not supported (enums are): use functions, or lib/")
    for m in re.finditer(r"\b(for|while|switch)\s*\(", code):
        add("loop-switch", m.start(), f"`{m.group(1)}` is not supported: use each/collect/findAll, or if/else")
    for m in re.finditer(r"(?:^|[\[(,])[ \t]*\*[ \t]*(?=[A-Za-z_(\[])", code, re.M):
        add("spread", m.end(), "the spread operator `*list` is not supported: enumerate the elements")
    for m in re.finditer(r"(?:\w|\))\s*(\+\+|--)(?![\w-])|(?<![\w-])(\+\+|--)\s*[A-Za-z_(]", code):
        add("increment", m.start(), "`++`/`--` are not supported: use `+= 1` / `-= 1`")
    no_headers = re.sub(r"(\bdef\s+" + IDENT + r"\s*)(\([^()]*\))", lambda m: m.group(1) + _blank(m.group(2)), code)
    for m in re.finditer(r"[(,]\s*(" + IDENT + r")\s*=(?![=~])", no_headers):
        add("assignment-expression", m.start(1), f"assignment `{m.group(1)} = ...` inside an expression is not "
                                                  "supported: assign in its own statement")
    for m in re.finditer(r"(?<![\w)\]])\(\s*[A-Z][\w.]*(?:\s*<[\w\s,<>.]*>)?\s*\)[ \t]*(?=[A-Za-z_(\[])", code):
        add("soft-cast", m.start(), "soft casts `(Type) x` are not supported: use `x as Type` or a method")
    for m in re.finditer(r"^[ \t]*(?:final\s+|" + TYPES + r"\s+)(" + IDENT + r")\s*=(?!=)", code, re.M):
        add("typed-declaration", m.start(), f"declare `{m.group(1)}` with `def` and no Groovy type (or `def x: Type`)")
    for m in re.finditer(r"^[ \t]*def\s+" + IDENT + r"\s*=", code, re.M):
        line_end = code.find("\n", m.end())
        rest = code[m.end():line_end if line_end > 0 else len(code)]
        flat = re.sub(r"\([^()]*\)|\[[^\[\]]*\]|\{[^{}]*\}", "", rest)
        if re.search(r",\s*" + IDENT + r"\s*=(?!=)", flat):
            add("multiple-declaration", m.start(), "declare one variable per `def` (or `def (a, b) = [x, y]`)")
    explicit = code  # closures that name their parameter `it` (`{ it -> ... }`) use it explicitly
    for m in re.finditer(r"\{\s*it\s*->", code):
        end = matching(code, m.start())
        explicit = explicit[:m.start()] + _blank(code[m.start():end + 1]) + explicit[end + 1:]
    for m in re.finditer(r"(?<![\w.$])it\b(?!\s*->)(?!\s*:)", explicit):
        add("implicit-it", m.start(), "the implicit closure parameter `it` is deprecated: name the parameter")
    for m in re.finditer(r"\bSystem\s*\.\s*getenv\b", code):
        add("implicit-env", m.start(), "use env('NAME') (Nextflow's function) instead of System.getenv")
    for s in src.strings:
        if s.kind == "dollar_slashy":
            add("dollar-slashy", s.start, "dollar-slashy strings $/.../$ are not supported: use a multi-line string")
        if s.kind == "slashy" and ("\n" in s.text or s.interpolations):
            add("slashy", s.start, "slashy strings cannot span lines or be interpolated: use a double-quoted string")
        for expr in s.interpolations:
            name = expr.strip().split(".")[0]
            if re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
                add("implicit-env", s.start, f"`${{{name}}}` reads an implicit environment variable: use "
                                             f"env('{name}') (or escape a shell variable as \\${name})")


# --------------------------------------------------------------------------------------------------
# Scripts (.nf)
# --------------------------------------------------------------------------------------------------

DECLARATION = re.compile(
    r"(?:include\s*\{|nextflow\.[\w.]+\s*=|params\s*\{|params\.\w+\s*=|workflow\s*\{|workflow\s+" + IDENT + r"\s*\{|"
    r"process\s+" + IDENT + r"\s*\{|def\s+" + IDENT + r"\s*\(|(?:enum|record)\s+" + IDENT + r"\s*\{|output\s*\{)")


def check_script(text: str) -> list[Finding]:
    src = lex(text)
    code, findings = src.code, []

    def add(rule, pos, msg):
        findings.append(Finding(rule, src.line(pos), msg))

    common_rules(src, findings)
    tops = statement_starts(code, 0, len(code))
    declarations = [p for p in tops if DECLARATION.match(code, p)]
    for p in tops:
        if DECLARATION.match(code, p) or re.match(r"(?:import|class)\b", code[p:]):
            continue
        if declarations:
            snippet = code[p:code.find("\n", p)].strip()
            add("top-level-statement", p, f"statements cannot be mixed with script declarations: `{snippet[:60]}` "
                                          "-- move it into the entry workflow, a process or a function")
    for m in re.finditer(r"^[ \t]*nextflow\.enable\.dsl\b", code, re.M):
        add("dsl-flag", m.start(), "`nextflow.enable.dsl` is deprecated: DSL2 is the only DSL")
    for m in re.finditer(r"(?<![\w.])Channel\s*\.", code):
        add("Channel", m.start(), "`Channel.` is deprecated: use the `channel` namespace (`channel.of`, ...)")
    for m in re.finditer(r"\binclude\s*\{[^}]*\}\s*from\s*'[^']*'\s*(addParams|params)\s*\(", code):
        add("include-params", m.start(), f"include `{m.group(1)}(...)` is not supported: pass params as inputs")
    for m in re.finditer(r"^process\s+(" + IDENT + r")\s*\{", code, re.M):
        _check_process(src, m.group(1), m.end() - 1, add)
    _check_scopes(src, add)
    return findings


def _check_process(src: Source, name: str, brace: int, add) -> None:
    code = src.code
    body_end = matching(code, brace)
    body = code[brace + 1:body_end]
    labels = {m.group(1): brace + 1 + m.start() for m in
              re.finditer(r"^[ \t]*(input|output|when|script|shell|exec|stub):", body, re.M)}
    if "shell" in labels:
        add("shell-section", labels["shell"], f"process {name}: the `shell:` section is deprecated: use `script:`")
    if (set(labels) & {"input", "output", "when", "stub"}) and not (set(labels) & {"script", "exec", "shell"}):
        add("script-label", brace, f"process {name}: the `script:` label is required when other sections are present")
    for sec in ("input", "output"):
        if sec in labels:
            start = labels[sec]
            after = [p for p in labels.values() if p > start]
            seg = code[start:min(after) if after else body_end]
            for m in re.finditer(r"\benv\s*\(?\s*(?=[A-Za-z_])", seg):
                add("env-quotes", start + m.start(), f"process {name}: `env` {sec}s need a quoted name: env 'NAME'")


def _check_scopes(src: Source, add) -> None:
    """Declarations in nested scopes (workflows, functions, processes, closures, blocks): a name declared
    again while an enclosing scope has it is an error ("`x` is already declared"), as are assignments to
    undeclared names in functions and closures (VariableScopeVisitor.declareAssignedVariable)."""
    code = src.code
    scopes: list[dict] = [{"names": set(), "kind": "top"}]
    i, n = 0, len(code)
    pending: list[tuple[int, int, list[str], int]] = []   # (statement end, scope depth, names, position)
    while i < n:
        for item in [p for p in pending if p[0] <= i]:
            pending.remove(item)
            if len(scopes) == item[1]:
                for name in item[2]:
                    _declare(scopes, name, item[3], add)
        c = code[i]
        if c == "{":
            kind, names = "block", []
            head = code[max(0, i - 300):i]
            fn = re.search(r"\bdef\s+" + IDENT + r"\s*\(([^()]*)\)\s*(?:->\s*\w+\s*)?$", head)
            wf = re.search(r"(?:^|\n)\s*workflow(?:\s+" + IDENT + r")?\s*$", head)
            pr = re.search(r"(?:^|\n)\s*process\s+" + IDENT + r"\s*$", head)
            params = _closure_params(code, i)
            if fn:
                kind = "function"
                names = [re.match(r"\s*(?:def\s+)?(?:[A-Z]\w*\s+)?(" + IDENT + ")", p).group(1)
                         for p in fn.group(1).split(",") if p.strip()]
            elif wf:
                kind = "workflow"
                end = matching(code, i)
                take = re.search(r"\btake:\s*\n(.*?)(?=\n\s*(?:main|emit|publish):)", code[i:end], re.S)
                names = re.findall(r"^\s*(" + IDENT + r")\s*$", take.group(1), re.M) if take else []
            elif pr:
                kind = "process"
                end = matching(code, i)
                inp = re.search(r"\binput:\s*\n(.*?)(?=\n\s*(?:output|when|script|shell|exec|stub):)", code[i:end], re.S)
                names = re.findall(r"\b(?:val|path|each|env|file)\s*\(?\s*(" + IDENT + r")", inp.group(1)) if inp else []
            elif params is not None:
                kind, names = "closure", params
            elif re.search(r"[=(,\[:]\s*$|\.\w+\s*(?:\([^()]*\))?\s*$|\w\s*$", head) and not re.search(
                    r"(?:\belse|\btry|\bfinally|\))\s*$", head):
                kind = "closure"
            scopes.append({"names": set(), "kind": kind})
            for name in names:
                _declare(scopes, name, i, add)
            i += 1
            continue
        if c == "}":
            scopes.pop()
            i += 1
            continue
        m = re.compile(r"\bdef\s+\(([^()]*)\)\s*=|\bdef\s+(" + IDENT + r")\s*(?::\s*[\w<>.,\s]+?)?\s*=(?!=)").match(code, i)
        if m and (i == 0 or not (code[i - 1].isalnum() or code[i - 1] == "_")):
            # declared after its value is read, as Nextflow does: `def x = list.collect { x -> x }` is fine
            names = [x.strip().split(":")[0].strip() for x in m.group(1).split(",")] if m.group(1) else [m.group(2)]
            pending.append((_statement_end(code, i, n), len(scopes), names, i))
            i = m.end()
            continue
        m = re.compile(r"(?:^|(?<=[\n;{]))[ \t]*(" + IDENT + r")\s*=(?![=~])").match(code, i)
        if m and (i == 0 or code[i - 1] in "\n;{"):
            name = m.group(1)
            if not any(name in s["names"] for s in scopes) and name not in ("params",):
                definition = next((s for s in reversed(scopes) if s["kind"] in ("workflow", "process", "function")),
                                  None)
                in_closure = any(s["kind"] == "closure" for s in scopes[scopes.index(definition) + 1:]) \
                    if definition else False
                if definition is None or definition["kind"] == "function":
                    add("undeclared-assignment", i, f"`{name}` was assigned but not declared: declare it with `def`")
                elif in_closure:
                    add("closure-assignment", i, f"`{name}`: variables in a closure should be declared with `def`")
                else:
                    definition["names"].add(name)
            i = m.end()
            continue
        i += 1


def _declare(scopes: list[dict], name: str, pos: int, add) -> None:
    for s in scopes:
        if name in s["names"]:
            add("already-declared", pos, f"`{name}` is already declared in an enclosing scope (shadowing is an error)")
            break
    scopes[-1]["names"].add(name)


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------

CONFIG_ROOTS = {"params", "projectDir", "launchDir", "workDir", "secrets", "env", "true", "false", "null", "new",
                "as", "in", "instanceof"}


def check_config(text: str) -> list[Finding]:
    src = lex(text)
    findings: list[Finding] = []

    def add(rule, pos, msg):
        findings.append(Finding(rule, src.line(pos), msg))

    common_rules(src, findings)
    _config_block(src, 0, len(src.code), [], add)
    return findings


def _config_block(src: Source, start: int, end: int, scopes: list[str], add) -> None:
    code = src.code
    for p in statement_starts(code, start, end):
        line_end = code.find("\n", p)
        line_end = end if line_end < 0 or line_end > end else line_end
        stmt = code[p:line_end]
        if re.match(r"def\s+" + IDENT + r"\s*\(", stmt):
            add("config-function", p, "functions cannot be declared in a config")
        elif re.match(r"def\b|final\b|" + TYPES + r"\s+" + IDENT + r"\s*=", stmt):
            add("config-variable", p, "Variable declarations cannot be mixed with config statements -- use a param")
        elif re.match(r"if\s*\(", stmt):
            add("config-if", p, "If statements cannot be mixed with config statements -- use a dynamic includeConfig")
        elif re.match(r"try\b", stmt):
            add("config-try", p, "Try-catch blocks cannot be mixed with config statements")
        elif re.match(r"(?:import|class)\b", stmt):
            pass  # reported by common_rules
        elif re.match(r"includeConfig\b", stmt):
            if scopes and not (len(scopes) == 2 and scopes[0] == "profiles"):
                add("config-include", p, "Config includes are only allowed at the top-level or in a profile")
            _config_expression(src, p + len("includeConfig"), _statement_end(code, p, end), add)
        elif m := re.match(r"(with(?:Label|Name))\s*:\s*(?:'[^']*'|\"[^\"]*\"|" + IDENT + r")\s*\{", stmt):
            brace = p + m.end() - 1
            _config_block(src, brace + 1, matching(code, brace), scopes + [m.group(1)], add)
        elif m := re.match(r"(" + IDENT + r"(?:\s*\.\s*" + IDENT + r")*)\s*=(?!=)", stmt):
            names = re.sub(r"\s", "", m.group(1)).split(".")
            if len(scopes + names) == 2 and (scopes + names)[0] == "workflow" and names[-1] in ("onComplete", "onError"):
                add("config-handler", p, "workflow handlers in the config are deprecated: use the entry workflow")
            _config_expression(src, p + m.end(), _statement_end(code, p, end), add)
        elif m := re.match(r"(" + IDENT + r"|'[^']*')\s*\{", stmt):
            brace = p + m.end() - 1
            _config_block(src, brace + 1, matching(code, brace), scopes + [m.group(1).strip("'")], add)
        elif scopes and scopes[-1] == "plugins" and re.match(r"id\s*[('\"]", stmt):
            pass
        else:
            add("config-statement", p, f"not a config assignment, block or include: `{stmt.strip()[:60]}`")


def _statement_end(code: str, p: int, end: int) -> int:
    i = p
    while i < end and code[i] != "\n":
        if code[i] in "([{":
            i = matching(code, i) + 1
            continue
        i += 1
    # continuation lines (a trailing operator or a leading '.', '?', ':')
    while True:
        m = re.compile(r"\n[ \t]*(?=[.?:]|&&|\|\|)").match(code, i)
        if not m or m.end() >= end:
            return i
        i = m.end()
        while i < end and code[i] != "\n":
            if code[i] in "([{":
                i = matching(code, i) + 1
                continue
            i += 1


def _config_expression(src: Source, start: int, end: int, add) -> None:
    """Outside closures a config value may reference params and the config constants only (not other
    settings, nor the process context): "Only params can be referenced as variables"."""
    code = src.code
    i = start
    parts = []
    while i < end:
        if code[i] == "{":
            j = matching(code, i)
            i = j + 1  # a closure: evaluated per task, with the process context
            continue
        parts.append((i, code[i]))
        i += 1
    flat = "".join(c for _, c in parts)
    offsets = [p for p, _ in parts]
    exprs = [(m.start(), m.group(1)) for m in re.finditer(r"(?<![\w.$'\"])(" + IDENT + r")", flat)]
    for s in src.strings:
        if start <= s.start < end and not _inside_closure(code, start, s.start):
            for expr in s.interpolations:
                name = re.match(r"\s*(" + IDENT + r")?", expr).group(1)
                if name:
                    exprs.append((None, name))
    for pos, name in exprs:
        if pos is not None and flat[:pos].rstrip().endswith("new"):
            continue  # a class name after `new`
        if pos is not None and re.match(r"\s*(?:\(|:)", flat[pos + len(name):]):
            continue  # a function call (env(...)) or a map key
        if name in CONFIG_ROOTS or re.fullmatch(r"[A-Z]\w*|java|groovy|nextflow|[A-Z]B|GB|MB|KB|TB|h|m|s|ms|d", name):
            continue
        if pos is not None and pos > 0 and re.search(r"\d\s*\.\s*$", flat[:pos]):
            continue  # 30.GB, 4.h
        at = offsets[pos] if pos is not None else start
        add("config-reference", at, f"`{name}` in a config value: only params (and projectDir, launchDir, workDir, "
                                    "secrets, env()) can be referenced outside a closure")


def _inside_closure(code: str, start: int, pos: int) -> bool:
    i = start
    while i < pos:
        if code[i] == "{":
            j = matching(code, i)
            if j > pos:
                return True
            i = j + 1
            continue
        i += 1
    return False


def check_file(path: Path) -> list[Finding]:
    text = Path(path).read_text()
    return check_config(text) if str(path).endswith(".config") else check_script(text)


def config_assignments(text: str) -> list[tuple[tuple[str, ...], str]]:
    """Every config assignment as (scope path + option name, value text), blocks and selectors flattened:
    ``profiles { gpu { process { withLabel: 'x' { cpus = 8 } } } }`` gives
    (('profiles', 'gpu', 'process', "withLabel:x", 'cpus'), '8')."""
    src = lex(text)
    out: list[tuple[tuple[str, ...], str]] = []

    def walk(start: int, end: int, scopes: tuple[str, ...]) -> None:
        code = src.code
        for p in statement_starts(code, start, end):
            line_end = code.find("\n", p)
            stmt = code[p:line_end if 0 <= line_end < end else end]
            if m := re.match(r"(with(?:Label|Name))\s*:\s*('[^']*'|\"[^\"]*\"|" + IDENT + r")\s*\{", stmt):
                brace = p + m.end() - 1
                target = src.text[p + m.start(2):p + m.end(2)].strip("'\"")
                walk(brace + 1, matching(code, brace), scopes + (f"{m.group(1)}:{target}",))
            elif m := re.match(r"(" + IDENT + r"(?:\s*\.\s*" + IDENT + r")*)\s*=(?!=)", stmt):
                names = tuple(re.sub(r"\s", "", m.group(1)).split("."))
                out.append((scopes + names, src.text[p + m.end():_statement_end(code, p, end)].strip()))
            elif m := re.match(r"(" + IDENT + r")\s*\{", stmt):
                brace = p + m.end() - 1
                walk(brace + 1, matching(code, brace), scopes + (m.group(1),))

    walk(0, len(src.code), ())
    return out
