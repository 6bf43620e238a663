"""model=hub: a torch.hub entry from a local cache or directory, adapted to the data, its head found by name."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

import torch
import torch.hub
import torch.nn as nn

from cnnlab.errors import ConfigError
from cnnlab.models.backbones import (GITHUB_REPO, HEAD_PATHS, adapt_input, common_problems, config_values,
                                    error_line, fresh_head, load_weights_file, out_features, plain_kwargs,
                                    replace_module, set_head)
from cnnlab.models import loads_pretrained, register

# ---- model=hub -----------------------------------------------------------------------------------------------------
def is_local_repo(repo: str) -> bool:
    """A directory, not owner/repo[:ref]. A string of that form always means torch.hub's cache, even where a
    directory of that name exists in the current one (write ./owner/repo for it): otherwise a folder planted
    where a command runs would stand in for a repository the user trusts by name."""
    if repo.startswith(("/", ".", "~")) or repo.count("/") > 1:
        return True
    return not GITHUB_REPO.match(repo) and Path(repo).is_dir()


def hub_repo_dir(repo: str) -> Path:
    """The directory torch.hub loads `repo` from: a local directory, or owner/repo[:ref] in torch.hub's cache
    ($TORCH_HOME/hub/<owner>_<repo>_<ref>; without a ref, main or master, as torch.hub guesses offline)."""
    if is_local_repo(repo):
        local = Path(repo).expanduser()
        if not local.is_dir():
            raise ConfigError(f"model.repo={repo}: no such directory")
        if not (local / "hubconf.py").is_file():
            raise ConfigError(f"model.repo={repo}: {local} has no hubconf.py (the file torch.hub reads entry points from)")
        return local
    owner, name, ref = GITHUB_REPO.match(repo).groups()
    hub = Path(torch.hub.get_dir())
    dirs = [hub / f"{owner}_{name}_{r.replace('/', '_')}" for r in ([ref] if ref else ["main", "master"])]
    for candidate in dirs:
        if candidate.is_dir():
            return candidate
    where = " or ".join(str(d) for d in dirs)
    archive = f"https://github.com/{owner}/{name}/archive/{'refs/heads/main' if not ref else ref}.zip"
    raise ConfigError(f"model.repo={repo}: not in torch.hub's cache: expected {where}. cnnlab loads hub repositories "
                      f"from the cache only: on a machine with network, torch.hub.load('{repo}', <entry>, "
                      f"trust_repo=True) fills its $TORCH_HOME/hub/{dirs[0].name}, copy that directory to {dirs[0]}; "
                      f"or unpack {archive} there; TORCH_HOME moves the cache")


def _hub_problems(cfg) -> list[str]:
    v = config_values(cfg)
    problems = common_problems(v, "hub")
    repo, entry = v.get("repo"), v.get("entry")
    if not isinstance(repo, str) or not repo:
        problems.append(f"model.repo={repo}: set model.repo to owner/repo[:ref] (a repository in torch.hub's cache) "
                        "or to a directory with a hubconf.py")
    elif not is_local_repo(repo) and not GITHUB_REPO.match(repo):
        problems.append(f"model.repo={repo!r} is neither an existing directory nor owner/repo[:ref]")
    if not isinstance(entry, str) or not entry:
        problems.append(f"model.entry={entry}: set the hubconf.py entry point to call, e.g. model.entry=mobilenet_v2")
    head = v.get("head", "auto")
    if not isinstance(head, str) or not head:
        problems.append(f"model.head={head!r} must be auto or the name of the model's classifier layer, e.g. fc")
    trust = v.get("trust_repo", False)
    if trust is not True:
        problems.append(f"model.trust_repo={str(trust).lower() if isinstance(trust, bool) else trust}: model=hub runs the repository's hubconf.py (Python "
                        f"code from {repo or 'model.repo'}) in this process; set model.trust_repo=true if you trust "
                        "that code")
    return problems


def _hub_entries(repo_dir: Path) -> list[str]:
    """The functions a hubconf.py offers (torch.hub.list reads GitHub repositories only)."""
    spec = importlib.util.spec_from_file_location("hubconf", repo_dir / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(repo_dir))  # as torch.hub does, for the repository's own imports
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(repo_dir))
    return sorted(name for name, f in vars(module).items() if inspect.isfunction(f) and not name.startswith("_"))


def find_head(model: nn.Module, spec: str = "auto") -> str:
    """The classifier layer to replace: `spec` if it names one, else (auto) the last nn.Linear (or, failing that,
    nn.Conv2d) under the first of fc, classifier, head, heads, last_linear, linear, else the model's last nn.Linear."""
    modules = dict(model.named_modules())
    if spec != "auto":
        if out_features(modules.get(spec, nn.Identity())) is None:
            top = ", ".join(name for name, _ in model.named_children())
            raise ConfigError(f"model.head={spec!r} is not an nn.Linear or nn.Conv2d of this model; its top-level "
                              f"modules are: {top}")
        return spec
    for path in HEAD_PATHS:
        module = modules.get(path)
        if module is None:
            continue
        if isinstance(module, nn.Linear):
            return path
        for kind in (nn.Linear, nn.Conv2d):
            inner = [name for name, m in module.named_modules() if isinstance(m, kind)]
            if inner:
                return f"{path}.{inner[-1]}"
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    top = ", ".join(name for name, _ in model.named_children())
    raise ConfigError(f"model.head=auto found no classifier layer (no nn.Linear); name it with model.head=<module>; "
                      f"the model's top-level modules are: {top}")


