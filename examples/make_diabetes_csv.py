"""Write scikit-learn's bundled diabetes data as a CSV with several tasks and missing labels.

Run: python examples/make_diabetes_csv.py examples/diabetes.csv
Then: polytask fit examples/diabetes.yaml --out runs/diabetes
"""

import sys

import numpy as np
from sklearn.datasets import load_diabetes

frame = load_diabetes(as_frame=True, scaled=False).frame
rng = np.random.default_rng(0)
frame["sex"] = frame["sex"].map({1.0: "a", 2.0: "b"})  # a categorical feature
frame["progression"] = frame.pop("target")
# A second, binary task on the same patients; a third of its labels are missing.
frame["high_progression"] = (frame["progression"] > frame["progression"].median()).astype(float)
frame.loc[rng.random(len(frame)) < 0.33, "high_progression"] = np.nan
# A training-only signal: a blood serum measurement used as an auxiliary output, not an input.
frame = frame.rename(columns={"s5": "serum_s5"})
frame.to_csv(sys.argv[1] if len(sys.argv) > 1 else "diabetes.csv", index=False)
