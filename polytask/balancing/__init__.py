"""Joint-optimization strategies (balancers), registered under their config names."""

# Registration order is listing order: loss weighting (``fixed`` first), then aggregation.
from . import weighting  # noqa: F401, I001
from . import aggregation  # noqa: F401, I001
from .base import BALANCERS, Balancer, make_balancer, register_balancer, validate_balancer_options

__all__ = [
    "BALANCERS",
    "Balancer",
    "make_balancer",
    "register_balancer",
    "validate_balancer_options",
]
