"""The downloader against a real HTTP server on 127.0.0.1 that serves real fixture images and
misbehaves: slow, HTTP 500, truncated bodies, HTML error pages, 404."""

from __future__ import annotations

import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from PIL import Image

from morphtransfer.data.download import (
    InvalidResponse,
    cutout_size_px,
    cutout_url,
    download,
    validate_fits,
    validate_jpeg,
)
from morphtransfer.data.ingest import ingest
from morphtransfer.data.store import Store
from morphtransfer.errors import InputError
from morphtransfer.surveys import get_survey

GZ2_JPEG = "fixtures/galaxy_zoo_2/images/16126.jpg"
DECALS_PNG = "fixtures/galaxy_zoo_decals/gz_decals_dr5_png_part1/J004/J004544.11-005037.5.png"
HTML = b"<!DOCTYPE html><html><head><title>Error</title></head><body>Server error</body></html>"


class _Server:
    """Behaviour per RA (as sent in the query): a script the handler follows."""

    def __init__(self, shared_data, slow_s=1.0):
        self.jpeg = Image.open(shared_data / GZ2_JPEG).convert("RGB")
        self.png = np.asarray(Image.open(shared_data / DECALS_PNG).convert("RGB"))
        self.script: dict[str, str] = {}
        self.hits: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.slow_s = slow_s
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def body(self, path, q):
        if path.endswith("getjpeg"):
            w = int(q["width"][0])
            buf = io.BytesIO()
            self.jpeg.resize((w, w), Image.BOX).save(buf, "JPEG", quality=90)
            return buf.getvalue(), "image/jpeg"
        n = int(q["size"][0])
        img = np.asarray(Image.fromarray(self.png).resize((n, n), Image.BOX), dtype=np.float32)
        cube = img.transpose(2, 0, 1)[::-1] / 255.0  # R,G,B = z,r,g -> g,r,z planes
        hdr = fits.Header()
        for i, b in enumerate(q["bands"][0]):
            hdr[f"BAND{i}"] = b
        s = float(q["pixscale"][0]) / 3600
        hdr.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=float(q["ra"][0]),
                   CRVAL2=float(q["dec"][0]), CRPIX1=n / 2, CRPIX2=n / 2, CD1_1=-s, CD1_2=0.0,
                   CD2_1=0.0, CD2_2=s)
        buf = io.BytesIO()
        fits.PrimaryHDU(np.ascontiguousarray(cube), header=hdr).writeto(buf)
        return buf.getvalue(), "application/fits"

    def handle(self, h):
        u = urlparse(h.path)
        q = parse_qs(u.query)
        ra = q["ra"][0]
        with self.lock:
            self.hits[ra] = self.hits.get(ra, 0) + 1
            k = self.hits[ra]
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            mode = self.script.get(ra, "ok")
            body, ctype = self.body(u.path, q)
            if mode == "slow_once" and k == 1:
                time.sleep(self.slow_s)
            if mode == "delay":
                time.sleep(0.15)
            if mode == "500_twice" and k <= 2:
                return self._send(h, 500, b"Internal Server Error", "text/plain")
            if mode == "404":
                return self._send(h, 404, b"not found", "text/plain")
            if mode == "html_always":
                return self._send(h, 200, HTML, "text/html")
            if mode == "truncated_once" and k == 1:
                h.send_response(200)
                h.send_header("Content-Type", ctype)
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                h.wfile.write(body[: len(body) // 2])
                h.wfile.flush()
                h.close_connection = True
                return
            self._send(h, 200, body, ctype)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with self.lock:
                self.in_flight -= 1

    @staticmethod
    def _send(h, code, body, ctype):
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(shared_data):
    s = _Server(shared_data)
    yield s
    s.close()


def _catalog(modes: list[str], r90=4.0) -> pd.DataFrame:
    return pd.DataFrame({
        "id": [f"g{i}" for i in range(len(modes))],
        "ra": [10.0 + i for i in range(len(modes))],
        "dec": [1.5] * len(modes),
        "r90_arcsec": [r90] * len(modes),
        "smooth_or_featured_smooth_count": [8] * len(modes),
    })


def test_size_and_urls():
    sdss, des = get_survey("sdss"), get_survey("des")
    assert cutout_size_px(4.0, 0.396) == 102  # ceil(40 / 0.396)
    assert cutout_size_px(None, 0.396, default_size_px=200) == 200
    assert cutout_size_px(100.0, 0.262, max_size_px=512) == 512
    assert cutout_size_px(0.5, 0.262) == 64
    url, suf = cutout_url(sdss, 150.0, 2.0, 102)
    assert suf == ".jpeg" and "skyserver.sdss.org" in url and "width=102" in url
    assert "scale=0.396" in url
    url, suf = cutout_url(des, 150.0, -2.0, 200)
    assert suf == ".fits" and "layer=des-dr1" in url and "bands=gri" in url
    assert "pixscale=0.263" in url and "size=200" in url
    url, _ = cutout_url(get_survey("decals"), 1.0, 2.0, 64, base_url="http://127.0.0.1:9/x")
    assert url.startswith("http://127.0.0.1:9/x?") and "layer=ls-dr10" in url
    # DESaccess needs an account: a clear refusal that says how to get and read such cutouts
    with pytest.raises(InputError, match="DESaccess cutouts need a DES account.*morphtransfer ingest"):
        cutout_url(get_survey("des_desaccess"), 1.0, 2.0, 64)


def test_validation_rejects_html_and_truncation(shared_data):
    good = (shared_data / GZ2_JPEG).read_bytes()
    validate_jpeg(good, 424)
    for bad, why in [(HTML, "HTML"), (good[: len(good) // 2], "truncated|decode"),
                     (b"GIF89a....", "not a JPEG")]:
        with pytest.raises(InvalidResponse, match=why):
            validate_jpeg(bad)
    with pytest.raises(InvalidResponse, match="expected 100"):
        validate_jpeg(good, 100)
    buf = io.BytesIO()
    fits.PrimaryHDU(np.ones((3, 16, 16), np.float32)).writeto(buf)
    fb = buf.getvalue()
    validate_fits(fb, 3, 16)
    with pytest.raises(InvalidResponse, match="HTML"):
        validate_fits(HTML, 3)
    with pytest.raises(InvalidResponse, match="2880"):
        validate_fits(fb[:-100], 3)
    with pytest.raises(InvalidResponse, match="expected 4 bands"):
        validate_fits(fb, 4)


def test_download_sdss_misbehaving_server_and_resume(server, tmp_path):
    modes = ["ok", "slow_once", "500_twice", "truncated_once", "html_always", "404"]
    for i, m in enumerate(modes):
        server.script[f"{10.0 + i:.6f}"] = m
    out = tmp_path / "cutouts"
    res = download(_catalog(modes), out, survey="sdss", concurrency=3, timeout_s=0.5, retries=3,
                   backoff_s=0.01, base_url=server.url + "/getjpeg", progress=False)
    assert res.n_ok == 4 and res.n_failed == 2
    files = sorted(p.name for p in out.glob("*.jpeg"))
    assert files == ["g0.jpeg", "g1.jpeg", "g2.jpeg", "g3.jpeg"]  # no HTML saved as an image
    assert not list(out.glob("*.part"))
    for f in files:
        validate_jpeg((out / f).read_bytes(), 102)
    hits = {m: server.hits[f"{10.0 + i:.6f}"] for i, m in enumerate(modes)}
    assert hits["ok"] == 1 and hits["slow_once"] == 2 and hits["500_twice"] == 3
    assert hits["truncated_once"] == 2 and hits["html_always"] == 4 and hits["404"] == 1
    fails = pd.read_csv(out / "download_failures.csv").set_index("id")["reason"]
    assert "HTML" in fails["g4"] and "HTTP 404" in fails["g5"]
    cat = pd.read_csv(out / "catalog.csv")
    assert cat["id"].tolist() == ["g0", "g1", "g2", "g3"]
    assert (cat["pixel_scale_arcsec"] == 0.396).all() and (cat["cutout_size_px"] == 102).all()
    # resume: what is on disk is not fetched again
    before = dict(server.hits)
    res2 = download(_catalog(modes), out, survey="sdss", concurrency=3, timeout_s=0.5,
                    retries=0, backoff_s=0.01, base_url=server.url + "/getjpeg", progress=False)
    assert res2.n_skipped == 4 and res2.n_ok == 0
    assert all(server.hits[k] == before[k] for k in list(before)[:4])
    # the download catalogue feeds ingest: 10 x R90 = 102 px of 102 at 0.396"/px
    r = ingest(out, out / "catalog.csv", "tidy", tmp_path / "store", survey="sdss", workers=1,
               progress=False).ingest_report
    s = Store(tmp_path / "store")
    assert r.n_ingested == 4 and set(s.catalog["crop_rule"]) == {"10xR90"}


def test_download_legacy_fits_concurrency_limit(server, tmp_path):
    modes = ["delay"] * 6
    for i, m in enumerate(modes):
        server.script[f"{10.0 + i:.6f}"] = m
    out = tmp_path / "fits"
    res = download(_catalog(modes, r90=5.0), out, survey="decals", concurrency=2, timeout_s=5,
                   retries=1, backoff_s=0.01, base_url=server.url + "/fits-cutout", progress=False)
    assert res.n_ok == 6
    assert server.max_in_flight == 2  # the concurrency limit holds and is used
    with fits.open(out / "g0.fits") as h:
        assert h[0].data.shape == (3, 191, 191)  # ceil(10 x 5.0 / 0.262)
        assert h[0].header["BAND2"] == "z"
    r = ingest(out, out / "catalog.csv", "tidy", tmp_path / "store", survey="decals", workers=1,
               progress=False).ingest_report
    assert r.n_ingested == 6 and Store(tmp_path / "store").bands == ["g", "r", "z"]


def test_download_bad_catalogue(tmp_path):
    from morphtransfer.errors import InputError

    with pytest.raises(InputError, match="ra"):
        download(pd.DataFrame({"id": ["a"]}), tmp_path, progress=False)
    cat = _catalog(["ok", "ok"])
    cat.loc[1, "ra"] = np.nan
    cat.loc[0, "id"] = "g1"
    cat.loc[1, "id"] = "g1"
    res = download(cat.iloc[[1]], tmp_path / "o", base_url="http://127.0.0.1:9/x",
                   progress=False)
    assert res.n_failed == 1 and "ra/dec" in res.failures[0]["reason"]
