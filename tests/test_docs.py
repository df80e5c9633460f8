"""The documentation: every shell block of README.md and docs/*.md carries a marker, relative links and anchors
resolve, and what each marker promises holds (docs/developing.md, "Shell blocks and their markers"):
`run` blocks run for real, page by page, in an empty folder; `compose` commands compose with the real config;
`tested-by` names a test that exists and names the command's options; `make` targets exist."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELLS = {"bash", "sh", "shell", "console"}
NEEDS = {"real-data", "weights", "runs", "gpu", "display", "cluster", "network", "long-run", "checkout"}
HYDRA_TASKS = {"train", "eval", "explain", "predict", "demo", "export", "align"}
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w-]*)")
MARKER = re.compile(r"^<!--\s*docs:\s*(.*?)\s*-->$")
LINK = re.compile(r"\]\(([^)\s]+)\)")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    body: list[str]
    marker: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    @property
    def kind(self) -> str:
        return (self.marker or "").split()[0] if self.marker else ""


def read_blocks(page: Path) -> list[Block]:
    """Every top-level fenced block of a page with the marker comment on the line before it (None: no marker)."""
    lines, blocks, i = page.read_text().splitlines(), [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i].strip())
        if not opening:
            i += 1
            continue
        indent = len(lines[i]) - len(lines[i].lstrip())
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(opening[1]):
            j += 1
        before = MARKER.match(lines[i - 1].strip()) if i else None
        body = [line[indent:] for line in lines[i + 1 : j]]
        blocks.append(Block(page, i + 1, opening[2], body, before[1] if before else None))
        i = j + 1
    return blocks


BLOCKS = [b for page in PAGES for b in read_blocks(page)]
SHELL_BLOCKS = [b for b in BLOCKS if b.lang in SHELLS]


def commands(block: Block) -> list[str]:
    """The block's command lines, continuations joined; in a console block only the `$ ` lines."""
    out, pending = [], ""
    for line in block.body:
        if block.lang == "console":
            if not line.startswith("$ ") and not pending:
                continue
            line = line[2:] if line.startswith("$ ") else line
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        if (pending + line).strip():
            out.append(pending + line)
        pending = ""
    return out


def ferlab_args(line: str) -> list[str] | None:
    """The arguments after `ferlab` on a command line (comments dropped); None for another command."""
    words = shlex.split(line, comments=True)
    return words[1:] if words[:1] == ["ferlab"] else None


def test_every_shell_block_has_a_known_marker():
    problems = []
    for b in SHELL_BLOCKS:
        if b.marker is None:
            problems.append(f"{b.where}: a {b.lang} block without <!-- docs: ... --> on the line before it")
        elif b.kind == "needs":
            what = {w.strip() for w in b.marker.split(None, 1)[1:2][0].split(",")} if " " in b.marker else set()
            if not what or what - NEEDS:
                problems.append(f"{b.where}: 'needs' takes one or more of {sorted(NEEDS)}, got {b.marker!r}")
        elif b.kind not in ("run", "compose", "make", "tested-by"):
            problems.append(f"{b.where}: unknown marker {b.marker!r}")
    for b in BLOCKS:
        if not b.lang:
            problems.append(f"{b.where}: a fenced block without a language (```text for plain text)")
    assert not problems, "\n".join(problems)


