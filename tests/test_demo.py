from PIL import Image

from simulations.mask_grid import main


def test_demo_writes_both_grids(tmp_path):
    main(["--out", str(tmp_path), "--faces", "6", "--size", "40"])
    grid = Image.open(tmp_path / "masking_grid.png")
    # 14 rows of 6 faces (40 px + 2 px padding), plus the label column.
    assert grid.size == (150 + 2 + 6 * 42, 14 * 44)
    people = Image.open(tmp_path / "synthfaces.png")
    assert people.size == (150 + 2 + 8 * 42, 6 * 44)
