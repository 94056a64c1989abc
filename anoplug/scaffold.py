"""``anoplug new-plugin``: render, and later update, a plugin distribution from a copier template.

The template is ``anoplug/templates/plugin`` (``copier.yml`` plus ``template/``), shipped in the
host wheel. A rendered plugin registers one generator and passes the conformance kit as
generated; ``learned=True`` renders a learned method on :class:`anoplug.learned.LearnedGenerator`.

Why a local git repository: copier can only *update* a project from a template that is a git
repository with PEP 440 tags (it re-renders the old version, diffs it against the new one and
applies the diff to the plugin, keeping the author's edits). An installed anoplug is a folder in
site-packages, not a repository, so :func:`template_repo` mirrors the installed template into a
small git repository (default ``~/.cache/anoplug/plugin-template``, or ``$ANOPLUG_TEMPLATE_REPO``)
and tags it with the anoplug version (``v0.1.0``; a changed template under the same version gets
``v0.1.0.post1``, ...). Rendering and updating both go through it, offline, so a plugin made with
one anoplug is brought up to the template of the next with :func:`update_plugin`; the repository
keeps every version it has seen, which is what the update diffs against.
"""

from __future__ import annotations

import keyword
import os
import re
import shutil
import subprocess
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from anoplug.specs import CATEGORIES

#: the template shipped with this anoplug (``copier.yml`` + ``template/``)
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates" / "plugin"
#: environment variable naming the local template repository (default: under the user's cache)
REPO_ENV = "ANOPLUG_TEMPLATE_REPO"
_GIT_ID = ("-c", "user.name=anoplug", "-c", "user.email=anoplug@localhost", "-c", "commit.gpgsign=false",
           "-c", "tag.gpgsign=false", "-c", "init.defaultBranch=main")


class MissingExtraError(ImportError):
    """An optional dependency of this command is not installed (the message names the extra)."""


class TemplateError(ValueError):
    """Copier refused to render or update (dirty plugin tree, downgrade, not a rendered plugin, ...)."""


def _copier() -> tuple[Any, type[Exception]]:
    """The copier module and the error it raises for a refusal meant for the user."""
    try:
        import copier
        from copier.errors import UserMessageError
    except ImportError as e:
        raise MissingExtraError("anoplug new-plugin needs copier, which is not installed: "
                                "pip install 'anoplug[scaffold]'") from e
    return copier, UserMessageError


