"""das browse over a run on S3 (moto's server): a label output whose input is an s3:// prefix, and a rescore
run folder of it, browsed through the app in this process (no browser: the pages are the same as on a local
disk). A label's best windows list, a timeline opens, and each window's audio is cut from the bucket."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from conftest import label_run, write_clips

from jobs.browse import prepare

pytestmark = pytest.mark.integration          # a label run on moto's S3
CLIPS = {"a.wav": (12.0, 16000, 440.0), "sub/b.wav": (4.0, 22050, 880.0)}


async def _get(browser, paths: list[str]) -> list[tuple[int, bytes]]:
    """Status and body of a GET of each of ``paths`` from ``browser``'s app, served on 127.0.0.1."""
    from aiohttp.test_utils import TestClient, TestServer

    async with TestClient(TestServer(browser.app(), host="127.0.0.1")) as client:
        answers = []
        for path in paths:
            response = await client.get(path)
            answers.append((response.status, await response.read()))
        return answers


def _browse(out: str, paths: list[str]) -> list[tuple[int, bytes]]:
    browser = prepare(out)
    try:
        return asyncio.run(_get(browser, paths))
    finally:
        browser.pool.shutdown(wait=False, cancel_futures=True)


@pytest.fixture(scope="module")
def bucket_of_run(s3_endpoint) -> str:
    """A bucket of its own for the module's run."""
    import boto3

    name = f"das-browse-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def s3_run(bucket_of_run, small_cache, tiny_ckpt, tmp_path_factory) -> str:
    import boto3

    bucket = bucket_of_run
    local = tmp_path_factory.mktemp("s3-browse-audio")
    write_clips(local, CLIPS)
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"])
    for name in CLIPS:
        client.upload_file(str(local / name), bucket, f"archive/{name}")
    out = f"s3://{bucket}/labels/run1"
    label_run(f"s3://{bucket}/archive/", small_cache, tiny_ckpt, out, local=True, files_per_unit=1, report=False)
    return out


def test_a_label_output_on_s3_lists_its_best_windows_and_plays_them_from_the_bucket(s3_run):
    import json

    (status, body), = _browse(s3_run, ["/api/search?top=10"])
    assert status == 200, body
    hits = json.loads(body)["results"]
    assert {h["file_id"] for h in hits} == set(CLIPS) and all(h["path"].startswith("s3://") for h in hits)
    first = hits[0]
    answers = _browse(s3_run, [f"/audio?file={first['file_id']}&segment={first['segment']}",
                               f"/api/timeline?file={first['file_id']}", "/audio?file=a.wav&segment=9"])
    assert answers[0][0] == 200 and answers[0][1][:4] == b"OggS"
    assert answers[1][0] == 200 and json.loads(answers[1][1])["windows"]
    assert answers[2][0] == 404


def test_a_rescore_run_folder_on_s3_serves_its_label_runs_input(s3_run, small_cache, bucket_of_run):
    import json

    from jobs.rescore import RescoreConfig
    from jobs.rescore import run as rescore

    rescore(RescoreConfig(embeddings=s3_run, cache=small_cache, out=f"s3://{bucket_of_run}/rescored", run_id="r1",
                          local=True, report=False))
    run_folder = f"s3://{bucket_of_run}/rescored/run_id=r1"
    (status, body), = _browse(run_folder, ["/api/search?top=3"])
    assert status == 200, body
    hit = json.loads(body)["results"][0]
    (status, audio), = _browse(run_folder, [f"/audio?file={hit['file_id']}&segment={hit['segment']}"])
    assert status == 200 and audio[:4] == b"OggS"
