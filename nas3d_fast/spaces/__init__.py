"""Search spaces behind one interface (SPEC §5): ``get(name, **options)`` gives a space; see ``base``.

Spaces: dints (HyperSegNAS §3.1, MONAI's DiNTS), scnas, c2fnas, tautoml, ronasmis. Each lives in its
own module, imported the first time it is asked for.
"""

from .base import Arch, ArchError, Cost, SearchSpace, Supernet, as_rng, check_vector, get, names, register

__all__ = ["Arch", "ArchError", "Cost", "SearchSpace", "Supernet", "as_rng", "check_vector", "get", "names", "register"]
