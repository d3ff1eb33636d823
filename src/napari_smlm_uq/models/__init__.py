"""Neural networks: DeepSTORM ``phi`` and the conditional U-Net noise predictor ``psi``; the registry."""