def _slug(heading: str) -> str:
    """Python-Markdown's toc slug, as MkDocs makes anchors."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", text)).strip("-")


def _anchors(page: Path) -> set[str]:
    heads = [line.lstrip("#").strip() for line in page.read_text().splitlines() if re.match(r"#{1,6} ", line)]
    return {_slug(h) for h in heads}


def test_relative_links_and_anchors_resolve():
    problems = []
    for page in PAGES:
        in_fence = False
        for n, line in enumerate(page.read_text().splitlines(), 1):
            if FENCE.match(line.strip()):
                in_fence = not in_fence
            if in_fence:
                continue
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):
                    continue  # http(s):, mailto:
                path, _, anchor = target.partition("#")
                dest = (page.parent / path).resolve() if path else page
                if not dest.is_file():
                    problems.append(f"{page.relative_to(REPO)}:{n}: {target}: no such file")
                elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                    problems.append(f"{page.relative_to(REPO)}:{n}: {target}: no heading #{anchor} in {dest.name}")
    assert not problems, "\n".join(problems)


def test_every_config_file_is_in_the_reference():
    reference = (REPO / "docs" / "configuration.md").read_text()
    files = [p.relative_to(REPO).as_posix() for p in (REPO / "conf").rglob("*.yaml")
             if p.relative_to(REPO / "conf").parts[0] not in ("experiment", "local")]
    missing = [f for f in files if f'--8<-- "{f}"' not in reference]
    assert files and not missing, f"add to docs/configuration.md: {missing}"


def test_make_blocks_name_real_targets():
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    wrong = [(b.where, line) for b in SHELL_BLOCKS if b.kind == "make" for line in commands(b)
             if shlex.split(line, comments=True)[:1] != ["make"] or shlex.split(line, comments=True)[1] not in targets]
    assert not wrong, wrong


def test_tested_by_names_a_test_that_names_the_options():
    problems = []
    for b in (b for b in SHELL_BLOCKS if b.kind == "tested-by"):
        ref = b.marker.split(None, 1)[1] if " " in b.marker else ""
        path, _, name = ref.partition("::")
        source = (REPO / path).read_text() if path and (REPO / path).is_file() else ""
        if not re.search(rf"^def {re.escape(name)}\(", source, re.M) or not name:
            problems.append(f"{b.where}: no test {ref!r}")
            continue
        for line in commands(b):
            args = ferlab_args(line) or []
            # key=value options by their key (tests build values in tmp_path), other words as written
            missing = [a for a in args[1:] if a.split("=", 1)[0] not in source]
            if missing:
                problems.append(f"{b.where}: {ref} does not name {missing}")
    assert not problems, "\n".join(problems)


def _compose_lines():
    return [(b.where, line) for b in SHELL_BLOCKS if b.kind == "compose" for line in commands(b)]


@pytest.mark.slow  # Hydra composes ~60 commands
def test_compose_blocks_compose_with_the_real_config(tmp_path, monkeypatch):
    """Each `ferlab <task>` command of a compose block composes with ferlab's config tree (Hydra rejects unknown
    groups, options and keys); a sweep's swept values are left out, the rest composed as its first job would be.
    One Hydra initialisation for all of them: composing is what is checked, not the run directory."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ferlab.config.runner import CONF_DIR

    monkeypatch.chdir(tmp_path)  # no ./conf of the caller's folder
    parser, problems = OverridesParser.create(), []
    lines = _compose_lines()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for where, line in lines:
            args = ferlab_args(line)
            if not args or args[0] not in HYDRA_TASKS:
                problems.append(f"{where}: compose blocks hold `ferlab <task>` commands only: {line.strip()}")
                continue
            overrides = [a for a in args[1:] if a not in ("-m", "--multirun", "--cfg", "job", "--resolve")]
            if "-m" in args or "--multirun" in args:
                overrides = [o for o in overrides if not parser.parse_overrides([o])[0].is_sweep_override()]
            try:
                compose(args[0], [f"paths.root_dir={tmp_path}", *overrides], return_hydra_config=True)
            except Exception as e:  # noqa: BLE001 - every failure is reported with its line
                problems.append(f"{where}: {line.strip()}\n    {type(e).__name__}: {str(e).splitlines()[0]}")
    GlobalHydra.instance().clear()
    assert lines and not problems, "\n".join(problems)


RUN_PAGES = sorted({b.page for b in SHELL_BLOCKS if b.kind == "run"})


def _script(blocks: list[Block]) -> tuple[str, list[tuple[str, str, str]]]:
    """One bash script running the page's run blocks in order; console commands write their output to files,
    returned with the output the page shows: (file, command, expected)."""
    parts, checks = ["set -e"], []
    for b in blocks:
        if b.lang != "console":
            parts.append("\n".join(b.body))
            continue
        expected: list[str] = []
        for line in [*b.body, "$ "]:
            if line.startswith("$ "):
                if expected and checks:
                    checks[-1] = (*checks[-1][:2], " ".join(expected))
                expected = []
                if line.strip() != "$":
                    out = f".docs-out-{len(checks)}"
                    parts.append(f"{{ {line[2:]} ; }} > {out} 2>&1 || true")
                    checks.append((out, line[2:], ""))
            else:
                expected.append(line)
    return "\n".join(parts), checks


