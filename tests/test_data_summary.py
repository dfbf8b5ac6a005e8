import io
import json
import pickle

import pytest
from PIL import Image

from ahm_core.data.insightface import write_recordio
from ahm_core.data.synthetic import SynthFaces
from simulations.data_summary import main


def summary_of(capsys, *args) -> dict:
    main([str(a) for a in args])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # one JSON line
    return json.loads(out[0])


def test_orl_is_40_identities_and_400_images(shared_data, capsys):
    summary = summary_of(capsys, shared_data / "orl_faces")
    assert summary["format"] == "folder"
    assert (summary["identities"], summary["images"]) == (40, 400)
    assert summary["sizes"] == [[92, 112]]
    assert summary["skipped"] == {"loose_file": 1}  # the README beside the subject folders


def test_recordio_pair(tmp_path, capsys):
    faces = SynthFaces(num_identities=4, images_per_identity=3, size=32)
    write_recordio(tmp_path, faces.images_uint8(range(12)), faces.labels)
    for path in (tmp_path, tmp_path / "train.rec", tmp_path / "train.idx"):
        summary = summary_of(capsys, path)
        assert summary["format"] == "recordio"
        assert (summary["identities"], summary["images"], summary["sizes"]) == (4, 12, [[32, 32]])


def test_verification_bin(tmp_path, capsys):
    images = []
    for shade in range(6):
        buffer = io.BytesIO()
        Image.new("RGB", (40, 48), (shade * 40, 0, 0)).save(buffer, "PNG")
        images.append(buffer.getvalue())
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps((images, [True, False, True]), protocol=4))
    summary = summary_of(capsys, path)
    assert summary == {
        "format": "bin",
        "identities": None,
        "images": 6,
        "pairs": 3,
        "skipped": {},
        "sizes": [[40, 48]],
    }


def test_missing_path_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit) as err:
        main([str(tmp_path / "nowhere")])
    assert "nowhere" in str(err.value) and "\n" not in str(err.value)


def test_max_pixels_option(tmp_path, capsys):
    person = tmp_path / "faces" / "p1"
    person.mkdir(parents=True)
    for name, side in (("small.png", 40), ("large.png", 80)):
        Image.new("RGB", (side, side)).save(person / name)
    summary = summary_of(capsys, tmp_path / "faces", "--max-pixels", 1600)
    assert summary["images"] == 1 and summary["skipped"] == {"too_many_pixels": 1}
    with pytest.raises(SystemExit) as err:
        main([str(tmp_path / "faces"), "--max-pixels", "0"])
    assert err.value.code == 2
