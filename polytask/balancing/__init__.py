"""Joint-optimization strategies (balancers), registered under their config names."""

from . import aggregation, weighting  # noqa: F401  (registers the built-in balancers)
from .base import BALANCERS, Balancer, make_balancer, register_balancer, validate_balancer_options

__all__ = [
    "BALANCERS",
    "Balancer",
    "make_balancer",
    "register_balancer",
    "validate_balancer_options",
]
