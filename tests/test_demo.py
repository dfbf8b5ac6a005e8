import pytest
from PIL import Image

from ahm_core.config import AHMConfig, ConfigError
from ahm_core.data.synthetic import SynthFaces
from ahm_core.masking.methods import (
    METHODS,
    PAIRED,
    ROWS,
    MethodSpec,
    Row,
    add_method,
    grid_rows,
    table_rows,
)
from ahm_core.paper import run_tables
from simulations.mask_grid import main, masking_rows


def test_demo_writes_both_grids(tmp_path):
    main(["--out", str(tmp_path), "--faces", "6", "--size", "40"])
    grid = Image.open(tmp_path / "masking_grid.png")
    # The originals and a row per grid row of the tables, of 6 faces (40 px + 2 px padding), plus
    # the label column.
    assert grid.size == (150 + 2 + 6 * 42, (1 + len(grid_rows())) * 44)
    people = Image.open(tmp_path / "synthfaces.png")
    assert people.size == (150 + 2 + 8 * 42, 6 * 44)


def test_a_method_added_with_its_row_is_in_the_tables_and_the_grid(tmp_path):
    faces = SynthFaces(num_identities=6, images_per_identity=1, size=32).images_uint8(range(6))
    faces = faces.float() / 255
    row = Row("Block DCT", "bdct_alone", grid="Block DCT")
    try:
        add_method("bdct_alone", MethodSpec("bdct", None), [row], [("Block DCT", "PPFR-FD")])
        assert table_rows(2)[-1] == row and grid_rows()[-1] == row
        assert [label for label, _ in masking_rows(faces, faces)][-1] == "Block DCT"
        with pytest.raises(ConfigError, match="block_dct"):  # a row paper_tables can run
            run_tables(AHMConfig(), tmp_path, only={"none_such"})
    finally:
        METHODS.pop("bdct_alone", None)
        ROWS.remove(row)
        PAIRED.remove(("Block DCT", "PPFR-FD"))
