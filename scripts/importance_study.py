"""How many completed trials parameter importances need before they name the right parameter.

A search whose answer is known: objective = (log10 lr + 2)^2 + N(0, 0.3^2), lr log-uniform in [1e-4, 0.1], and
one or two other log-uniform parameters that change nothing; random sampling, one study per sampler seed. For
each number of completed trials, how often is lr ranked first, and its mean share? This set
cnnlab.experiments.charts.MIN_IMPORTANCE_TRIALS (docs/experiments.md, "parameter importances").

    python scripts/importance_study.py                          # fANOVA (seed 0, as cnnlab-compare uses it)
    python scripts/importance_study.py --evaluator ped --seeds 40   # Optuna's default evaluator
"""

from __future__ import annotations

import argparse
import math
import random
import warnings

import optuna


def evaluator(name: str):
    if name == "fanova":
        return optuna.importance.FanovaImportanceEvaluator(seed=0)
    return None  # Optuna's default (PED-ANOVA in Optuna 5)


def lr_ranked_first(params: int, trials: int, seed: int, name: str) -> tuple[bool, float]:
    rng = random.Random(seed)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))

    def objective(trial):
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        for i in range(params - 1):
            trial.suggest_float(f"x{i}", 1e-6, 1e-2, log=True)  # no effect on the objective
        return (math.log10(lr) + 2) ** 2 + rng.gauss(0, 0.3)

    study.optimize(objective, n_trials=trials)
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator(name))
    return max(importances, key=importances.get) == "lr", importances["lr"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluator", choices=("fanova", "ped"), default="fanova")
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--params", type=int, nargs="+", default=[2, 3], help="parameters in the search, lr included")
    parser.add_argument("--trials", type=int, nargs="+", default=[5, 10, 15, 20, 30])
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    for params in args.params:
        for trials in args.trials:
            results = [lr_ranked_first(params, trials, seed, args.evaluator) for seed in range(args.seeds)]
            right = sum(first for first, _ in results)
            share = sum(s for _, s in results) / args.seeds
            print(f"{params} parameters, {trials:2d} trials: lr first in {right}/{args.seeds}, "
                  f"mean importance of lr {share:.2f}", flush=True)


if __name__ == "__main__":
    main()
