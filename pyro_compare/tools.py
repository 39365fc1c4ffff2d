"""Former name of :mod:`pyro_compare.tl` (the AnnData / scanpy layer), kept as an alias.

``pc.tl`` is the public name; import from :mod:`pyro_compare.tl` in new code.
"""

from .tl import *  # noqa: F403
from .tl import __all__  # noqa: F401
