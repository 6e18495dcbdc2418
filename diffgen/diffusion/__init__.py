"""The paper's mathematics: the noise schedule, the empirical optimum (the closed-form minimiser of the denoising
objective) and other denoisers, the training objectives, the samplers, the networks and their training (train, fit,
ensemble). Imports from base and data."""
