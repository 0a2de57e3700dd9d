"""``python -m polytask`` (and ``torchrun -m polytask ...`` for data-parallel training)."""

from .cli import main

main()
