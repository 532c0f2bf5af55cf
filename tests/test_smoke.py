from tests.support.api import Api


def test_text_to_image_returns_fetchable_pngs(api: Api) -> None:
    body = api.infer(num_images=2, seed=3)
    assert body["error_code"] == 0, body
    assert body["seeds"] == [3, 4]
    assert len(body["images"]) == 2
    for url in body["images"]:
        assert url.startswith("http://testserver/files/images/") and url.endswith(".png")
        assert api.fetch(url).startswith(b"\x89PNG")
