import torch

from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.data.folders import FolderFaces
from ahm_core.data.insightface import RecordIOFaces, write_recordio
from ahm_core.data.sources import load_faces, relabel, verification_split
from ahm_core.data.synthetic import SynthFaces


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
