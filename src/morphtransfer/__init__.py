"""morphtransfer: carry a galaxy-morphology classifier from one survey to another.

Reference study: Dominguez Sanchez et al. 2019, MNRAS 484, 93 ("Transfer learning for galaxy
morphology from one survey to another"). See ARCHITECTURE.md for the one flow and one Store.
"""

__version__ = "0.1.0"
