"""The product data: a sibling module of ``products.py``, not a function of its own."""

from __future__ import annotations

# id -> (name, price in cents)
PRODUCTS: dict[str, tuple[str, int]] = {
    "1": ("Kettle", 2999),
    "2": ("Teapot", 1999),
}
