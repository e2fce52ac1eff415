"""README.md and docs/*.md agree with the code.

- docs/layout.md lists every module of the package and nothing that does not exist.
- Every relative link resolves: the file exists, and a `#anchor` names a heading of the file it
  points to (GitHub's slugs).
- Every ```sh block is runnable, by convention: each `bin/train`, `bin/evaluate`, `bin/export` or
  `bin/compare` command in it parses with the flags its entry point defines (absl's parser in a
  subprocess, as the entry point parses; nothing is run). Commands with placeholders belong in
  ```text blocks.
- Every flag named in inline code (`--name`, `bin/evaluate --name`, `make ... ARGS="--name"`)
  is a flag of an entry point; inline code that starts with another program is not ours to check.
"""

import functools
import glob
import json
import os
import re
import shlex

import pytest

import support

ROOT = support.ROOT
PACKAGE = os.path.join(ROOT, "tf_metric_robust")
LAYOUT = os.path.join(ROOT, "docs", "layout.md")
ENTRY_POINTS = ("train", "evaluate", "export", "compare")
BIN = re.compile(r"(?:\S*/)?bin/(train|evaluate|export|compare)")
FENCE = re.compile(r"^( *)```(\S*)\s*$")
HELP_FLAGS = {"help", "helpshort", "helpfull", "helpxml", "?", "h"}
SPECIAL_FLAGS = {"flagfile", "undefok"}  # handled by absl's parser itself, never defined


def _docs():
    return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _split_fences(text):
    """(prose lines with fenced blocks blanked out, [(language, first line number, block text)])."""
    prose, blocks, block = [], [], None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if block is None and match:
            block = (match.group(2), number + 1, len(match.group(1)), [])
            prose.append("")
        elif block is not None and match and not match.group(2):
            language, first, indent, lines = block
            blocks.append((language, first, "\n".join(lines)))
            block = None
            prose.append("")
        elif block is not None:
            block[3].append(line[block[2] :] if line[: block[2]].strip() == "" else line)
            prose.append("")
        else:
            prose.append(line)
    return prose, blocks


def _rel(path):
    return os.path.relpath(path, ROOT)


# --- Layout -------------------------------------------------------------------------------------


def _layout_block():
    return next(text for _, _, text in _split_fences(_read(LAYOUT))[1])


def _listed_modules():
    """Paths named in the layout block below 'tf_metric_robust/': two spaces in, a module or a
    folder ('config/'); four spaces in, a module of the folder above."""
    listed, folder, inside = set(), "", False
    for line in _layout_block().splitlines():
        if line.startswith("tf_metric_robust/"):
            inside = True
            continue
        if inside and line and not line.startswith(" "):
            break
        match = re.match(r"^( {2}| {4})(\S.*)", line) if inside else None
        if not match:
            continue
        indent, rest = match.groups()
        names = [n.strip() for n in re.split(r" {2,}", rest)[0].split(",") if n.strip()]
        for name in names:  # 'a.py, b.py   what they are' lists several modules
            if len(indent) == 2:
                folder = name if name.endswith("/") else ""
                listed.add(name)
            else:
                listed.add(folder + name)
    return listed


def _tree_modules():
    found = set()
    for directory, folders, files in os.walk(PACKAGE):
        folders[:] = [f for f in folders if f != "__pycache__"]
        relative = os.path.relpath(directory, PACKAGE)
        prefix = "" if relative == "." else relative.replace(os.sep, "/") + "/"
        if prefix:
            found.add(prefix)
        found.update(
            prefix + name for name in files if name.endswith(".py") and name != "__init__.py"
        )
    return found


def test_layout_lists_every_module_and_only_existing_ones():
    listed, tree = _listed_modules(), _tree_modules()
    assert tree - listed == set(), "modules missing from docs/layout.md"
    assert listed - tree == set(), "docs/layout.md names modules that do not exist"


# --- Links --------------------------------------------------------------------------------------


