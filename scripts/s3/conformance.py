#!/usr/bin/env python3
"""S3 semantics check for the broker's needs, against any endpoint (this test
server, MinIO, AWS). Reads AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION and S3_BUCKET (as printed by start.sh).
  eval "$(scripts/s3/start.sh)"; ~/.cache/streamhouse-s3/venv/bin/python scripts/s3/conformance.py [--bench]
Writes only under the prefix conformance/ in the bucket. Exits 1 if a check fails.
"""
import hashlib, json, os, sys, threading, time, types
import boto3, botocore.httpchecksum
from botocore.config import Config
from botocore.exceptions import ClientError

EP, B = os.environ.get("AWS_ENDPOINT_URL"), os.environ.get("S3_BUCKET", "test-bucket")
CFG = dict(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, max_pool_connections=16)
s3 = boto3.client("s3", endpoint_url=EP, config=Config(**CFG))
P = "conformance/%d/" % time.time_ns()  # fresh prefix per run
results = {}


def err(e):
    return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]


def check(fn):
    try:
        results[fn.__name__] = fn() or "PASS"
    except AssertionError as e:
        results[fn.__name__] = "FAIL: %s" % e
    except ClientError as e:
        results[fn.__name__] = "FAIL: %s %s" % err(e)
    except Exception as e:  # noqa: BLE001 - report anything
        results[fn.__name__] = "FAIL: %s: %s" % (type(e).__name__, e)


def expect(status, f, **kw):
    try:
        f(**kw)
    except ClientError as e:
        assert err(e)[1] == status, "expected %d, got %s %s" % ((status,) + err(e))
        return
    raise AssertionError("expected HTTP %d, got success" % status)


data = os.urandom(1 << 20)


@check
def put_get_head():
    et = s3.put_object(Bucket=B, Key=P + "obj", Body=data)["ETag"]
    assert et.strip('"') == hashlib.md5(data).hexdigest(), "ETag is not the MD5"
    assert s3.get_object(Bucket=B, Key=P + "obj")["Body"].read() == data
    assert s3.head_object(Bucket=B, Key=P + "obj")["ContentLength"] == len(data)
    expect(404, s3.get_object, Bucket=B, Key=P + "missing")


@check
def ranged_get():
    r = s3.get_object(Bucket=B, Key=P + "obj", Range="bytes=100-199")
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 206 and r["Body"].read() == data[100:200]
    assert r["ContentRange"] == "bytes 100-199/%d" % len(data), r["ContentRange"]
    assert s3.get_object(Bucket=B, Key=P + "obj", Range="bytes=-10")["Body"].read() == data[-10:]
    assert s3.get_object(Bucket=B, Key=P + "obj", Range="bytes=%d-" % (len(data) - 7))["Body"].read() == data[-7:]
    expect(416, s3.get_object, Bucket=B, Key=P + "obj", Range="bytes=%d-" % (len(data) + 1))


@check
def list_v2_prefix_pages_delimiter():
    keys = [P + "l/k%03d" % i for i in range(25)] + [P + "l/sub/a", P + "l/sub/b"]
    for k in keys:
        s3.put_object(Bucket=B, Key=k, Body=b"x")
    got, kw = [], dict(Bucket=B, Prefix=P + "l/k", MaxKeys=10)
    for _ in range(3):
        r = s3.list_objects_v2(**kw)
        got += [o["Key"] for o in r.get("Contents", [])]
        kw["ContinuationToken"] = r.get("NextContinuationToken")
    assert not r["IsTruncated"] and got == keys[:25], "pagination"
    r = s3.list_objects_v2(Bucket=B, Prefix=P + "l/", Delimiter="/")
    assert [c["Prefix"] for c in r["CommonPrefixes"]] == [P + "l/sub/"] and r["KeyCount"] == 26, "delimiter"
    r = s3.list_objects_v2(Bucket=B, Prefix=P + "l/k", StartAfter=P + "l/k020")
    assert len(r["Contents"]) == 4, "start-after"


@check
def delete_and_delete_objects():
    s3.delete_object(Bucket=B, Key=P + "never-existed")  # 204, not an error
    r = s3.delete_objects(Bucket=B, Delete={"Objects": [{"Key": P + "l/k%03d" % i} for i in range(25)]})
    assert len(r.get("Deleted", [])) == 25 and not r.get("Errors"), r.get("Errors")
    assert s3.list_objects_v2(Bucket=B, Prefix=P + "l/k")["KeyCount"] == 0


@check
def multipart_upload():
    parts_data = [os.urandom(5 << 20), os.urandom(5 << 20), os.urandom(12345)]
    u = s3.create_multipart_upload(Bucket=B, Key=P + "mp")["UploadId"]
    parts = [{"PartNumber": i, "ETag": s3.upload_part(Bucket=B, Key=P + "mp", UploadId=u, PartNumber=i, Body=d)["ETag"]}
             for i, d in enumerate(parts_data, 1)]
    assert [p["PartNumber"] for p in s3.list_parts(Bucket=B, Key=P + "mp", UploadId=u)["Parts"]] == [1, 2, 3]
    et = s3.complete_multipart_upload(Bucket=B, Key=P + "mp", UploadId=u, MultipartUpload={"Parts": parts})["ETag"]
    assert et.strip('"').endswith("-3"), "multipart ETag %r" % et
    assert s3.get_object(Bucket=B, Key=P + "mp")["Body"].read() == b"".join(parts_data)
    u = s3.create_multipart_upload(Bucket=B, Key=P + "mp-abort")["UploadId"]
    s3.abort_multipart_upload(Bucket=B, Key=P + "mp-abort", UploadId=u)
    expect(404, s3.head_object, Bucket=B, Key=P + "mp-abort")


