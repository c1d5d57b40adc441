"""Crystal structures, surface slabs and defects of the CaCO3 polymorphs (and magnesite).

Everything returns plain :class:`ase.Atoms` (lengths in Å, charges in e); provenance lives
in ``atoms.info``. One module per job:

* :mod:`.crystals`: bulk crystal data (sources), the named surfaces, :func:`bulk`;
* :mod:`.vaterite`: the P3_221 vaterite model derived from P6_522;
* :mod:`.molecules`: carbonate ions and water molecules found by distance;
* :mod:`.faces`: the surface planes (the package's one definition of z_s) and the
  outermost layer of a face;
* :mod:`.slabs`: slabs cut symmetric about a normal-reversing symmetry, :func:`build_surface`;
* :mod:`.defects`: pair and single vacancies, their placement and enumeration, and
  :class:`DefectSite`, the record of a removed ion (``atoms.info["defect_sites"]``);
* :mod:`.io`: reading, checking (geometry and metadata) and writing structure files.
"""

from .crystals import FORMAL_CHARGE, POLYMORPHS, SURFACES, Polymorph, SurfaceDef, bulk
from .defects import (
    PLACEMENTS,
    DefectSite,
    add_pair_vacancies,
    add_vacancy,
    defect_sites,
    enumerate_pair_vacancies,
    parse_defect_sites,
    set_defect_sites,
)
from .faces import surface_planes, top_layer_units
from .io import (
    SUPPORTED_ELEMENTS,
    read_structure,
    validate_info,
    validate_structure,
    write_structure,
)
from .molecules import find_carbonates, find_waters, water_mask
from .slabs import build_surface
from .vaterite import CO_BOND

# every name the single module structures.py had, plus the defect-site record and the info check
__all__ = [
    "CO_BOND",
    "FORMAL_CHARGE",
    "PLACEMENTS",
    "POLYMORPHS",
    "SUPPORTED_ELEMENTS",
    "SURFACES",
    "DefectSite",
    "Polymorph",
    "SurfaceDef",
    "add_pair_vacancies",
    "add_vacancy",
    "build_surface",
    "bulk",
    "defect_sites",
    "enumerate_pair_vacancies",
    "find_carbonates",
    "find_waters",
    "parse_defect_sites",
    "read_structure",
    "set_defect_sites",
    "surface_planes",
    "top_layer_units",
    "validate_info",
    "validate_structure",
    "water_mask",
    "write_structure",
]