def _matches(expected: str, actual: str) -> bool:
    """The page's output, whitespace-insensitive, `...` standing for any text, found in what the command printed."""
    actual = " ".join(actual.split())
    pattern = ".*?".join(re.escape(" ".join(piece.split())) for piece in expected.split("..."))
    return re.search(pattern, actual, re.S) is not None


# The run blocks' `ferlab`: a shim that hands its command line, folder, environment and stdin/stdout/stderr to a
# server forked from the suite's forkserver (torch, Lightning, Hydra and ferlab imported, tests/conftest.py), which
# forks `ferlab <args>` from itself and answers its exit status. A new interpreter spent ~3-5 s importing per command
# (a page runs up to six); what a command prints and returns is the same. The entry point itself: test_cli.py.
SHIM = """#!{python} -S
import json, os, socket, sys
request = json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
with socket.socket(socket.AF_UNIX) as server:
    server.connect({address!r})
    socket.send_fds(server, [len(request).to_bytes(8, "big") + request], [0, 1, 2])
    status = int(server.makefile().readline())
sys.exit(status if status >= 0 else 128 - status)
"""


def _ferlab_child(request: dict, fds: list[int]) -> None:
    """`ferlab <argv>` in this forked process with the shim's stdin/stdout/stderr, folder and environment, exiting
    as a new interpreter would (conftest's exit_as_ferlab)."""
    from tests.conftest import exit_as_ferlab

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    exit_as_ferlab(request["argv"], request["cwd"], request["env"])


def _serve(address: str) -> None:
    """Run each shim's command in a process forked from this one, one at a time (a page's script is sequential)."""
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(address + ".tmp")
        listener.listen()
        os.rename(address + ".tmp", address)  # connectable once it exists
        while True:
            conn, _ = listener.accept()
            with conn:
                head, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
                size, data = int.from_bytes(head[:8], "big"), head[8:]
                while len(data) < size:
                    data += conn.recv(1 << 16)
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    _ferlab_child(json.loads(data), fds)
                for fd in fds:
                    os.close(fd)
                conn.sendall(f"{os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}\n".encode())


@pytest.fixture(scope="module")
def ferlab_bin(tmp_path_factory) -> Path:
    """A folder holding the `ferlab` shim of this checkout, its server running."""
    from tests.conftest import forkserver

    folder = tmp_path_factory.mktemp("ferlab_bin")
    address = str(folder / "ferlab.sock")
    server = forkserver().Process(target=_serve, args=(address,))  # not a daemon: its commands may start processes
    server.start()
    deadline = time.monotonic() + 120
    while not os.path.exists(address):
        assert server.is_alive() and time.monotonic() < deadline, "the run blocks' ferlab server did not start"
        time.sleep(0.02)
    (folder / "ferlab").write_text(SHIM.format(python=sys.executable, address=address))
    (folder / "ferlab").chmod(0o755)
    yield folder
    server.kill()
    server.join()


@pytest.mark.slow  # real ferlab commands, page by page
@pytest.mark.parametrize("page", RUN_PAGES, ids=[p.name for p in RUN_PAGES])
def test_run_blocks_run_as_written(page, tmp_path, ferlab_bin):
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERLAB_")}
    env.update(PATH=f"{ferlab_bin}{os.pathsep}{env.get('PATH', '')}", HOME=str(tmp_path), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    script, checks = _script([b for b in SHELL_BLOCKS if b.page == page and b.kind == "run"])
    r = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{page.name}: a run block failed\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    for out, command, expected in checks:
        printed = next(work.rglob(out)).read_text()
        assert _matches(expected, printed), f"{page.name}: `{command}` printed\n{printed}\nnot\n{expected}"
