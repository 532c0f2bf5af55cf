"""init_image_file: safe decoding, orientation, flattening, the resize rule, and bad uploads that
cost nothing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from daguerre.errors import InvalidParameter
from daguerre.services.uploads import prepare_image
from tests.support.api import Api
from tests.support.images import decode, photo, png

LIMIT = 40_000_000


def prepared(data: bytes, width: int = 64, height: int = 64) -> np.ndarray:
    return decode(prepare_image(data, width, height, LIMIT))


def test_scale_to_cover_then_centre_crop() -> None:
    # 200x100: left third red, middle third green, right third blue. Covering 64x64 scales it to
    # 128x64 and keeps the middle 64 columns: green, with a little red and blue at the edges.
    pixels = np.zeros((100, 300, 3), dtype=np.uint8)
    pixels[:, :100, 0] = pixels[:, 100:200, 1] = pixels[:, 200:, 2] = 255
    out = prepared(png(Image.fromarray(pixels)))
    assert out.shape == (64, 64, 3)
    centre = out[:, 12:52]
    assert (centre[..., 1] > 200).all() and (centre[..., 0] < 60).all() and (centre[..., 2] < 60).all()


def test_exif_rotation_is_applied() -> None:
    # Stored 80 wide x 40 high, top half white; EXIF orientation 6 says "rotate 90° clockwise to
    # view", so the viewed image is 40 wide x 80 high with the white half on the right.
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    out = prepared(png(Image.fromarray(pixels), format="JPEG", exif=exif.tobytes(), quality=95), 40, 80)
    assert out[:, 30:].mean() > 200 and out[:, :10].mean() < 50


def test_transparency_is_flattened_onto_white() -> None:
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 32, 64))
    out = prepared(png(rgba))
    assert (out[:, :30] == [0, 0, 255]).all()
    assert (out[:, 34:] == [255, 255, 255]).all()


def test_palette_with_transparent_index_is_flattened() -> None:
    palette = Image.new("P", (64, 64), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (0, 0, 32, 64))
    out = prepared(png(palette, transparency=0))
    assert (out[:, :30] == [0, 255, 0]).all() and (out[:, 34:] == [255, 255, 255]).all()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"definitely not an image", "not an image"),
        (png(photo())[:300], "truncated"),
        (png(Image.new("L", (10_000, 5_000))), "more than the limit"),
    ],
    ids=["not-an-image", "truncated", "decompression-bomb"],
)
def test_bad_files_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidParameter, match=message) as info:
        prepare_image(data, 64, 64, 10_000_000)
    assert "init_image_file" in info.value.message


def test_bad_uploads_get_an_envelope_and_cost_nothing(api: Api) -> None:
    before = api.balance()
    for data in (b"GIF89a but not really", png(photo())[:200]):
        body = api.infer_with_image(data)
        assert body["error_code"] == 1 and "init_image_file" in body["message"], body
    api.services.settings.max_upload_bytes = 1000
    body = api.infer_with_image(png(photo(300, 300)))
    assert body["error_code"] == 1 and "larger than the upload limit of 1000 bytes" in body["message"]
    assert api.balance() == before


def test_only_init_image_file_is_taken(api: Api) -> None:
    response = api.client.post(
        "/api/inference",
        data={"access_token": api.token, "model_id": "tiny", "prompt": "x"},
        files={"mask_file": ("m.png", png(photo()), "image/png")},
    )
    body = response.json()
    assert body["error_code"] == 1 and "mask_file" in body["message"]


def test_decompression_bomb_beyond_pillows_own_limit() -> None:
    # A PNG header claiming 100000 x 100000 pixels: refused from the header, nothing decoded.
    header = io.BytesIO()
    Image.new("1", (1, 1)).save(header, format="PNG")
    raw = bytearray(header.getvalue())
    raw[16:24] = (100_000).to_bytes(4, "big") * 2  # IHDR width and height (CRC now wrong)
    with pytest.raises(InvalidParameter, match="init_image_file"):
        prepare_image(bytes(raw), 64, 64, LIMIT)
