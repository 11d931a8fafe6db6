"""Shape annotations shared by the package.

Every public tensor argument is annotated with jaxtyping shapes. Runtime checking is switched on
in the test suite (``tests/conftest.py`` installs jaxtyping's import hook with beartype), so a
wrong shape fails loudly there and costs nothing in normal use.
"""

from jaxtyping import Bool, Float, Int, Num

__all__ = ["Bool", "Float", "Int", "Num"]