def github_slug(heading):
    """The anchor GitHub gives a heading: its rendered text, lower-cased, punctuation and symbols
    dropped (letters, digits, '_' and '-' stay), spaces as '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


@functools.cache
def anchors(path):
    """Every heading anchor of a markdown file; repeated slugs get -1, -2, ... as on GitHub."""
    found, seen = set(), {}
    for line in _split_fences(_read(path))[0]:
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = github_slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def _links(path):
    """(line number, target) of every markdown link and image outside code."""
    for number, line in enumerate(_split_fences(_read(path))[0], 1):
        line = re.sub(r"(`+).+?\1", "", line)
        for target in re.findall(r"\[[^\]]*\]\(<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\)", line):
            yield number, target


def broken_links(path):
    broken = []
    for number, target in _links(path):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (
            os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        )
        where = f"{_rel(path)}:{number}: {target}"
        if not os.path.exists(linked):
            broken.append(f"{where} (no such file)")
        elif anchor and linked.endswith(".md") and anchor not in anchors(linked):
            broken.append(f"{where} (no heading with that anchor in {_rel(linked)})")
    return broken


def test_every_relative_link_resolves():
    broken = [problem for path in _docs() for problem in broken_links(path)]
    assert broken == []


def test_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## `make train` and `make test`\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Title\n[ok](other.md#make-train-and-make-test) [self](#title) [web](https://x.org/a)\n"
        "[gone](missing.md) [bad](other.md#nothing) `[code](missing.md)`\n"
        "```sh\n[in a block](missing.md)\n```\n"
    )
    problems = broken_links(str(doc))
    assert len(problems) == 2, problems
    assert "missing.md (no such file)" in problems[0] and "other.md#nothing" in problems[1]


def test_github_slugs():
    assert github_slug("Evaluating on a GPU machine and on several machines") == (
        "evaluating-on-a-gpu-machine-and-on-several-machines"
    )
    assert github_slug("Cheap negatives: memory bank vs the authors' extra pool (mnist5k)") == (
        "cheap-negatives-memory-bank-vs-the-authors-extra-pool-mnist5k"
    )
    assert github_slug("Wall time of `make train` and `make test`") == (
        "wall-time-of-make-train-and-make-test"
    )
    assert github_slug("[Serving](x.md) and security") == "serving-and-security"


# --- Commands and flags -------------------------------------------------------------------------

_PARSE = """
import json
import sys

from absl import app, flags

from tf_metric_robust import cli

getattr(cli, "define_" + sys.argv[1] + "_flags")()
app.define_help_flags()  # as absl's app.run does for the entry point
FLAGS = flags.FLAGS
errors = []
for argv in json.loads(sys.stdin.read()):
    FLAGS.unparse_flags()
    try:
        FLAGS(["bin/" + sys.argv[1]] + argv)
        errors.append(None)
    except flags.Error as error:
        errors.append(" ".join(str(error).split()))
names = [name for name in FLAGS]
booleans = [name for name in FLAGS if FLAGS[name].boolean]
print(json.dumps({"flags": names, "booleans": booleans, "errors": errors}))
"""


def parse_with_entry_point(entry_point, commands):
    """Parse each argv list with `entry_point`'s flags in one subprocess: (errors in order, flag
    names the entry point accepts, its 'no' forms included)."""
    result = support.run_python(_PARSE, entry_point, stdin=json.dumps(commands), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    accepted = set(out["flags"]) | {"no" + name for name in out["booleans"]} | SPECIAL_FLAGS
    return out["errors"], accepted


@functools.cache
def entry_point_flags(entry_point):
    return frozenset(parse_with_entry_point(entry_point, [])[1])


def _flag_name(arg):
    return arg.lstrip("-").split("=", 1)[0]


def shell_commands(block):
    """(entry point, argv) of every bin/<entry point> command in a shell block: continuation
    lines joined, environment assignments and interpreters before the script skipped."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        start = next((i for i, token in enumerate(tokens) if BIN.fullmatch(token)), None)
        if start is None:
            continue
        argv = []
        for token in tokens[start + 1 :]:
            if token in (";", "&&", "||", "|") or token.startswith(">"):
                break
            argv.append(token)
        commands.append((BIN.fullmatch(tokens[start]).group(1), argv))
    return commands