def _git(*args: str, cwd: Path | None = None) -> str:
    if shutil.which("git") is None:
        raise MissingExtraError("anoplug new-plugin needs git (copier renders and updates through it); install git")
    r = subprocess.run(["git", *_GIT_ID, *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise TemplateError(f"git {' '.join(args)} failed in {cwd}: {(r.stderr or r.stdout).strip()}")
    return r.stdout.strip()


def default_repo() -> Path:
    """Where the local template repository lives: ``$ANOPLUG_TEMPLATE_REPO`` or the user's cache."""
    if os.environ.get(REPO_ENV):
        return Path(os.environ[REPO_ENV]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "anoplug" / "plugin-template"


def _src(repo: Path) -> str:
    """``repo`` as copier records it in ``_src_path``: ``~/...`` when under home, so the answers
    file does not carry one machine's absolute home path."""
    repo = repo.resolve()
    try:
        return "~/" + repo.relative_to(Path.home().resolve()).as_posix()
    except ValueError:
        return repo.as_posix()


@contextmanager
def _locked(repo: Path) -> Iterator[None]:
    """Serialise syncs of one repository between processes (POSIX advisory lock; none elsewhere)."""
    repo.parent.mkdir(parents=True, exist_ok=True)
    with open(repo.parent / f".{repo.name}.lock", "w") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - Windows
            pass
        yield


def _next_tag(version: str, tags: set[str]) -> str:
    """``v<version>`` if free, else the next ``.postN`` of it (PEP 440: sorts after ``version``)."""
    from packaging.version import Version

    v = Version(version)
    if f"v{v}" not in tags:
        return f"v{v}"
    pre = f"{v.pre[0]}{v.pre[1]}" if v.pre else ""
    dev = f".dev{v.dev}" if v.dev is not None else ""
    n = (v.post or 0) + 1
    while f"v{v.base_version}{pre}.post{n}{dev}" in tags:
        n += 1
    return f"v{v.base_version}{pre}.post{n}{dev}"


def template_repo(template_dir: str | Path = TEMPLATE_DIR, repo: str | Path | None = None) -> tuple[Path, str]:
    """Mirror ``template_dir`` into the git repository ``repo`` and return ``(repo, tag)``.

    Unchanged content keeps the tag of the last sync; changed content is committed and tagged
    with the next version (see :func:`_next_tag`). Must be called under :func:`_locked`.
    """
    from anoplug._version import __version__

    template_dir, repo = Path(template_dir), Path(repo) if repo is not None else default_repo()
    if not (template_dir / "copier.yml").is_file():
        raise TemplateError(f"{template_dir} is not a copier template (no copier.yml)")
    if (repo / ".git").is_dir() and not (repo / "copier.yml").is_file() or \
            not (repo / ".git").is_dir() and repo.is_dir() and any(repo.iterdir()):
        raise TemplateError(f"{repo} is not an anoplug template repository; refusing to overwrite it "
                            f"(point ${REPO_ENV} at an empty or new directory)")
    if not (repo / ".git").is_dir():
        repo.mkdir(parents=True, exist_ok=True)
        _git("init", "-q", cwd=repo)
    for child in repo.iterdir():  # the tree becomes exactly the template's
        if child.name != ".git":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    shutil.copytree(template_dir, repo, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.py[co]"))
    _git("add", "-A", cwd=repo)
    has_head = subprocess.run(["git", "rev-parse", "-q", "--verify", "HEAD"], cwd=repo, capture_output=True).returncode == 0
    if has_head and not _git("status", "--porcelain", cwd=repo):
        at_head = _git("tag", "--points-at", "HEAD", cwd=repo).split()
        if at_head:
            from packaging.version import Version

            return repo, max(at_head, key=lambda t: Version(t))
    tag = _next_tag(__version__, set(_git("tag", cwd=repo).split()))
    _git("commit", "-q", "--allow-empty", "-m", f"anoplug plugin template {tag}", cwd=repo)
    _git("tag", tag, cwd=repo)
    return repo, tag


def check_answers(name: str, title: str, category: str) -> str:
    """Validate the answers as the template's validators do (before anything is written); return the title."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
        raise ValueError(f"plugin name {name!r} must be lowercase letters, digits and '-', starting with a letter")
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
    if keyword.iskeyword(name.replace("-", "_")):
        raise ValueError(f"plugin name {name!r} is a Python keyword")
    title = title or "".join(part.capitalize() for part in name.split("-")) + " anomaly generator"
    bad = [c for c in title if unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp")]
    if bad:
        raise ValueError(f"plugin title {title!r} must be one line of printable text (it holds {bad[0]!r})")
    return title


def _in_git_work_tree(path: Path) -> bool:
    r = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=path, capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip() == "true"


def new_plugin(name: str, directory: str | Path = "plugins", *, title: str = "", category: str = "cutpaste",
               learned: bool = False, author: str = "", email: str = "", licence: str = "Apache-2.0",
               repository: str = "", paper_url: str = "", template_dir: str | Path = TEMPLATE_DIR,
               repo: str | Path | None = None, git_init: bool = True) -> Path:
    """Render ``<directory>/anoplug-<name>/`` from the template and return its path; refuses to overwrite.

    ``learned=True`` renders a learned method (``LearnedGenerator``: build, optimisers, training
    step) and its learned-method conformance test instead of a procedural one. No prompts: every
    answer comes from the arguments (empty ones take the template's defaults). Outside a git work
    tree the plugin gets its own ``git init`` (copier updates need the plugin under git).
    """
    title = check_answers(name, title, category)
    root = Path(directory) / f"anoplug-{name}"
    if root.exists():
        raise FileExistsError(f"{root} already exists; not overwriting")
    copier, refused = _copier()
    data: dict[str, Any] = {"name": name, "title": title, "category": category, "learned": learned,
                            "author": author, "email": email, "licence": licence}
    data.update({k: v for k, v in (("repository", repository), ("paper_url", paper_url)) if v})
    repo = Path(repo) if repo is not None else default_repo()
    with _locked(repo):
        repo, tag = template_repo(template_dir, repo)
        try:
            copier.run_copy(_src(repo), root, data=data, defaults=True, vcs_ref=tag, quiet=True, unsafe=False)
        except refused as e:
            raise TemplateError(str(e)) from e
    if git_init and not _in_git_work_tree(root):
        _git("init", "-q", cwd=root)
    return root


def update_plugin(path: str | Path, *, template_dir: str | Path = TEMPLATE_DIR, repo: str | Path | None = None,
                  conflict: str = "inline") -> str:
    """Bring the rendered plugin at ``path`` up to the newest template; return the version it is at now.

    When the plugin was rendered from the local template repository, that repository is first
    synced with ``template_dir`` (the installed anoplug's template). A plugin whose
    ``.copier-answers.yml`` points elsewhere (a published template repository) updates to that
    source's latest tag. The plugin must be a clean git work tree; the author's edits are kept
    (overlapping edits become ``inline`` conflict markers, or ``.rej`` files).
    """
    copier, refused = _copier()
    import yaml  # a dependency of copier

    path = Path(path)
    answers = path / ".copier-answers.yml"
    if not answers.is_file():
        raise TemplateError(f"{path} has no .copier-answers.yml: not a plugin rendered by anoplug new-plugin")
    src = str((yaml.safe_load(answers.read_text()) or {}).get("_src_path", ""))
    repo = Path(repo) if repo is not None else default_repo()
    with _locked(repo):
        vcs_ref = None
        if src and Path(src).expanduser().resolve() == repo.resolve():
            repo, vcs_ref = template_repo(template_dir, repo)
        try:
            copier.run_update(path, defaults=True, overwrite=True, vcs_ref=vcs_ref, quiet=True,
                              conflict=conflict, unsafe=False, skip_answered=True)
        except refused as e:
            raise TemplateError(f"cannot update {path}: {e}") from e
    return str(yaml.safe_load(answers.read_text()).get("_commit", ""))
