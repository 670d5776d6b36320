"""The built-in survey pair: one simulated galaxy population seen by SDSS and by DES (GalSim),
with Galaxy Zoo-like volunteer votes per survey and the true morphology kept in ``true_*``
columns.

    >>> from morphtransfer.simulate import simulate
    >>> result = simulate(3000, seed=0, out="data/mock")      # data/mock/sdss, data/mock/des

Modules: population (intrinsic galaxies), field (the stars and galaxies around each one),
render (GalSim, per survey), volunteers (votes),
pipeline (streaming, resumable writing), summary (label rates, gallery, GZ2 comparison).
"""

from morphtransfer.simulate.pipeline import (
    DEFAULT_SURVEYS,
    SimulationResult,
    simulate,
    simulate_galaxy,
)
from morphtransfer.simulate.population import Galaxy, draw_galaxy, galaxy_id
from morphtransfer.simulate.volunteers import VolunteerModel

__all__ = [
    "DEFAULT_SURVEYS",
    "Galaxy",
    "SimulationResult",
    "VolunteerModel",
    "draw_galaxy",
    "galaxy_id",
    "simulate",
    "simulate_galaxy",
]