@register("hub")
def hub_backbone(in_channels: int, num_classes: int, input_size, repo: str | None = None, entry: str | None = None,
                 trust_repo: bool = False, kwargs: dict | None = None, head: str = "auto", weights: str | None = None,
                 adapt_stem: str | bool = "auto") -> nn.Module:
    """torch.hub.load(<repo from the local cache or a directory>, entry, **kwargs), sized for the data."""
    if not trust_repo:  # validation refuses this first; a direct call must not run the code either
        raise ConfigError(_hub_problems({"repo": repo, "entry": entry, "trust_repo": trust_repo})[-1])
    repo_dir = hub_repo_dir(str(repo))
    kwargs = plain_kwargs(kwargs)
    try:
        model = torch.hub.load(str(repo_dir), entry, source="local", **kwargs)
    except TypeError as bad:
        raise ConfigError(f"model.kwargs={kwargs}: {entry} of {repo} does not accept them ({error_line(bad)})") from None
    except ImportError as bad:
        raise ConfigError(f"model.repo={repo}: its hubconf.py needs a module that is not installed "
                          f"({error_line(bad)})") from None
    except OSError as bad:  # an entry that downloads its weights, offline
        raise ConfigError(f"model.entry={entry} of {repo} could not read a file it needs ({error_line(bad)}); files "
                          f"it downloads go to {Path(torch.hub.get_dir()) / 'checkpoints'}: put them there to load "
                          f"offline") from None
    except RuntimeError as bad:
        if "Cannot find callable" in str(bad):
            entries = _hub_entries(repo_dir)
            raise ConfigError(f"model.entry={entry!r} is not an entry point of {repo_dir / 'hubconf.py'}; it has: "
                              f"{', '.join(entries) or 'none'}") from None
        raise ConfigError(f"model=hub: {entry} of {repo} failed: {error_line(bad)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.entry={entry} of {repo} returned a {type(model).__name__}, not a torch.nn.Module")
    head_name = find_head(model, head)
    replace_module(model, head_name, fresh_head(model.get_submodule(head_name), num_classes))
    fresh, conv = adapt_input(model, "stride", in_channels, input_size, adapt_stem)
    if weights and loads_pretrained():
        load_weights_file(model, weights, [head_name, *fresh], conv)
    return set_head(model, [head_name])


hub_backbone.config_problems = _hub_problems
