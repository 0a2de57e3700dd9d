"""Write statsmodels' bundled US macro data as one row per quarter (changes, not levels).

Run: python examples/signals/make_macro_csv.py examples/signals/macro.csv
Then: polytask compare examples/signals/horizons.yaml --seeds 5
"""

import sys

from polytask.datasets.macro import quarterly

frame = quarterly().round(6)
frame.index = frame.index.astype(str)  # 1959Q1 ... 2009Q3: sorts in time order as text
frame.rename_axis("quarter").to_csv(sys.argv[1] if len(sys.argv) > 1 else "macro.csv")
