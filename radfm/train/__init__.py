"""Training: the LightningModule, ``train(cfg) -> metrics``, and the Ray Train launcher."""
