from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize

from ahm_core.checks import validate
from ahm_core.config import AHMConfig, ConfigError, apply_overrides
from ahm_core.data.folders import FolderFaces
from ahm_core.data.insightface import RecordIOFaces, write_recordio
from ahm_core.data.sources import SOURCES, load_faces, relabel, verification_split
from ahm_core.data.synthetic import SynthFaces
from ahm_core.errors import input_errors
from simulations.schema import register, split_run_config


def test_each_source_loads(shared_data, tmp_path):
    synthetic = load_faces(AHMConfig().data)
    assert isinstance(synthetic, SynthFaces) and len(synthetic) == 2000
    folder_cfg = apply_overrides(
        AHMConfig(),
        {
            "data.source": "folder",
            "data.image_size": 64,
            "data.root": str(shared_data / "orl_faces"),
        },
    )
    folder = load_faces(folder_cfg.data)
    assert isinstance(folder, FolderFaces) and folder.size == 64 and len(folder) == 400
    small = SynthFaces(num_identities=3, images_per_identity=2, size=32)
    write_recordio(tmp_path, small.images_uint8(range(6)), small.labels)
    rec_cfg = apply_overrides(
        AHMConfig(),
        {"data.source": "insightface", "data.root": str(tmp_path), "data.image_size": 32},
    )
    rec = load_faces(rec_cfg.data)
    assert isinstance(rec, RecordIOFaces) and torch.equal(rec.labels, small.labels)


def test_verification_split_holds_out_identities():
    cfg = apply_overrides(
        AHMConfig(), {"data.num_identities": 50, "data.test_fraction": 0.4, "data.num_pairs": 600}
    )
    labels = torch.arange(50).repeat_interleave(20)
    split = verification_split(labels, cfg.data)
    train_people = set(labels[split.train].tolist())
    pair_people = set(labels[torch.cat([split.pairs.left, split.pairs.right])].tolist())
    assert len(train_people) == 30 and len(pair_people) == 20
    assert not train_people & pair_people
    assert len(split.pairs) == 600
    new, n = relabel(labels[split.train])
    assert n == 30 and torch.equal(new.unique(), torch.arange(30))


def test_the_guide_example_data_source_is_one_file_and_one_entry(tmp_path):
    """docs/extending.md's example source, as written there: registered, it is valid in the
    config check and the hydra group, it loads, and its errors are bad input (one line)."""
    guide = (Path(__file__).parents[1] / "docs" / "extending.md").read_text()
    section = guide.split("## Adding a data source", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    faces = SynthFaces(num_identities=6, images_per_identity=4, size=40)
    archive = tmp_path / "faces.npz"
    images = faces.images_uint8(range(len(faces))).permute(0, 2, 3, 1).numpy()
    np.savez(archive, images=images, labels=faces.labels.numpy() + 10)
    namespace: dict = {}
    try:
        exec(compile(code, "docs/extending.md", "exec"), namespace)
        cfg = validate(
            apply_overrides(
                AHMConfig(),
                {"data.source": "npz", "data.root": str(archive), "data.image_size": 32},
            )
        )
        loaded = load_faces(cfg.data)
        assert len(loaded) == 24 and loaded.num_identities == 6
        assert loaded.images_uint8([0, 1]).shape == (2, 3, 32, 32)
        with pytest.raises(ConfigError, match=r"^data\.root: expected a \.npz archive"):
            validate(apply_overrides(cfg, {"data.root": str(tmp_path)}))
        np.savez(tmp_path / "bad.npz", faces=images)
        bad = apply_overrides(cfg, {"data.root": str(tmp_path / "bad.npz")})
        with pytest.raises(namespace["NpzFormatError"], match="expected the arrays"):
            load_faces(bad.data)
        assert namespace["NpzFormatError"] in input_errors()
        register()  # the hydra group as an entry point builds it, after the sources' imports
        with initialize(version_base=None, config_path="../simulations/conf"):
            hcfg = compose("centralized", ["data=npz", f"data.root={archive}"])
        assert split_run_config(hcfg)[0].data.source == "npz"
    finally:
        SOURCES.pop("npz", None)
