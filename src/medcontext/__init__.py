"""medcontext: MedContext training for 3D medical image segmentation.

``from medcontext import MedContext`` wraps any segmentation network; ``medcontext.models``
builds UNETR, SwinUNETR, nnFormer and 3D U-Nets by name (and registers their token adapters).
"""

__version__ = "0.1.0"

from ._renamed import install as _install_renamed_modules  # noqa: E402

_install_renamed_modules()  # old module paths (0.1) keep importing, with a DeprecationWarning

from . import models  # noqa: E402,F401  (registers the token adapters of the built-in models)
from .method import LossBreakdown, MedContext  # noqa: E402

__all__ = ["MedContext", "LossBreakdown", "models", "__version__"]
