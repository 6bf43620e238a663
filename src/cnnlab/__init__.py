"""cnnlab: config-driven training of convolutional networks.

Kept import-light on purpose: `import cnnlab` must not pull in torchvision or TensorBoard, because a
run's start-up time is part of what the user waits for. The Python API (cnnlab.api: `cnnlab.train`,
`cnnlab.load`, `cnnlab.Run`, `cnnlab.summary`, `cnnlab.doctor`, `cnnlab.sweep`, `cnnlab.tune`, `cnnlab.lab`, `cnnlab.compare`) is imported
on first use of one of its names (PEP 562).
"""

__version__ = "0.1.0"

_API = ("train", "load", "Run", "summary", "doctor", "sweep", "tune", "lab", "compare", "TrainingInterrupted")


def __getattr__(name: str):
    if name in _API:
        import cnnlab.api as api  # the one import of the package top: the API, loaded on first use

        return getattr(api, name)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
