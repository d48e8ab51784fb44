
import numpy as np
import pytest
from PIL import Image

from models.storage.imaging import ImageRejected, decode_image, resize_center_crop, to_rgb
from tests.helpers import jpeg, noise_image, png, png_header_only


def test_decodes_jpeg_to_rgb_with_original_size():
    d = decode_image(jpeg(noise_image(0, (64, 48))))
    assert d.image.mode == "RGB" and (d.width, d.height) == (64, 48)


def test_draft_downscales_large_jpeg_but_reports_original_size():
    big = Image.new("RGB", (1600, 1200), (10, 200, 30))
    d = decode_image(jpeg(big), target_size=224)
    assert (d.width, d.height) == (1600, 1200)
    assert min(d.image.size) >= 224 and d.image.size[0] <= 800  # DCT scaling kicked in
    assert np.allclose(np.asarray(d.image).reshape(-1, 3).mean(0), (10, 200, 30), atol=3)


def test_corrupt_and_empty_images_are_rejected_with_reason():
    data = jpeg(noise_image(1))
    with pytest.raises(ImageRejected) as e:
        decode_image(data[: len(data) // 2])
    assert e.value.reason == "corrupt-image"
    with pytest.raises(ImageRejected) as e:
        decode_image(b"not an image at all")
    assert e.value.reason == "corrupt-image"
    with pytest.raises(ImageRejected) as e:
        decode_image(b"")
    assert e.value.reason == "empty-image"


def test_decompression_bomb_rejected_from_header_without_allocating():
    import tracemalloc

    data = png_header_only(50_000, 50_000)
    tracemalloc.start()
    with pytest.raises(ImageRejected) as e:
        decode_image(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert e.value.reason == "decompression-bomb"
    assert "2500000000" in str(e.value) or "50000x50000" in str(e.value)
    assert peak < 10_000_000  # 50000^2 RGB would be 7.5 GB


def test_bomb_below_pil_limit_but_above_ours_is_rejected():
    with pytest.raises(ImageRejected) as e:
        decode_image(png_header_only(9000, 9000), max_pixels=64_000_000)
    assert e.value.reason == "decompression-bomb" and "9000x9000" in str(e.value)


def test_cmyk_palette_alpha_and_16bit_convert_to_rgb():
    cmyk = Image.new("CMYK", (20, 10), (0, 255, 255, 0))  # pure red in CMYK
    d = decode_image(jpeg(cmyk))
    r, g, b = np.asarray(d.image)[5, 10]
    assert r > 200 and g < 60 and b < 60

    pal = Image.new("P", (8, 8))
    pal.putpalette([0, 0, 255] * 256)
    pal.info["transparency"] = 0
    d = decode_image(png(pal, transparency=0))
    assert np.asarray(d.image)[0, 0].tolist() == [255, 255, 255]  # transparent -> white background

    ramp = np.linspace(0, 65535, 64 * 8, dtype=np.uint16).reshape(8, 64)
    d = decode_image(png(Image.fromarray(ramp)))
    arr = np.asarray(d.image)[..., 0]
    assert d.image.mode == "RGB" and arr.min() == 0 and arr.max() == 255  # rescaled, not clipped

    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    d = decode_image(jpeg(img, exif=exif.tobytes()))
    assert d.image.size == (20, 40)
    arr = np.asarray(d.image.convert("L"))
    assert arr[:18].mean() > 200 and arr[22:].mean() < 50  # white half now on top


def test_resize_center_crop_is_square():
    out = resize_center_crop(Image.new("RGB", (300, 100)), 64)
    assert out.size == (64, 64)


def test_encode_jpeg_round_trips_any_mode_and_checks_quality():
    import numpy as np
    import pytest
    from PIL import Image

    from models.storage.imaging import decode_image, encode_jpeg

    rgba = Image.new("RGBA", (16, 8), (255, 0, 0, 0))  # fully transparent red: white once composited
    out = decode_image(encode_jpeg(rgba, quality=95)).image
    assert out.size == (16, 8) and np.asarray(out).min() > 240
    gray16 = Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000, mode="I;16")
    assert decode_image(encode_jpeg(gray16)).image.mode == "RGB"
    small, big = encode_jpeg(rgba.convert("RGB"), quality=10), encode_jpeg(rgba.convert("RGB"), quality=95)
    assert small[:2] == b"\xff\xd8" and big[:2] == b"\xff\xd8"
    with pytest.raises(ValueError, match="1..95"):
        encode_jpeg(rgba, quality=0)
