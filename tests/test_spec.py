import numpy as np
import pytest

from bucketwise import Bucket, InputError, InputSpec, ModelSpec, OutputSpec, SpecError, pad, unpad

TEXT = ModelSpec(
    inputs=(
        InputSpec("input_ids", ("batch", "seq"), "int64", pad_value=7, bounds=(0, 99)),
        InputSpec("attention_mask", ("batch", "seq"), "int64", pad_value=0, bounds=(0, 1), example=1),
    ),
    outputs=(OutputSpec("hidden", ("batch", "seq", None)), OutputSpec("pooled", ("batch", None))),
)


def text_inputs(b=2, s=5):
    return {"input_ids": np.arange(b * s).reshape(b, s) % 50, "attention_mask": np.ones((b, s), np.int64)}


def test_pad_end_fills_with_each_inputs_pad_value():
    arrays, shape = TEXT.validate(text_inputs(2, 5))
    assert shape == {"batch": 2, "seq": 5}
    out = pad(TEXT, arrays, Bucket(batch=4, seq=8))
    ids = out["input_ids"]
    assert ids.shape == (4, 8)
    np.testing.assert_array_equal(ids[:2, :5], arrays["input_ids"])
    assert (ids[:2, 5:] == 7).all() and (ids[2:] == 7).all()
    assert (out["attention_mask"][:2, 5:] == 0).all()


def test_pad_start_pads_sequence_on_the_left_but_batch_rows_at_the_end():
    spec = ModelSpec((InputSpec("x", ("batch", "seq"), "int64", pad_value=-1, side="start"),), (OutputSpec("y", ("batch", "seq")),))
    x = np.array([[1, 2, 3]])
    out = pad(spec, {"x": x}, Bucket(batch=2, seq=5))["x"]
    np.testing.assert_array_equal(out, [[-1, -1, 1, 2, 3], [-1, -1, -1, -1, -1]])
    back = unpad(spec, {"y": out}, {"batch": 1, "seq": 3}, Bucket(batch=2, seq=5))["y"]
    np.testing.assert_array_equal(back, x)


def test_pad_at_bucket_shape_is_a_no_copy_pass_through():
    arrays, _ = TEXT.validate(text_inputs(4, 8))
    out = pad(TEXT, arrays, Bucket(batch=4, seq=8))
    assert out["input_ids"] is arrays["input_ids"]


def test_pad_per_channel_values_for_images():
    mean = (0.485, 0.456, 0.406)
    spec = ModelSpec(
        (InputSpec("pixels", ("batch", 3, "height", "width"), pad_value=mean, channel_axis=1),),
        (OutputSpec("logits", ("batch", None)),),
    )
    img = np.ones((1, 3, 2, 3), np.float32)
    out = pad(spec, {"pixels": img}, Bucket(batch=1, height=4, width=4))["pixels"]
    assert out.shape == (1, 3, 4, 4)
    for c, m in enumerate(mean):
        assert np.allclose(out[0, c, 2:, :], m) and np.allclose(out[0, c, :, 3:], m)
        assert np.allclose(out[0, c, :2, :3], 1.0)


def test_unpad_crops_with_stride():
    spec = ModelSpec(
        (InputSpec("img", ("batch", 1, "height", "width")),),
        (OutputSpec("features", ("batch", None, "height", "width"), stride=2),),
    )
    raw = {"features": np.zeros((4, 5, 8, 8))}
    out = unpad(spec, raw, {"batch": 3, "height": 7, "width": 10}, Bucket(batch=4, height=16, width=16))
    assert out["features"].shape == (3, 5, 4, 5)  # ceil(7/2)=4, ceil(10/2)=5


def test_unpad_hook_gets_the_raw_output_and_the_shapes():
    seen = {}

    def hook(value, *, shape, bucket):
        seen.update(shape=shape, bucket=bucket)
        return [v for v in value if v < shape["seq"]]

    spec = ModelSpec((InputSpec("x", ("seq",)),), (OutputSpec("idx", hook=hook),))
    out = unpad(spec, {"idx": [1, 4, 9]}, {"seq": 5}, Bucket(seq=16))
    assert out["idx"] == [1, 4] and seen["bucket"] == Bucket(seq=16)


