"""The contract: stubs are what the generator makes of the .proto; packed arrays round-trip."""


import numpy as np
import pytest
import torch

from distill.tensors import PackError, pack, unpack, unpack_torch
from distill.v1 import teacher_pb2 as pb
from scripts.gen_protos import ROOT, generate


def test_committed_stubs_match_the_proto(tmp_path):
    written = generate(tmp_path)
    assert written, "the generator wrote nothing"
    for fresh in written:
        committed = ROOT / fresh.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run python scripts/gen_protos.py"
        assert committed.read_bytes() == fresh.read_bytes(), (
            f"{committed} is out of date with protos/: run python scripts/gen_protos.py")


def test_every_proto_element_is_documented():
    proto = (ROOT / "protos/distill/v1/teacher.proto").read_text().splitlines()
    for i, line in enumerate(proto):
        stripped = line.strip()
        is_decl = stripped.startswith(("rpc ", "message ", "enum ")) or (
            stripped.endswith(";") and "=" in stripped and not stripped.startswith(("syntax", "package", "//")))
        if is_decl:
            assert proto[i - 1].strip().startswith("//"), f"line {i + 1} has no comment: {stripped}"


@pytest.mark.parametrize("dtype,np_dtype", [("float32", np.float32), ("float16", np.float16),
                                            ("int32", np.int32)])
def test_pack_round_trip(dtype, np_dtype):
    array = (np.random.default_rng(0).standard_normal((3, 5, 7)) * 100).astype(np_dtype)
    msg = pack(array)
    assert msg.dtype == getattr(pb, f"DTYPE_{dtype.upper()}")
    assert list(msg.shape) == [3, 5, 7]
    assert len(msg.data) == array.nbytes
    np.testing.assert_array_equal(unpack(pb.Tensor.FromString(msg.SerializeToString())), array)
    assert torch.equal(unpack_torch(msg), torch.from_numpy(array))


def test_pack_converts_and_is_little_endian():
    msg = pack(torch.tensor([1.5, -2.0], dtype=torch.float64), "float32")
    assert msg.data == np.array([1.5, -2.0], dtype="<f4").tobytes()


def test_pack_into_a_field_fills_it_in_place_and_replaces_what_was_there():
    response = pb.ScoreResponse()
    pack(np.zeros((2, 3), np.float32), into=response.packed.topk_logprobs)
    array = np.arange(4, dtype=np.int32)
    assert pack(array, into=response.packed.topk_logprobs) is response.packed.topk_logprobs
    assert response.packed.topk_logprobs == pack(array)
    assert response.HasField("packed") and not response.packed.HasField("topk_ids")


@pytest.mark.parametrize("shape,nbytes,dtype,match", [
    ([4], 12, pb.DTYPE_INT32, "do not match shape"),
    ([2, -1], 0, pb.DTYPE_INT32, "negative dimension"),
    ([2], 8, 99, "unknown dtype"),
    ([2 ** 62, 0], 0, pb.DTYPE_INT32, "not a valid array shape"),     # no elements, too large
    ([0] * 65, 0, pb.DTYPE_INT32, "not a valid array shape"),          # numpy takes 64 dimensions
])
def test_malformed_tensor_is_refused(shape, nbytes, dtype, match):
    with pytest.raises(PackError, match=match):
        unpack(pb.Tensor(dtype=dtype, shape=shape, data=b"\0" * nbytes))
