"""AHM science core: config, frequency transform, masking, data, training, metrics and attacks.

Framework-free by design: nothing here imports Flower, Ray, Hydra or prometheus_client.
"""
