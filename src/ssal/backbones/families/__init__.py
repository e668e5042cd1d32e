"""The registry's entries, one module per family of models; importing this package registers
them all, in the order below (``list_models`` and ``ssal models`` keep it)."""

# isort: off
from ssal.backbones.families import resnet  # noqa: F401 - resnet50, preact-resnet50
from ssal.backbones.families import wrn  # noqa: F401 - sewrn16-8, wrn28-10, wrn-D-W, sewrn-D-W
from ssal.backbones.families import densenet  # noqa: F401 - densenet190-40, densenet-bc-D-K
from ssal.backbones.families import imagenet  # noqa: F401 - resnet50-imagenet
from ssal.backbones.families import small  # noqa: F401 - small-cnn
from ssal.backbones.families import tiny  # noqa: F401 - tiny-wrn, tiny-densenet, tiny-resnet
from ssal.backbones.families import timm_models  # noqa: F401 - timm/NAME
from ssal.backbones.families import torchvision_models  # noqa: F401 - torchvision/NAME
# isort: on
