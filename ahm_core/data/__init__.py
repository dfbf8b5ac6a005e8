"""Face sources: synthetic faces (no download) and, later, image folders and InsightFace files."""
