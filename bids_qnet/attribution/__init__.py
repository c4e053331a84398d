"""Attribution of Q-Net's decisions: Integrated Gradients and Grad-CAM, back in template space.

:func:`attribute_cohort` explains every participant with the fold model that did not see it,
writes the maps under ``<output_dir>/attribution/`` and summarises them per atlas region
(``desc-attribution_regions.tsv``). See ``docs/attribution.md``.
"""

from bids_qnet.attribution.cohort import attribute_cohort

__all__ = ["attribute_cohort"]
