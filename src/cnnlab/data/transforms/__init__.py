"""cnnlab's own augmentation classes for `augment.transforms` entries (`_target_: cnnlab.data.transforms.<Name>`).

Only transform classes live in this package: `trusted_targets` (configs/train.yaml) allows a saved config to
instantiate classes under `cnnlab.data.transforms.`, and nothing else of cnnlab's.
"""

from cnnlab.data.transforms.lighting import Lighting

__all__ = ["Lighting"]
