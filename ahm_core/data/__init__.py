"""Face sources (synthetic faces, image folders, InsightFace RecordIO and .bin), verification
pairs and client partitions; `sources.load_faces(cfg.data)` picks the one the config names."""
