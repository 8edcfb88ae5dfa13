"""Searchers: a dataset, a space and a budget in, an architecture (``arch.json``) out (SPEC §6)::

    from nas3d_fast.search import SearchConfig, search
    summary = search("dints", "gumbel", "mni", "run", SearchConfig(epochs=4, steps_per_epoch=20),
                     space_options={"num_blocks": 4})

Supernet searches share :class:`SupernetSearch` (the loop, the resumable state, the run folder);
:class:`GumbelSearch` is SCNAS's, :class:`DiNTSSearch` MONAI's DiNTS loop, :class:`OneShotSearch` single-path
one-shot (C2FNAS's fine stage), :class:`HyperNetSearch` HyperSegNAS's (a Meta-Assistant Network, annealing, a
memory-constrained ranking), :class:`ENASSearch` RONASMIS's controller. Trial searches (random, evolution,
relation predictor) are in ``nas3d_fast.search.trials``. ``nas3d search`` drives them all from the command line.
"""

from .base import SearchConfig, SupernetSearch
from .dints import DiNTSSearch
from .enas import ENASSearch
from .gumbel import GumbelSearch
from .hypernet import HyperNetSearch
from .oneshot import OneShotSearch
from .rank import RankCorrelation, compare_runs, rank_correlation
from .run import SEARCHERS, search, split_weight_arch

__all__ = ["SEARCHERS", "DiNTSSearch", "ENASSearch", "GumbelSearch", "HyperNetSearch", "OneShotSearch",
           "RankCorrelation", "SearchConfig", "SupernetSearch", "compare_runs", "rank_correlation", "search", "split_weight_arch"]