@check
def put_if_none_match():
    s3.put_object(Bucket=B, Key=P + "c/inm", Body=b"first", IfNoneMatch="*")
    expect(412, s3.put_object, Bucket=B, Key=P + "c/inm", Body=b"second", IfNoneMatch="*")
    assert s3.get_object(Bucket=B, Key=P + "c/inm")["Body"].read() == b"first", "overwritten"


@check
def put_if_none_match_race():
    for rnd in range(10):  # 8 writers race to create one key; exactly one may win
        k, wins, barrier = P + "c/race%d" % rnd, [], threading.Barrier(8)

        def w(i):
            barrier.wait()
            try:
                s3.put_object(Bucket=B, Key=k, Body=b"%d" % i * 10000, IfNoneMatch="*")
                wins.append(i)
            except ClientError:
                pass
        ts = [threading.Thread(target=w, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert len(wins) == 1, "round %d: %d winners" % (rnd, len(wins))
        assert s3.get_object(Bucket=B, Key=k)["Body"].read() == b"%d" % wins[0] * 10000


@check
def put_if_match_cas():
    e1 = s3.put_object(Bucket=B, Key=P + "c/im", Body=b"v1")["ETag"]
    s3.put_object(Bucket=B, Key=P + "c/im", Body=b"v2", IfMatch=e1)  # ETag as returned, quotes included
    expect(412, s3.put_object, Bucket=B, Key=P + "c/im", Body=b"v3", IfMatch=e1)  # stale
    assert s3.get_object(Bucket=B, Key=P + "c/im")["Body"].read() == b"v2"
    expect(404, s3.put_object, Bucket=B, Key=P + "c/none", Body=b"x", IfMatch=e1)  # AWS: NoSuchKey


@check
def complete_multipart_if_none_match():
    s3.put_object(Bucket=B, Key=P + "c/mpu", Body=b"exists")
    u = s3.create_multipart_upload(Bucket=B, Key=P + "c/mpu")["UploadId"]
    e = s3.upload_part(Bucket=B, Key=P + "c/mpu", UploadId=u, PartNumber=1, Body=b"p")["ETag"]
    expect(412, s3.complete_multipart_upload, Bucket=B, Key=P + "c/mpu", UploadId=u, IfNoneMatch="*",
           MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e}]})


@check
def get_conditional():
    et = s3.head_object(Bucket=B, Key=P + "obj")["ETag"]
    expect(304, s3.get_object, Bucket=B, Key=P + "obj", IfNoneMatch=et)
    expect(412, s3.get_object, Bucket=B, Key=P + "obj", IfMatch='"0123"')


@check
def metadata_and_copy():
    s3.put_object(Bucket=B, Key=P + "m", Body=b"m", Metadata={"base-offset": "42"})
    assert s3.head_object(Bucket=B, Key=P + "m")["Metadata"] == {"base-offset": "42"}
    s3.copy_object(Bucket=B, Key=P + "m2", CopySource={"Bucket": B, "Key": P + "m"})
    assert s3.get_object(Bucket=B, Key=P + "m2")["Body"].read() == b"m"


@check
def streaming_trailer_checksum():
    # AWS SDKs send streaming bodies as aws-chunked + trailing x-amz-checksum-crc32
    # (STREAMING-UNSIGNED-PAYLOAD-TRAILER); botocore does it only over TLS, so pretend.
    real = botocore.httpchecksum.urlparse
    botocore.httpchecksum.urlparse = lambda u: types.SimpleNamespace(scheme="https")
    try:
        c = boto3.client("s3", endpoint_url=EP, config=Config(**CFG))
        c.put_object(Bucket=B, Key=P + "trailer", Body=data)
    finally:
        botocore.httpchecksum.urlparse = real
    assert s3.get_object(Bucket=B, Key=P + "trailer")["Body"].read() == data


def bench(size, n=50):
    body, put, get = os.urandom(size), [], []
    for i in range(n):
        t = time.perf_counter(); s3.put_object(Bucket=B, Key=P + "bench/%d/%d" % (size, i), Body=body); put.append(time.perf_counter() - t)
    for i in range(n):
        t = time.perf_counter(); s3.get_object(Bucket=B, Key=P + "bench/%d/%d" % (size, i))["Body"].read(); get.append(time.perf_counter() - t)
    return {op: {"p50_ms": round(sorted(v)[n // 2] * 1e3, 2), "MiB_s": round(size * n / sum(v) / 2**20, 1)}
            for op, v in (("put", put), ("get", get))}


if "--bench" in sys.argv:
    results["bench_64KiB"], results["bench_4MiB"] = bench(64 << 10), bench(4 << 20)
print(json.dumps(results, indent=1))
try:  # clean up objects and open multipart uploads under this run's prefix
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=B, Prefix=P):
        if page.get("Contents"):
            s3.delete_objects(Bucket=B, Delete={"Objects": [{"Key": o["Key"]} for o in page["Contents"]]})
    for u in s3.list_multipart_uploads(Bucket=B, Prefix=P).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=B, Key=u["Key"], UploadId=u["UploadId"])
except ClientError as e:
    print("cleanup incomplete: %s %s" % err(e), file=sys.stderr)
sys.exit(1 if any(str(v).startswith("FAIL") for v in results.values()) else 0)
