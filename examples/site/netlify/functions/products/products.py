"""A directory-form function with a custom path and a method: ``GET /products/:id``.

``from .catalog`` imports a sibling in this directory; ``from ._shared`` finds the helper in the
functions directory.
"""

from __future__ import annotations

from bgfunctions import Config, Context, Request, Response

from ._shared import money
from .catalog import PRODUCTS


def handler(request: Request, context: Context) -> Response:
    product_id = context.params["id"]
    if product_id not in PRODUCTS:
        return Response.json({"error": f"no product {product_id!r}"}, status=404)
    name, cents = PRODUCTS[product_id]
    return Response.json({"id": product_id, "name": name, "price": money(cents)})


config = Config(path="/products/:id", method="GET")