def _runnable_commands():
    """{entry point: [(where, argv)]} from every ```sh block of the documentation."""
    found = {name: [] for name in ENTRY_POINTS}
    for path in _docs():
        for language, first, block in _split_fences(_read(path))[1]:
            if language == "sh":
                for entry_point, argv in shell_commands(block):
                    where = f"{_rel(path)} (block at line {first}): bin/{entry_point}"
                    found[entry_point].append((f"{where} {shlex.join(argv)}", argv))
    return found


@pytest.mark.slow
def test_documented_commands_parse_with_their_entry_points_flags():
    found = _runnable_commands()
    assert all(found[name] for name in ENTRY_POINTS), "every entry point has a documented command"
    failures = []
    for entry_point, commands in found.items():
        argvs = [[arg for arg in argv if _flag_name(arg) not in HELP_FLAGS] for _, argv in commands]
        errors, _ = parse_with_entry_point(entry_point, argvs)
        failures += [f"{where}: {error}" for (where, _), error in zip(commands, errors) if error]
    assert failures == []


def test_command_check_refuses_a_flag_that_does_not_exist():
    block = (
        "# a comment\n"
        'TF_CONFIG=\'{"task": {"index": 0}}\' bin/train --flagfile=configs/mnist5k.flags \\\n'
        "  --model_dir=runs/x --noexport\n"
        "make evaluate\n"
        "bin/train --model_dir=runs/x --no_such_flag=1\n"
        "bin/train --eps=2\n"
    )
    commands = shell_commands(block)
    assert [entry_point for entry_point, _ in commands] == ["train"] * 3
    assert commands[0][1] == [
        "--flagfile=configs/mnist5k.flags",
        "--model_dir=runs/x",
        "--noexport",
    ]
    errors, _ = parse_with_entry_point("train", [argv for _, argv in commands])
    assert errors[0] is None
    assert "no_such_flag" in errors[1]
    assert "--eps" in errors[2]  # out of its range [0, 1]


def inline_flags(line):
    """(entry point or None for any of them, flag name) of the flags named in inline code."""
    named = []
    for _, span in re.findall(r"(`+)(.+?)\1", line):
        words = span.split()
        program = BIN.fullmatch(words[0]) if words else None
        if program or span.startswith("--") or words[:1] == ["make"]:
            names = re.findall(r"(?<![\w-])--(\w+)", span)
            named += [(program.group(1) if program else None, name) for name in names]
    return named


def test_every_flag_named_in_inline_code_exists():
    any_entry_point = set().union(*(entry_point_flags(name) for name in ENTRY_POINTS))
    unknown = []
    for path in _docs():
        for number, line in enumerate(_split_fences(_read(path))[0], 1):
            for entry_point, name in inline_flags(line):
                accepted = entry_point_flags(entry_point) if entry_point else any_entry_point
                if name not in accepted:
                    where = f"bin/{entry_point}" if entry_point else "any entry point"
                    unknown.append(f"{_rel(path)}:{number}: --{name} is not a flag of {where}")
    assert unknown == []


def test_inline_flag_check_reads_only_our_commands():
    line = (
        '`--eps=8/255` and `bin/export --detector=knn`, `make evaluate ARGS="--detection"`, '
        "`tensorboard --bind_all`, `sbatch --requeue`, prose --not_code"
    )
    assert inline_flags(line) == [(None, "eps"), ("export", "detector"), (None, "detection")]
    assert "detector" in entry_point_flags("export") and "bind_all" not in entry_point_flags(
        "export"
    )
    assert "noexport" in entry_point_flags("train") and "flagfile" in entry_point_flags("train")
