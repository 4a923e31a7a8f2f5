"""Every ``photodex …`` command line photodex shows a user parses with the real CLI parser (issue 26).

Collected, by glob so that moved modules and new docs are found too:

* README.md and docs/**/*.md: each line of a shell code block that runs ``photodex`` (continuations,
  ``&&``, ``$(…)`` and ``# or: photodex …`` comments included) and every inline code span starting
  with ``photodex ``;
* the product source (the packages pyproject.toml ships; the web UI's strings among them): every
  string literal, f-strings included (``{…}`` fields become placeholders), that starts with
  ``photodex `` and every backtick span in a literal that does;
* the parser's own texts (``--help`` descriptions, epilogues and option help).

Placeholders (``FILE``, ``NAME``, ``N``, ``{scope}``, ``~/Pictures``, ``<…>``, ``...``) are given a value
the option they stand for accepts (its first choice, a number for a number). A span that names a
command without arguments (``photodex search``) only has to name a command that exists.

Hints meant for HTTP clients (strings in ui/api) name HTTP things, never a CLI flag.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fnmatch
import functools
import io
import pickle
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from indexer.core.errors import InputError, WriterBusyError
from ui.api.errors import WRITER_BUSY_RETRY_S, writer_busy
from ui.cli.app import build_parser

ROOT = Path(__file__).resolve().parents[1]
SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh"}
PLACEHOLDER = re.compile(r"""(?x)^(?:
      [A-Z][A-Z0-9_]*(?:[=.:][A-Za-z0-9_.]*)?   # FILE, NAME, N, KEY=VALUE, FILE.json, HEAD:6379
    | <[^>]*> | \.\.\.|… | \{[^}]*\}             # <repo>, ..., …, an f-string field
    | ~/\S* )$""")
SPAN = re.compile(r"``((?:[^`\n]|\n(?!\s*\n))+?)``|`((?:[^`\n]|\n(?!\s*\n))+)`")  # within a paragraph
COMMAND_START = re.compile(r"(?<![\w./-])photodex (?=[a-z])")


@dataclass(frozen=True)
class Shown:
    """One command line as a user sees it, and where."""

    where: str  # path:line (or the command whose --help shows it)
    line: str  # as shown, from "photodex" on
    shell: bool  # from a shell code block: quotes and operators are the shell's


# ---- collecting ----------------------------------------------------------------------------------
def product_packages() -> list[Path]:
    """The top-level packages pyproject.toml ships (``include = ["indexer*", ...]``)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted(p.parent for p in ROOT.glob("*/__init__.py")
                  if any(fnmatch.fnmatch(p.parent.name, pat) for pat in patterns))


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]


def spans(text: str) -> Iterator[tuple[int, str]]:
    """(offset, text) of each inline code span (``x`` or `x`) that starts with ``photodex ``."""
    for m in SPAN.finditer(text):
        inner = " ".join((m.group(1) or m.group(2)).split())  # a span wrapped onto the next line is one
        if inner.startswith("photodex "):
            yield m.start(), inner