@pytest.mark.parametrize(
    "inputs, needle",
    [
        ({"input_ids": np.zeros((1, 3), np.int64)}, r"missing \['attention_mask'\]"),
        ({**text_inputs(), "extra": np.zeros(1)}, r"unknown \['extra'\]"),
        ({"input_ids": np.zeros(3, np.int64), "attention_mask": np.ones(3, np.int64)}, "rank 1.*expects rank 2"),
        ({"input_ids": np.zeros((1, 3), np.float32), "attention_mask": np.ones((1, 3), np.int64)}, "must hold integers"),
        ({"input_ids": np.zeros((1, 0), np.int64), "attention_mask": np.ones((1, 0), np.int64)}, "empty along 'seq'"),
        ({"input_ids": np.zeros((1, 4), np.int64), "attention_mask": np.ones((1, 3), np.int64)}, "must agree"),
        ({"input_ids": np.full((1, 3), 100), "attention_mask": np.ones((1, 3), np.int64)}, r"holds 100 at index \(0, 0\).*0\.\.99"),
        ({"input_ids": np.full((1, 3), -1), "attention_mask": np.ones((1, 3), np.int64)}, "holds -1"),
        ({"input_ids": "hello", "attention_mask": np.ones((1, 3), np.int64)}, "pass a NumPy array"),
        ({"input_ids": [[1, 2], [3]], "attention_mask": np.ones((1, 3), np.int64)}, "ragged"),
    ],
)
def test_validate_errors_name_the_input_and_the_fix(inputs, needle):
    with pytest.raises(InputError, match=needle):
        TEXT.validate(inputs)


def test_validate_casts_compatible_dtypes_and_accepts_torch_like_inputs():
    arrays, _ = TEXT.validate({"input_ids": np.ones((1, 3), np.int32), "attention_mask": [[1, 1, 1]]})
    assert arrays["input_ids"].dtype == np.int64 and arrays["attention_mask"].dtype == np.int64


def test_float_inputs_reject_integers_with_a_fix():
    spec = ModelSpec((InputSpec("x", ("batch", 3)),), (OutputSpec("y", ("batch", None)),))
    with pytest.raises(InputError, match="astype"):
        spec.validate({"x": np.zeros((1, 3), np.uint8)})
    with pytest.raises(InputError, match="axis 1 has size 4 but must be 3"):
        spec.validate({"x": np.zeros((1, 4), np.float32)})


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda: InputSpec("x", ()), "at least one axis"),
        (lambda: InputSpec("x", ("seq", "seq")), "appears on two axes"),
        (lambda: InputSpec("x", ("seq", 0)), "positive fixed sizes"),
        (lambda: InputSpec("x", ("seq",), side="left"), "side must be"),
        (lambda: InputSpec("x", ("batch", 3), pad_value=(1.0, 2.0, 3.0)), "needs channel_axis"),
        (lambda: InputSpec("x", ("batch", 3), pad_value=(1.0, 2.0), channel_axis=1), "has 3 channels"),
        (lambda: InputSpec("x", ("seq",), dtype="nonsense"), "not a NumPy dtype"),
        (lambda: OutputSpec("y", ("seq",), stride=0), "stride must be"),
        (lambda: ModelSpec((InputSpec("x", ("seq",)),), (OutputSpec("y", ("height",)),)), "not dims of any input"),
        (lambda: ModelSpec((InputSpec("x", ("seq",)), InputSpec("x", ("seq",))), (OutputSpec("y"),)), "duplicate input"),
    ],
)
def test_spec_errors(make, needle):
    with pytest.raises(SpecError, match=needle):
        make()


def test_stack_rows_pads_each_input_on_its_side():
    from bucketwise.padding import stack_rows

    spec = ModelSpec(
        (InputSpec("ids", ("batch", "seq"), "int64", pad_value=7),
         InputSpec("left", ("batch", "seq"), "int64", pad_value=-1, side="start")),
        (OutputSpec("y", ("batch", "seq")),),
    )
    rows = [{"ids": np.array([1, 2, 3]), "left": np.array([1, 2, 3])}, {"ids": np.array([4]), "left": np.array([4])}]
    out = stack_rows(spec, rows)
    np.testing.assert_array_equal(out["ids"], [[1, 2, 3], [4, 7, 7]])
    np.testing.assert_array_equal(out["left"], [[1, 2, 3], [-1, -1, 4]])
    with pytest.raises(InputError, match="at least one row"):
        stack_rows(spec, [])


def test_crop_matches_unpad_and_leaves_hook_outputs_alone():
    from bucketwise.padding import crop

    spec = ModelSpec(
        (InputSpec("img", ("batch", 1, "height", "width")),),
        (OutputSpec("features", ("batch", None, "height", "width"), stride=2), OutputSpec("boxes", hook=lambda v, **_: v[:1])),
    )
    raw = {"features": np.zeros((4, 5, 8, 8)), "boxes": [1, 2, 3]}
    shape, bucket = {"batch": 3, "height": 7, "width": 10}, Bucket(batch=4, height=16, width=16)
    cropped = crop(spec, raw, shape)
    assert cropped["features"].shape == unpad(spec, raw, shape, bucket)["features"].shape == (3, 5, 4, 5)
    assert cropped["boxes"] == [1, 2, 3] and unpad(spec, raw, shape, bucket)["boxes"] == [1]
