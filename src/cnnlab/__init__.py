"""cnnlab: config-driven training of convolutional networks.

Kept import-light on purpose: `import cnnlab` must not pull in torchvision or TensorBoard, because a
run's start-up time is part of what the user waits for.
"""

__version__ = "0.1.0"