def split_comment(line: str) -> tuple[str, str]:
    """A shell line's code and its ``# comment`` (a ``#`` outside quotes, at a word's start)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i + 1:]
    return line, ""


def shell_commands(code: str) -> Iterator[str]:
    """The ``photodex …`` part of each simple command in a shell line (after ``&&``, ``|``, ``$(``,
    ``docker compose run photodex``, ``VAR=x photodex``)."""
    lex = shlex.shlex(code, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    words: list[str] = []
    for tok in [*lex, ";"]:
        if tok and all(c in "();<>|&" for c in tok):
            if "photodex" in words:
                yield shlex.join(words[words.index("photodex"):])
            words = []
        else:
            words.append(tok)


def comment_commands(comment: str) -> Iterator[str]:
    """Commands a comment shows outside backticks (``# or: photodex similar --id 1234``), to a ``;``."""
    for m in COMMAND_START.finditer(comment):
        yield re.split(r";|\s\(|\)|\s{3,}", comment[m.start():])[0].strip().rstrip(".,")


def from_markdown(path: Path, root: Path = ROOT) -> Iterator[Shown]:
    rel = path.relative_to(root)
    lines = path.read_text().splitlines()
    prose: list[str] = []  # the file with shell blocks and fences blanked: spans are found over whole paragraphs
    fence: str | None = None
    lang = ""
    pending: list[tuple[int, str]] = []  # a shell line continued with a trailing backslash
    for no, raw in enumerate(lines, 1):
        stripped = raw.strip()
        shell = fence is not None and lang in SHELL_LANGS
        prose.append("" if shell or stripped.startswith(("```", "~~~")) else raw)
        if stripped.startswith(("```", "~~~")):
            if fence is None:
                fence, lang = stripped[:3], stripped[3:].strip().lower()
            elif stripped.startswith(fence):
                fence = None
            continue
        if shell:
            code, comment = split_comment(raw)
            if code.rstrip().endswith("\\"):
                pending.append((no, code.rstrip()[:-1]))
                continue
            start = pending[0][0] if pending else no
            code = " ".join([*(c for _, c in pending), code]).strip()
            pending = []
            code = code[2:] if code.startswith("$ ") else code
            for cmd in shell_commands(code):
                yield Shown(f"{rel}:{start}", cmd, shell=True)
            for _, span in spans(comment):
                yield Shown(f"{rel}:{no}", span, shell=False)
            for cmd in comment_commands(SPAN.sub(" ", comment)):
                yield Shown(f"{rel}:{no}", cmd, shell=True)
    text = "\n".join(prose)  # prose, and code blocks that are not shell (diagrams): inline spans only
    for offset, span in spans(text):
        yield Shown(f"{rel}:{text.count(chr(10), 0, offset) + 1}", span, shell=False)


def _docstring_ids(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def string_literals(path: Path) -> Iterator[tuple[int, str, bool]]:
    """(line, text, is_docstring) of each string literal; f-string fields become ``{expr}``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docs = _docstring_ids(tree)
    parts: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts.update(id(v) for v in node.values)
            text = "".join(v.value if isinstance(v, ast.Constant) else "{" + ast.unparse(v.value) + "}"
                           for v in node.values)
            yield node.lineno, text, False
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts:
            yield node.lineno, node.value, id(node) in docs


def from_text(where_file: str, first_line: int, text: str, docstring: bool) -> Iterator[Shown]:
    """A literal's spans, and the literal itself (or a clause after ``: ``) when it starts with a command."""
    for offset, span in spans(text):
        yield Shown(f"{where_file}:{first_line + text.count(chr(10), 0, offset)}", span, shell=False)
    if docstring:
        return
    bare = SPAN.sub(" ", text)
    for m in COMMAND_START.finditer(bare):
        if m.start() == len(bare) - len(bare.lstrip()) or bare[:m.start()].endswith(": "):
            line = re.split(r";|\n|\s\(", bare[m.start():])[0].strip().rstrip(".,")
            yield Shown(f"{where_file}:{first_line + text.count(chr(10), 0, m.start())}", line, shell=False)


def from_source() -> Iterator[Shown]:
    for package in product_packages():
        for path in sorted(package.glob("**/*.py")):
            rel = str(path.relative_to(ROOT))
            for line, text, docstring in string_literals(path):
                if "photodex " in text:
                    yield from from_text(rel, line, text, docstring)


def walk_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) \
        -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk_parsers(sub, (*path, name))


def from_help() -> Iterator[Shown]:
    for path, parser in walk_parsers(build_parser()):
        where = f"`{' '.join(('photodex', *path, '--help'))}`"
        texts = [parser.description, parser.epilog, *(a.help for a in parser._actions)]
        for text in filter(None, texts):
            yield from from_text(where, 0, str(text), docstring=False)
            for line in str(text).splitlines():  # an epilogue's example lines
                if line.strip().startswith("photodex "):
                    yield Shown(where, line.strip(), shell=True)


@functools.cache
def shown_commands() -> tuple[Shown, ...]:
    found = [*(s for md in markdown_files() for s in from_markdown(md)), *from_source(), *from_help()]
    return tuple(dict.fromkeys(found))


# ---- parsing -------------------------------------------------------------------------------------
class ParseFailed(Exception):
    pass


class HelpShown(Exception):
    pass


def quiet_parser() -> argparse.ArgumentParser:
    """The real parser, each of its (sub)parsers raising instead of printing and calling sys.exit."""
    root = build_parser()

    def error(message: str) -> None:
        raise ParseFailed(message)

    def exit_(status: int = 0, message: str | None = None) -> None:
        if status:
            raise ParseFailed(message or f"exit {status}")
        raise HelpShown()

    for _, p in walk_parsers(root):
        p.error = error  # type: ignore[method-assign]
        p.exit = exit_  # type: ignore[method-assign]
    return root


PARSER = quiet_parser()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _value_for(action: argparse.Action | None, token: str) -> str:
    """A value ``action`` accepts for the placeholder ``token`` (the token itself when any string will do)."""
    if action is None or not PLACEHOLDER.match(token):
        return token
    if action.choices:
        return str(next(iter(action.choices)))
    if action.type is None or action.type is str:
        return token
    for candidate in (token, "1", "0.5", "a", "k=v", "/"):
        try:
            action.type(candidate)  # type: ignore[misc, operator]
            return candidate
        except Exception:  # noqa: BLE001 - the next candidate then
            continue
    return token


def fill_placeholders(tokens: list[str]) -> list[str]:
    """``tokens`` with each placeholder replaced by a value the option or positional it binds to accepts.

    Binding follows argparse's rules closely enough to pick values; the verdict is the real parser's."""
    parser, out, i = PARSER, [], 0
    positionals: list[argparse.Action] = []
    pending: argparse.Action | None = None  # an option waiting for its value
    seen_positional = False

    def reset(p: argparse.ArgumentParser) -> list[argparse.Action]:
        return [a for a in p._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]

    positionals = reset(parser)
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        subs = _subcommands(parser)
        if pending is not None:
            out.append(_value_for(pending, tok))
            pending = None
        elif tok.startswith("-") and len(tok) > 1 and not re.fullmatch(r"-[\d.]+", tok):
            opt, eq, val = tok.partition("=")
            action = parser._option_string_actions.get(opt)
            if eq:
                out.append(f"{opt}={_value_for(action, val)}")
            else:
                out.append(tok)
                if action is not None and action.nargs != 0:
                    pending = action
        elif tok in subs and not seen_positional:
            parser = subs[tok]
            positionals = reset(parser)
            out.append(tok)
        else:
            seen_positional = True
            action = positionals[0] if positionals else None
            out.append(_value_for(action, tok))
            if action is not None and action.nargs in (None, "?", 1):
                positionals.pop(0)
    return out


def names_a_command(tokens: list[str]) -> bool:
    """``tokens`` are only (sub)command names, ending at a real command (``search``, ``policy set``)."""
    parser = PARSER
    for tok in tokens:
        subs = _subcommands(parser)
        if tok not in subs:
            return False
        parser = subs[tok]
    return True


def tokenize(shown: Shown) -> list[str]:
    tokens = shlex.split(shown.line)
    tokens = [t.removeprefix("[").removesuffix("]") for t in tokens]  # [--force] [NAME]: optional, included
    if not shown.shell:  # in prose, a|b lists alternatives: the first is shown
        tokens = [t.split("|")[0] if "|" in t and not t.startswith("|") else t for t in tokens]
    assert tokens[0] == "photodex"
    return tokens[1:]


def parse_error(shown: Shown) -> str | None:
    """Why ``shown`` does not parse with the real CLI parser, or None when it does."""
    try:
        tokens = tokenize(shown)
    except ValueError as exc:
        return f"cannot be split into words: {exc}"
    if tokens and names_a_command(tokens):
        return None
    args = fill_placeholders(tokens)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            PARSER.parse_args(args)
    except HelpShown:
        return None
    except ParseFailed as exc:
        return f"{exc} (parsed as: photodex {shlex.join(args)})"
    except SystemExit as exc:  # a parser this test did not patch
        return f"exit {exc.code} (parsed as: photodex {shlex.join(args)})"
    return None


# ---- tests ---------------------------------------------------------------------------------------
def test_the_collector_finds_commands_in_every_kind_of_place():
    found = shown_commands()
    wheres = {s.where.split(":")[0] for s in found}
    assert "README.md" in wheres and any(w.startswith("docs/") for w in wheres)
    assert any(w.startswith("ui/web/") for w in wheres) and any(w.startswith("ui/api/") for w in wheres)
    assert any(w.startswith("ui/cli/") for w in wheres)
    assert any(w.startswith("`photodex") for w in wheres)  # from --help texts
    assert len(found) > 60


def test_every_command_shown_to_a_user_parses():
    failures = [f"{s.where}: `{s.line}`: {err}" for s in shown_commands() if (err := parse_error(s))]
    assert not failures, "commands shown to users that photodex does not accept:\n" + "\n".join(failures)


@pytest.mark.parametrize("line", [
    "photodex moderation policy set FILE --activate",  # the Moderation page's old hint (issue 26)
    "photodex policy activate NAME --versoin N",
    "photodex apikey create NAME --scope superuser",
    "photodex search --caption-weight W",  # the query is missing
    "photodex web",
])
def test_a_wrong_hint_fails(line):
    """The check can fail: known-bad lines are refused with the parser's reason."""
    assert parse_error(Shown("planted", line, shell=False))


def test_a_bare_command_name_only_has_to_exist():
    assert parse_error(Shown("planted", "photodex search", shell=False)) is None  # names the command
    assert parse_error(Shown("planted", "photodex eval zeroshot", shell=False)) is None
    assert "invalid choice" in parse_error(Shown("planted", "photodex eval zeroshoot", shell=False))
    with pytest.raises(ParseFailed, match="required"):  # as a line to run, it needs its query
        PARSER.parse_args(["search"])


@pytest.mark.parametrize("line", [
    "photodex policy set FILE --activate",
    "photodex apikey create NAME --scope {scope}",
    "photodex policy show [NAME] [--version N]",
    "photodex reindex --shards N",
    "photodex index ~/Pictures /mnt/phone --exclude '*/.thumbnails/*'",
    "photodex search TEXT --caption-weight W -k N",
])
def test_placeholders_are_filled_with_values_the_parser_accepts(line):
    assert parse_error(Shown("planted", line, shell=False)) is None


def test_a_planted_wrong_hint_in_the_sources_is_found(tmp_path):
    """A bad hint in a message, a markdown code block or a comment is collected and refused."""
    md = tmp_path / "x.md"
    md.write_text("Run `photodex moderation policy set FILE`.\n\n```bash\nphotodex index ~/Pictures && "
                  "photodex serach dog   # or: photodex simliar --id 3\n```\n\nA span wrapped `photodex\n"
                  "reindex --shrads 4` over two lines.\n")
    py = tmp_path / "x.py"
    py.write_text('def f(scope):\n'
                  '    raise ValueError(f"needs a key (`photodex apikey make NAME --scope {scope}`)")\n\n\n'
                  'st.info("No policy yet: `photodex moderation policy set FILE --activate` "\n'
                  '        "(or `POST /api/v1/policies?activate=true`).")\n')
    shown = [*from_markdown(md, root=tmp_path), *(s for line, text, doc in string_literals(py)
                                                  for s in from_text("x.py", line, text, doc))]
    assert {s.line for s in shown} >= {"photodex index '~/Pictures'"}  # collected, and fine
    bad = {s.line: s.where for s in shown if parse_error(s)}
    assert bad == {"photodex moderation policy set FILE": "x.md:1", "photodex serach dog": "x.md:4",
                   "photodex simliar --id 3": "x.md:4", "photodex reindex --shrads 4": "x.md:7",
                   "photodex apikey make NAME --scope {scope}": "x.py:2",
                   "photodex moderation policy set FILE --activate": "x.py:5"}


# ---- hints for HTTP clients ----------------------------------------------------------------------
CLI_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def api_packages() -> list[Path]:
    return [p for pkg in product_packages() for p in pkg.glob("**/api") if p.is_dir()]


def test_api_strings_name_no_cli_flags():
    """An HTTP client cannot pass ``--wait``: strings in ui/api name routes, fields and headers instead."""
    assert api_packages(), "no api package found"
    offenders = []
    for package in api_packages():
        for path in sorted(package.glob("**/*.py")):
            for line, text, docstring in string_literals(path):
                if not docstring and CLI_FLAG.search(text):
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    assert not offenders, "CLI flags in strings of the HTTP API:\n" + "\n".join(offenders)


def test_the_api_flag_check_can_fail():
    assert CLI_FLAG.search("collection is busy; try again when it ends, or pass --wait")
    assert not CLI_FLAG.search("retry after 5 s (Retry-After); GET /api/v1/index/jobs/abc; X-API-Key; a--b")


def test_an_error_is_worded_for_the_cli_and_for_http_clients():
    """``str(exc)`` (the CLI's line) carries the CLI hint, ``for_http()`` (the API's message) the HTTP one;
    both survive pickling (errors cross process boundaries in Ray and decode workers)."""
    exc = InputError("no indexed photos", hint="run `photodex index PATH` first",
                     http_hint="start an index job first (POST /api/v1/index/jobs)")
    assert str(exc) == "no indexed photos; run `photodex index PATH` first"
    assert exc.for_http() == "no indexed photos; start an index job first (POST /api/v1/index/jobs)"
    again = pickle.loads(pickle.dumps(exc))
    assert (str(again), again.for_http()) == (str(exc), exc.for_http()) and isinstance(again, ValueError)
    assert InputError("plain").for_http() == str(InputError("plain")) == "plain"

    busy = WriterBusyError("collection c is being written by pid 7", holder={"pid": 7, "job": "ab" * 16},
                           hint="try again when it ends, or pass --wait")
    assert "--wait" in str(busy) and "--wait" not in busy.for_http()
    api = writer_busy(pickle.loads(pickle.dumps(busy)), job_route=f"/api/v1/index/jobs/{'ab' * 16}")
    assert api.status == 409 and api.code == "writer_busy" and api.headers == {"Retry-After": str(WRITER_BUSY_RETRY_S)}
    assert f"GET /api/v1/index/jobs/{'ab' * 16}" in api.message and not CLI_FLAG.search(api.message)
    assert api.detail == {"job_id": "ab" * 16, "retry_after_s": WRITER_BUSY_RETRY_S}
