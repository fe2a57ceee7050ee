"""The components trainkit ships, registered exactly as a user's plugin registers its own.

Importing this package runs the `@MODELS.register(...)` decorators of every built-in
model, data set, optimizer and scheduler; the registries import it on first use.
torch is imported inside the builders, so listing and validating stay fast.
"""

from trainkit.builtin import datasets, image_folder, models, optim, table, zoo

__all__ = ["datasets", "image_folder", "models", "optim", "table", "zoo"]
