"""Kubernetes resource quantities ('500m', '2Gi', '1e3') as exact decimals. Pure.

The same reading as the official client's `kubernetes.utils.quantity.parse_quantity`, without importing
that package into the operator (see `controller.connection`); tests/operator/test_connection.py checks
the two agree.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

# Suffix letter → power of the base (1000 for decimal suffixes, 1024 for binary ones: Ki, Mi, ...).
_EXPONENTS = {"n": -3, "u": -2, "m": -1, "K": 1, "k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}


def parse_quantity(quantity: str | int | float | Decimal) -> Decimal:
    """The value of `quantity` ('128Mi' = 134217728, '100m' = 0.1, '1e3' = 1000).

    Raises ValueError naming the quantity when it is not one."""
    if isinstance(quantity, int | float | Decimal):
        return Decimal(quantity)
    text = str(quantity)
    number, suffix = text, ""
    if len(text) >= 2 and text[-1] == "i" and text[-2] in _EXPONENTS:
        number, suffix = text[:-2], text[-2:]
    elif text and text[-1] in _EXPONENTS:
        number, suffix = text[:-1], text[-1]
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (examples: 500m, 2Gi, 1.5)") from None
    if not suffix:
        return value
    if suffix == "ki" or (len(suffix) == 2 and suffix[0] in "num"):
        raise ValueError(
            f"{text!r} has an unknown suffix {suffix!r} (binary suffixes: Ki, Mi, Gi, Ti, Pi, Ei)"
        )
    base = 1024 if suffix.endswith("i") else 1000
    return value * Decimal(base) ** _EXPONENTS[suffix[0]]
