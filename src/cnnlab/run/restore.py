"""A saved run coming back: its config with this command line on top, and the checks that it may be used so.

`cnnlab-train trainer.resume=...` continues a run from its checkpoint; `cnnlab-eval` rebuilds a run's data
and model from the config saved in its checkpoint, and cnnlab-predict, -export and -explain its model. All of
them restore that config with `saved_run_config`: read as data, brought to the current keys (config.migrate).
Resume and eval then apply only the keys the command line sets, and refuse what would change the checkpoint's
meaning (`check_compatible`, `check_split_unchanged`), instantiate a class the user never chose
(`check_trusted_targets`) or run a hub repository's code the user did not trust on this command
(`check_trusted_repo`).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cnnlab.config.compose import apply_overrides, command_line_keys, flat_differences, targets
from cnnlab.engine.checkpoint import find_checkpoint, saved_config
from cnnlab.errors import ConfigError
from cnnlab.run.validate import validate

log = logging.getLogger("cnnlab")

# Keys that decide which images are training images (a resume and an evaluation must keep them).
SPLIT_KEYS = ("seed", "data.split", "data.num_samples", "data.generator_seed", "data.class_subset",
              "data.max_per_class")
# Keys whose change makes a checkpoint's tensors or training state mean something else.
INCOMPATIBLE_KEYS = SPLIT_KEYS + ("model", "data.name", "data.in_channels", "data.num_classes", "data.input_size",
                                  "data.classes", "data.image_size", "data.noise", "data.root", "data.train_root",
                                  "data.val_root", "data.test_root", "optimizer._target_", "scheduler._target_",
                                  "scheduler.interval")
# ... and, for a checkpoint taken mid-epoch, keys that change what "after batch k of this epoch" means.
MID_EPOCH_KEYS = ("data.batch_size", "data.loader", "data.sampler", "trainer.device", "augment")


def resume_config(cfg: DictConfig, overrides: list[str]):
    """For trainer.resume: the killed run's saved config with this command line's overrides on top.

    A run dir resumes from its newest readable checkpoint (`find_checkpoint(..., "resume")`), and says which.
    """
    path, ckpt = find_checkpoint(str(cfg.trainer.resume), "trainer.resume", purpose="resume")
    partial = ckpt.get("partial")
    log.info("resuming from %s (%s)", path, f"epoch {partial['epoch']}, after step {partial['loader']['batches']}"
             if partial else f"end of epoch {ckpt.get('epoch', 0)}")
    saved, merged, _ = saved_run_config(cfg, ckpt, path, overrides, fixed={"trainer.resume": str(path)})
    check_compatible(saved, merged, path, mid_epoch=bool(partial))
    return merged, ckpt, path


def saved_run_config(cfg: DictConfig | None, ckpt: dict, path, overrides: list[str] | None = None, *,
                     skip: tuple[str, ...] = (), fixed: dict | None = None, untrusted_ok: tuple[str, ...] = (),
                     trusted_repos: tuple[str, ...] = ()):
    """A saved run's config as a command uses it: every command that restores one (resume, cnnlab-eval,
    cnnlab-predict, cnnlab-export, cnnlab-explain) starts here. Returns (saved, merged, keys).

    `saved`: the checkpoint's config read as data (`saved_config`: no `${...}` resolved, trust and downloads
    off) and brought to the current keys (`config.migrate`: a config of an earlier cnnlab gains the keys that
    appeared since, with the values that keep its behaviour).

    A Hydra command (`cfg` given: resume, eval) takes only the keys its command line sets (`overrides`, less the
    command's own `skip` keys) from `cfg`, and the `fixed` values the command itself sets; then the checks that a
    file cannot choose what runs or where cnnlab writes. `keys`: the keys taken from `cfg`. `untrusted_ok`:
    _target_ key prefixes the command never instantiates (eval: the optimizer and scheduler). The caller adds its
    own checks (resume: check_compatible; eval: check_split_unchanged).

    A command without a config (`cfg` None: predict, export, explain) uses the saved config alone: a hub model's
    code runs only for a repository among `trusted_repos` (its --trust-repo values), and the parts it builds
    (data description and model) are validated; merged is saved, keys is empty."""
    source = f"the config saved in {path}"
    saved = saved_config(ckpt, source)
    if cfg is None:
        check_trusted_code(saved, source, repo_listed(saved, trusted_repos), "add --trust-repo {repo} to this command")
        view = built_parts(saved)
        if OmegaConf.is_dict(view.get("data")) and "num_workers" in view.data:
            view.data.num_workers = 0  # no data is loaded here: the machine that trained may have had more cores
        validate(view)
        return saved, saved, []
    keys = command_line_keys(overrides or [], skip=skip + ("experiment",)) + ["paths"]
    merged = apply_overrides(saved, cfg, keys)
    for key, value in (fixed or {}).items():
        OmegaConf.update(merged, key, value, force_add=True)
    check_download(merged, keys, source)
    check_trust_override(saved, merged, cfg, keys, source)
    check_trusted_targets(merged, cfg, source, skip=untrusted_ok)
    check_trusted_repo(merged, cfg, keys, source)
    return saved, merged, keys


# What stands in for the sections a model rebuilt from its checkpoint never builds, for validation only.
_NEVER_BUILT = {"optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
                "scheduler": {"_target_": None, "interval": "epoch", "warmup_epochs": 0},
                "augment.transforms": []}


def built_parts(cfg: DictConfig) -> DictConfig:
    """The saved config as predict, export and explain use it: its data and model. The optimizer, scheduler and
    augmentation classes it names are never built by them, so they are not validated either: validating would
    import the modules they name, and with no config of the user's here no trusted_targets could vouch for them."""
    view = copy.deepcopy(cfg)  # the escaped ${...} literals stay escaped
    for key, stand_in in _NEVER_BUILT.items():
        OmegaConf.update(view, key, stand_in, merge=False, force_add=True)
    return view


def check_compatible(saved: DictConfig, merged: DictConfig, path, mid_epoch: bool = False) -> None:
    """Refuse a resume whose overrides change what the checkpoint's state means; list what differs."""
    # model.trust_repo is whose trust runs the code, not what the tensors mean (and saved_config turned it off)
    differences = [d for d in flat_differences(saved, merged) if d[0] != "model.trust_repo"]
    keys = INCOMPATIBLE_KEYS + (MID_EPOCH_KEYS if mid_epoch else ())
    bad = [d for d in differences if any(d[0] == k or d[0].startswith(k + ".") for k in keys)]
    if str(saved.scheduler.get("_target_", "")).endswith("OneCycleLR"):
        # one-cycle's schedule is laid out over the whole run's steps: it cannot be stretched afterwards
        bad += [d for d in differences if d[0] in ("trainer.max_epochs", "trainer.limit_train_batches",
                                                   "trainer.accumulate_grad_batches", "data.batch_size")]
    if bad:
        lines = [f"{key}: {old!r} in the checkpoint, {new!r} now" for key, old, new in bad]
        if any(key.startswith(("trainer.", "data.batch_size")) for key, _, _ in bad):
            lines.append("scheduler=onecycle plans its steps over the whole run: to train longer, start a new run "
                         "with finetune.checkpoint=<run dir>, or use another scheduler")
        raise ConfigError([f"trainer.resume={path}: this config cannot continue that checkpoint ({line})"
                           for line in lines])
    changed = [d for d in differences if not d[0].startswith(("paths.", "trainer.resume"))]
    if changed:
        log.info("resuming with changed settings: %s",
                 ", ".join(f"{key} {old!r} -> {new!r}" for key, old, new in changed))


def check_download(cfg: DictConfig, keys: list[str], source: str) -> None:
    """A saved config's data.download is off (saved_config); this command line may turn it on, but then the
    folder it downloads into must be this command line's too: a file cannot choose where cnnlab writes."""
    if OmegaConf.select(cfg, "data.download") is not True or "data" in keys or "data.root" in keys:
        return
    raise ConfigError(f"data.download=true would download into data.root={OmegaConf.select(cfg, 'data.root')}, "
                      f"which comes from {source}: a file never chooses where cnnlab downloads or creates folders; "
                      f"name the folder on this command line too (data.root=<folder>), or drop data.download=true "
                      f"to read files that are already there")


def check_split_unchanged(keys: list[str], cfg: DictConfig) -> None:
    """Another value of a key that decides the split would move training images into the split evaluated."""
    bad = [k for k in keys if any(k == s or k.startswith(s + ".") for s in SPLIT_KEYS)]
    if bad:
        raise ConfigError([f"{key}={OmegaConf.select(cfg, key)!r} cannot be changed for evaluation: {', '.join(SPLIT_KEYS)} "
                           f"decide which images the run trained on, and another value would put training images "
                           f"into the {cfg.split} split; drop the override to evaluate on the run's own split"
                           for key in bad])


def check_trusted_targets(cfg: DictConfig, own: DictConfig, source: str, skip: tuple[str, ...] = ()) -> None:
    """Every _target_ that came from a file must be one the user's own config allows (trusted_targets
    prefixes, or the very class the user's own config names at that key): a checkpoint cannot make cnnlab
    instantiate something the user never chose."""
    prefixes = tuple(str(p) for p in (own.get("trusted_targets") or ()))
    own_targets = dict(targets(own))
    untrusted = [(key, value) for key, value in targets(cfg)
                 if not key.startswith(skip) and own_targets.get(key) != value and not _trusted_class(value, prefixes)]
    if untrusted:
        raise ConfigError([f"{key}={value!r} in {source} is not trusted: your config allows _target_ classes under "
                           f"{', '.join(prefixes) or '(none)'}; add its prefix to trusted_targets if you trust "
                           f"this file" for key, value in untrusted])


def check_trusted_code(cfg: DictConfig, source: str, trusted: bool, how: str) -> None:
    """model=hub runs its repository's hubconf.py in this process. A checkpoint's saved `trust_repo=true` was the
    trust of whoever trained it, and saved_config turns it off: a file (from anyone) may only run that code when
    this command trusts it too, and then this check turns it on again. `how` says how to trust it; {repo} in it
    is the repository."""
    model = cfg.get("model")
    if not OmegaConf.is_dict(model) or model.get("name") != "hub":
        return  # not a hub model (a model section that is no mapping is the validation's to refuse)
    if not trusted:
        raise ConfigError(f"model=hub in {source} runs the Python code of {model.get('repo')}'s hubconf.py (entry "
                          f"{model.get('entry')}) in this process; {how.format(repo=model.get('repo'))} if you "
                          f"trust that code (the file's own trust_repo=true is not enough: anyone can write it)")
    OmegaConf.update(cfg, "model.trust_repo", True)


def check_trusted_repo(cfg: DictConfig, own: DictConfig, keys: list[str], source: str) -> None:
    """eval and resume: a saved model=hub config loads only a repository the user trusts: one in their own
    config's trusted_repos, or the whole model section comes from this command line (where model=hub itself
    needs model.trust_repo=true)."""
    if "model" in keys:
        trusted = OmegaConf.select(cfg, "model.trust_repo") is True
    else:
        trusted = repo_listed(cfg, own.get("trusted_repos") or ())
    check_trusted_code(cfg, source, trusted,
                       "add 'trusted_repos=[\"{repo}\"]' to this command (or to trusted_repos in your config)")


def check_trust_override(saved: DictConfig, merged: DictConfig, own: DictConfig, keys: list[str], source: str) -> None:
    """model.trust_repo=true on this command line, without the model section it trusts, cannot trust a saved
    hub run's repository: say so, and how to trust it, before any difference of the model section is listed."""
    model = saved.get("model")
    if not OmegaConf.is_dict(model) or model.get("name") != "hub" or "model.trust_repo" not in keys:
        return
    repo = OmegaConf.select(merged, "model.repo", default=None, throw_on_missing=False)
    if ("model" in keys and repo not in (None, "???")) or repo_listed(saved, own.get("trusted_repos") or ()):
        return  # the user's own model section, trusted by this command line; or the repository is listed
    raise ConfigError(f"model.trust_repo=true on this command line does not trust the repository of {source}: "
                      f"its model section ({model.get('repo')}, entry {model.get('entry')}) held trust_repo=true "
                      f"when it was trained, which is turned off on reading (anyone can write that file), and "
                      f"model.trust_repo names no repository; add 'trusted_repos=[\"{model.get('repo')}\"]' to this "
                      f"command instead, and drop model=hub and model.trust_repo (the run's own model section is "
                      f"kept)")


def repo_listed(cfg: DictConfig, repos) -> bool:
    """`cfg`'s model.repo is one of `repos` (the user's trusted_repos, or --trust-repo values)."""
    repo = str(OmegaConf.select(cfg, "model.repo", default=""))
    return any(_same_repo(repo, str(r)) for r in repos)


def _same_repo(a: str, b: str) -> bool:
    """owner/repo[:ref] compare as written (they always mean torch.hub's cache); directories by where they are
    (~ and relative paths resolved)."""
    from cnnlab.models.hub_source import is_local_repo

    if a == b:
        return True
    if not (is_local_repo(a) and is_local_repo(b)):
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()


def _trusted_class(path, prefixes: tuple[str, ...]) -> bool:
    """True when `path` names a class defined under a trusted prefix, reached only through modules of that very
    name: `cnnlab.run.restore.shutil.copy2` is refused although it starts with `cnnlab.`, because `shutil` is not
    `cnnlab.run.restore.shutil`."""
    path = str(path)
    if not path.startswith(prefixes):
        return False
    parts = path.split(".")
    try:
        obj = importlib.import_module(parts[0])
    except ImportError:
        return False
    for i, part in enumerate(parts[1:], start=2):
        if not inspect.ismodule(obj) or obj.__name__ != ".".join(parts[:i - 1]):
            return False  # only modules, by their own name, may lead to the class
        if hasattr(obj, part):
            obj = getattr(obj, part)
        else:
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                return False
    return inspect.isclass(obj) and str(obj.__module__).startswith(prefixes)


def carry_best_checkpoint(resume_path: Path, ckpt_dir: Path) -> None:
    """A resumed run starts its own run dir; bring the old best.ckpt along so 'test with best' still sees it."""
    source = Path(resume_path).parent / "best.ckpt"
    if source.is_file() and source.resolve() != (ckpt_dir / "best.ckpt").resolve():
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, ckpt_dir / "best.ckpt")
