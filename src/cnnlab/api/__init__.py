"""The Python API: training and inspecting runs from a script or a notebook cell, by the commands' code paths.

    import cnnlab
    run = cnnlab.train("model=resnet20", "data=cifar10", max_epochs=2)
    run.history; run.plot(); run.evaluate(tta="flip"); run.predict("cat.png"); run.export("onnx")
    run = cnnlab.load("outputs/2026-12-04/20-15-00_1234"); run.resume()
    print(cnnlab.summary("model=resnet20", "data=cifar10"))
    report = cnnlab.doctor("optimizer.lr=10"); report.worst; report["initial loss"].status
    sweep = cnnlab.sweep("optimizer.lr=0.01,0.1", max_epochs=2); sweep.table; sweep.plot()
    study = cnnlab.tune("search=lenet_lr_wd_bs", "search.n_trials=10"); study.best_params
    cnnlab.lab("optimizers", quick=True)   # a lesson of the lab book, its page in the cell
    cnnlab.compare([run, "outputs/multirun/2026-12-04/20-20-00_1234"]).table

`cnnlab.train`, `cnnlab.load`, `cnnlab.Run`, `cnnlab.summary`, `cnnlab.doctor`, `cnnlab.sweep`,
`cnnlab.tune`, `cnnlab.lab` and `cnnlab.compare` reach this package lazily (cnnlab/__init__.py), so `import cnnlab` stays light. docs/api.md
describes each with an example.
"""

from cnnlab.api.comparison import Comparison, compare
from cnnlab.api.doctor_job import DoctorReport, doctor
from cnnlab.api.handle import Run
from cnnlab.api.inspect_job import ModelSummary, summary
from cnnlab.api.lab_job import LabPage, lab
from cnnlab.api.session import load, train
from cnnlab.api.sweep_job import Sweep, sweep
from cnnlab.api.tune_job import tune
from cnnlab.errors import ConfigError, RunError, TrainingInterrupted, TrainingStopped

__all__ = ["train", "load", "Run", "summary", "ModelSummary", "doctor", "DoctorReport", "sweep", "Sweep", "tune", "lab", "LabPage", "compare",
           "Comparison", "ConfigError", "RunError", "TrainingInterrupted", "TrainingStopped"]
