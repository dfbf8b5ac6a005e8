"""Face sources (synthetic faces, image folders, InsightFace RecordIO and .bin), verification
pairs and client partitions; `sources.load_faces(cfg.data)` picks the one the config names.
Each source registers itself in `sources.SOURCES` when its module is imported here."""

from ahm_core.data import folders, insightface, synthetic
from ahm_core.data.sources import SOURCES, Source, load_faces, register

__all__ = ["SOURCES", "Source", "folders", "insightface", "load_faces", "register", "synthetic"]
